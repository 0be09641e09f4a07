"""llama.cpp itself (the prebuilt `xllamacpp` wheel, a dev dependency) loads finetune's GGUF exports and computes what
finetune computes: next-token log-probabilities on `tiny`, greedy answers on the real model (F32, F16, Q8_0), a LoRA
adapter GGUF on top of the base GGUF, and the Ollama Modelfile's template against the training prompt, token for token."""
import json

import numpy as np
import pytest

import finetune  # noqa: F401  (fast BLAS before mlx)
import mlx.core as mx
import xllamacpp as xlc
from mlx.utils import tree_flatten, tree_unflatten

from finetune.config import TrainConfig
from finetune.errors import ExportError
from finetune.export import fuse, read_modelfile, render_go_template, to_gguf, to_gguf_lora, to_ollama
from finetune.generate import prompt_tokens, render_prompt
from finetune.models import attach_adapters, load_model, resolve_model, save_adapters
from conftest import REAL_ROWS

CHATS = [[{"role": "user", "content": "swap: apple river"}],
         [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 plus 3?"}],
         [{"role": "user", "content": "Hello! How can I help you today? 42"}]]


class LlamaCpp:
    "A GGUF loaded by llama.cpp (optionally with a LoRA adapter GGUF), asked for completions of raw prompt text."
    def __init__(self, path, lora=None):
        p = xlc.CommonParams()
        p.model.path, p.n_ctx, p.n_parallel, p.verbosity, p.warmup = str(path), 1024, 1, -1, False
        p.cpuparams.n_threads = p.cpuparams_batch.n_threads = 2
        p.cache_type_k = p.cache_type_v = xlc.ggml_type.GGML_TYPE_F32  # llama.cpp rounds the KV cache and attention to F16 by default
        p.flash_attn_type = xlc.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
        if lora is not None: p.lora_adapters = [xlc.CommonAdapterLoraInfo(str(lora), 1.0)]
        self.server = xlc.Server(p)

    def complete(self, prompt:str, n:int, top:int=1) -> tuple[list, dict]:
        "Greedy token ids (up to the end of turn) and the response, with the `top` most likely tokens at each step."
        r = self.server.handle_completions({"prompt": prompt, "max_tokens": n, "temperature": 0.0, "logprobs": top, "cache_prompt": False})
        assert "choices" in r, r
        return [s["id"] for s in r["choices"][0]["logprobs"]["content"]], r


def ours(model, tok, msgs, n:int) -> list:
    "finetune's greedy token ids for `msgs`, up to the end of turn."
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler
    out = []
    for r in stream_generate(model, tok, prompt_tokens(tok, msgs), max_tokens=n, sampler=make_sampler(0.0)):
        if r.token in tok.eos_token_ids: break
        out.append(r.token)
    return out


def upto_eos(ids, tok) -> list:
    return ids[:next((i for i, t in enumerate(ids) if t in tok.eos_token_ids), len(ids))]


def next_logprobs(model, tok, msgs) -> np.ndarray:
    "finetune's log-probabilities of the token after the prompt."
    logits = model(mx.array([prompt_tokens(tok, msgs)]))[0, -1].astype(mx.float32)
    return np.array(logits - mx.logsumexp(logits))


def top_of(r) -> dict:
    return {t["id"]: t["logprob"] for t in r["choices"][0]["logprobs"]["content"][0]["top_logprobs"]}


# --- tiny: exact numbers, fast ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory):
    "A LoRA run on `tiny` with random non-zero adapters."
    c = TrainConfig(model=str(tiny_model), lora_rank=4, lora_alpha=8.0, lora_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"])
    m, _ = load_model(c)
    mx.random.seed(0)
    acfg = attach_adapters(m, c)
    for i, (k, v) in enumerate(tree_flatten(m.trainable_parameters())):
        if k.endswith("lora_b"): m.update(tree_unflatten([(k, 0.2 * mx.random.normal(v.shape, key=mx.random.key(i)))]))
    return save_adapters(m, acfg, tmp_path_factory.mktemp("tiny-run") / "run")


def close_to(got:dict, want:np.ndarray, eps:float):
    "llama.cpp's top log-probabilities `got` are finetune's `want` within `eps`, and its top token is finetune's unless nearly tied."
    order = np.argsort(-want)
    if want[order[0]] - want[order[1]] > 2 * eps: assert max(got, key=got.get) == order[0], (got, order[:5])
    assert max(abs(lp - want[i]) for i, lp in got.items()) < eps, (got, {i: want[i] for i in got})


# measured: F32 5e-7, F16 1e-3, Q8_0 4e-2 (random weights: a wrong tensor, order or norm moves them by whole units)
@pytest.mark.parametrize("outtype,eps", [("f32", 1e-4), ("f16", 1e-2), ("q8_0", 0.15)])
def test_tiny_export_next_token_like_finetune(tiny_model, tiny_run, tmp_path, outtype, eps):
    "The exported file's next-token log-probabilities in llama.cpp are finetune's (adapted model), and it tokenizes the prompt alike."
    model, tok = load_model(str(tiny_model), adapter_path=tiny_run)
    base, _ = load_model(str(tiny_model))
    llm = LlamaCpp(to_gguf(tiny_run, tmp_path / "m.gguf", outtype=outtype))
    for msgs in CHATS:
        want = next_logprobs(model, tok, msgs)
        _, r = llm.complete(render_prompt(tok, msgs), 1, top=5)
        assert r["usage"]["prompt_tokens"] == len(prompt_tokens(tok, msgs))
        got = top_of(r)
        assert len(got) == 5
        close_to(got, want, eps)
        assert np.abs(next_logprobs(base, tok, msgs) - want)[list(got)].max() > 0.5  # the adapter matters here


def test_tiny_lora_adapter_gguf_like_fused(tiny_model, tiny_run, tmp_path):
    "Base GGUF + the run's adapter GGUF in llama.cpp computes what finetune's adapted model computes."
    model, tok = load_model(str(tiny_model), adapter_path=tiny_run)
    llm = LlamaCpp(to_gguf(tiny_model, tmp_path / "base.gguf", outtype="f32"), lora=to_gguf_lora(tiny_run, tmp_path / "lora.gguf"))
    for msgs in CHATS:
        want = next_logprobs(model, tok, msgs)
        close_to(top_of(llm.complete(render_prompt(tok, msgs), 1, top=5)[1]), want, 1e-4)


def test_dora_has_no_llama_cpp_adapter(tiny_model, tmp_path):
    c = TrainConfig(model=str(tiny_model), fine_tune_type="dora")
    m, _ = load_model(c)
    run = save_adapters(m, attach_adapters(m, c), tmp_path / "run")
    with pytest.raises(ExportError, match="LoRA adapters only"):
        to_gguf_lora(run)


# --- the real model (SmolLM2-135M-Instruct with the session's LoRA run, see conftest.py) -------------------------------

N_TOKENS = 32


def held_out(n=3):
    rows = [json.loads(line) for line in (REAL_ROWS / "test.jsonl").read_text().splitlines()[-n:]]
    return [r["messages"][:-1] for r in rows]


@pytest.fixture(scope="module")
def real(run, tmp_path_factory):
    "The tuned model, finetune's greedy answers to held-out prompts, and the run fused once."
    model, tok = load_model("smollm2-135m", adapter_path=run.run_dir)
    d = tmp_path_factory.mktemp("real-export")
    return dict(tok=tok, answers=[ours(model, tok, m, N_TOKENS) for m in held_out()], fused=fuse(run.run_dir, d / "fused"), dir=d)


def test_real_gguf_exports_answer_like_finetune(real):
    "F32 and F16 exports give finetune's greedy answers to every held-out prompt in llama.cpp; Q8_0 to most."
    tok = real["tok"]
    for outtype in ("f32", "f16", "q8_0"):
        llm = LlamaCpp(to_gguf(real["fused"], real["dir"] / f"{outtype}.gguf", outtype=outtype))
        got = [upto_eos(llm.complete(render_prompt(tok, m), N_TOKENS)[0], tok) for m in held_out()]
        same = sum(g == w for g, w in zip(got, real["answers"]))
        assert same == len(got) if outtype != "q8_0" else same >= len(got) - 1, (outtype, [tok.decode(g) for g in got],
                                                                                  [tok.decode(w) for w in real["answers"]])
        del llm
    assert any(real["answers"]), real["answers"]


def test_real_lora_adapter_gguf(run, real):
    "The base model's GGUF with the run's adapter GGUF answers in llama.cpp as the fused export and finetune do."
    base = to_gguf(resolve_model("smollm2-135m"), real["dir"] / "base-f32.gguf", outtype="f32")
    llm = LlamaCpp(base, lora=to_gguf_lora(run.run_dir, real["dir"] / "lora.gguf"))
    tok = real["tok"]
    got = [upto_eos(llm.complete(render_prompt(tok, m), N_TOKENS)[0], tok) for m in held_out()]
    assert got == real["answers"], ([tok.decode(g) for g in got], [tok.decode(w) for w in real["answers"]])


def test_real_ollama_modelfile_reproduces_training_prompt(run, real, tmp_path):
    "The Modelfile's TEMPLATE (with its SYSTEM, as Ollama applies it) renders a chat to the training prompt, token for token."
    from finetune.data import encode_text
    out = to_ollama(run.run_dir, tmp_path / "ollama", outtype="q8_0")
    mf = read_modelfile(out / "Modelfile")
    tok = real["tok"]
    assert mf["FROM"] == "./model.gguf" and (out / "model.gguf").exists()
    assert "<|im_end|>" in mf["PARAMETER"]["stop"]
    assert mf["SYSTEM"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # the template's default
    chats = held_out() + [[{"role": "system", "content": "Reply in JSON."}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "{\"greeting\": \"hello\"}"}, {"role": "user", "content": "Again,\nplease."}]]
    for msgs in chats:
        want = prompt_tokens(tok, msgs)
        got = encode_text(tok, render_go_template(mf["TEMPLATE"], msgs, mf.get("SYSTEM")))[0]  # SmolLM2's GGUF adds no BOS
        assert got == want, (tok.decode(got), tok.decode(want))
