"Models: resolving (Hub cache offline), loading, quantizing, LoRA/DoRA/full adapters and their mlx-lm compatibility."
import json, os, subprocess, sys, textwrap
from pathlib import Path

import pytest

import finetune  # noqa: F401  (loads the fast BLAS before mlx)
from finetune.errors import ModelError
from finetune.models import (FastQuantizedEmbedding, FastQuantizedLinear, adapter_keys, attach_adapters, count_parameters,
                             describe_dtype, load_adapters, load_model, lora_parameter_formula, read_adapter_config, resolve_model,
                             save_adapters, weights_dtype)
import mlx.core as mx
import mlx.nn as nn
import mlx_lm
from mlx.utils import tree_flatten

PROMPT = "hello world, what is the capital"


def _randomize(model, seed=0):
    "Give every adapter non-zero weights, as training would."
    mx.random.seed(seed)
    for _, m in model.named_modules():
        if "lora_b" in m: m.lora_b = 0.05 * mx.random.normal(m.lora_b.shape)
        if type(m).__name__.startswith("DoRA"): m.m = m.m * (1 + 0.1 * mx.random.normal(m.m.shape))
    mx.eval(model.parameters())


def _tokens(tok): return mx.array([tok.encode(PROMPT)])


def _max_diff(a, b): return mx.abs(a - b).max().item()


# --- resolving -------------------------------------------------------------------------------------------------

def test_hub_id_from_prefilled_cache_offline(tiny_model, tmp_path):
    "A Hub id loads through huggingface_hub from a cache laid out as the Hub does it, with HF_HUB_OFFLINE=1."
    rev = "1234567890abcdef1234567890abcdef12345678"
    repo = tmp_path/"hf"/"models--test-org--tiny-llama"
    snap = repo/"snapshots"/rev
    snap.mkdir(parents=True)
    for f in tiny_model.iterdir(): (snap/f.name).write_bytes(f.read_bytes())
    (repo/"refs").mkdir()
    (repo/"refs"/"main").write_text(rev)
    script = textwrap.dedent("""
        import json
        from finetune.models import resolve_model, load_model
        from finetune.errors import ModelError
        p = resolve_model("test-org/tiny-llama")
        model, tok = load_model("test-org/tiny-llama")
        try: resolve_model("test-org/absent")
        except ModelError as e: err = str(e)
        print(json.dumps(dict(path=str(p), layers=len(model.layers), eos=tok.eos_token, err=err)))
    """)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path/"hf"), "HF_HUB_OFFLINE": "1", "FINETUNE_HOME": str(tmp_path/"home")}
    env.pop("HF_HOME", None)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(out["path"]) == snap
    assert out["layers"] == 2 and out["eos"] == "<|im_end|>"
    assert "Tried: a local directory" in out["err"] and "not in the Hugging Face cache" in out["err"] and "unset HF_HUB_OFFLINE" in out["err"]


def test_tiny_name_is_the_demo_model(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path/"home"))
    from finetune.tiny import demo_model_dir
    assert resolve_model("tiny") == demo_model_dir() and demo_model_dir().parent == tmp_path/"home"/"models"
    model, _ = load_model("tiny")
    assert len(model.layers) == 4


def test_missing_and_unsupported_models(tiny_model, tmp_path):
    with pytest.raises(ModelError) as e: load_model(str(tmp_path/"nowhere"))
    assert "does not exist" in str(e.value) and "->" in str(e.value)  # says what was tried and what to do
    bad = tmp_path/"bad"
    bad.mkdir()
    for f in tiny_model.iterdir(): (bad/f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad/"config.json").read_text())
    (bad/"config.json").write_text(json.dumps({**cfg, "model_type": "warp_drive"}))
    with pytest.raises(ModelError, match="architecture 'warp_drive'"): load_model(str(bad))


# --- counting --------------------------------------------------------------------------------------------------

def test_formula_by_hand(tiny_model):
    "hidden 64, 4 heads of 16, 2 KV heads, MLP 128: the formula's shapes, and the count of what attach_adapters adds."
    model, _ = load_model(str(tiny_model))
    per_block = (64+64) + (64+32) + (64+32) + (64+64) + (64+128) + (64+128) + (128+64)
    assert lora_parameter_formula(model, rank=8) == 2 * 8 * per_block
    attach_adapters(model, dict(fine_tune_type="lora", lora_rank=8, lora_alpha=16))
    assert count_parameters(model)["trainable"] == 2 * 8 * per_block


def test_lora_subset_layers_and_modules(tiny_model, tmp_path):
    model, tok = load_model(str(tiny_model))
    conf = dict(fine_tune_type="lora", lora_rank=4, lora_alpha=8, lora_layers=1, lora_modules=["q_proj", "v_proj"])
    acfg = attach_adapters(model, conf)
    assert acfg["lora_parameters"] == dict(rank=4, scale=2.0, dropout=0.0, keys=["self_attn.q_proj", "self_attn.v_proj"])
    assert count_parameters(model)["trainable"] == 4 * (64+64) + 4 * (64+32)
    assert type(model.layers[0].self_attn.q_proj).__name__ == "Linear"  # only the last block
    assert type(model.layers[1].self_attn.q_proj).__name__ == "LoRALinear"
    assert type(model.layers[1].self_attn.k_proj).__name__ == "Linear"
    _randomize(model)
    save_adapters(model, acfg, tmp_path/"run")
    ref, _ = mlx_lm.load(str(tiny_model), adapter_path=str(tmp_path/"run"))
    x = _tokens(tok)
    assert _max_diff(ref(x), model(x)) < 1e-5


def test_bad_module_names(tiny_model):
    model, _ = load_model(str(tiny_model))
    with pytest.raises(ModelError, match="Available: mlp.down_proj"): adapter_keys(model, ["attention.wq"])


# --- round trips through mlx-lm --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_adapters_load_in_mlx_lm(tiny_model, tmp_path, kind):
    "Modified adapters saved by us give the same logits and generations in plain mlx-lm, and through our loader."
    model, tok = load_model(str(tiny_model))
    formula = lora_parameter_formula(model, rank=8, fine_tune_type=kind)
    acfg = attach_adapters(model, dict(fine_tune_type=kind, lora_rank=8, lora_alpha=16.0))
    assert count_parameters(model)["trainable"] == formula
    _randomize(model)
    model.eval()
    run = save_adapters(model, acfg, tmp_path/"run")
    assert sorted(p.name for p in run.iterdir()) == ["adapter_config.json", "adapters.safetensors"]  # no temp files left
    saved = read_adapter_config(run)
    assert saved["fine_tune_type"] == kind and saved["num_layers"] == -1 and saved["lora_parameters"]["scale"] == 2.0
    assert set(mx.load(str(run/"adapters.safetensors"))) == {k for k, _ in tree_flatten(model.trainable_parameters())}
    x = _tokens(tok)
    ours = model(x)
    base, _ = load_model(str(tiny_model))
    assert _max_diff(base(x), ours) > 1e-3
    ref, ref_tok = mlx_lm.load(str(tiny_model), adapter_path=str(run))
    assert _max_diff(ref(x), ours) < 1e-5
    prompt = ref_tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True, tokenize=False)
    assert mlx_lm.generate(ref, ref_tok, prompt, max_tokens=6) == mlx_lm.generate(model, tok, prompt, max_tokens=6)
    again, _ = load_model(str(tiny_model), adapter_path=run)
    assert _max_diff(again(x), ours) < 1e-5
    assert count_parameters(again)["trainable"] == formula  # trainable again, to resume


def test_full_fine_tune(tiny_model, tmp_path):
    model, tok = load_model(str(tiny_model))
    acfg = attach_adapters(model, dict(fine_tune_type="full"))
    c = count_parameters(model)
    assert c["trainable"] == c["total"] and acfg["lora_parameters"] is None
    model.layers[0].mlp.up_proj.weight = model.layers[0].mlp.up_proj.weight + 0.1
    run = save_adapters(model, acfg, tmp_path/"run")
    x = _tokens(tok)
    ref, _ = mlx_lm.load(str(tiny_model), adapter_path=str(run))
    assert _max_diff(ref(x), model(x)) < 1e-5
    base, _ = load_model(str(tiny_model))
    assert _max_diff(base(x), model(x)) > 1e-3
    save_adapters(model, acfg, run)  # overwrites in place
    assert len(list(run.iterdir())) == 2
    partial, _ = load_model(str(tiny_model))
    attach_adapters(partial, dict(fine_tune_type="full", lora_layers=1))
    n_block = sum(v.size for _, v in tree_flatten(partial.layers[1].parameters()))
    assert count_parameters(partial)["trainable"] == n_block


# --- QLoRA -----------------------------------------------------------------------------------------------------

def test_qlora(tiny_model, tmp_path):
    model, tok = load_model(str(tiny_model), quantize_bits=4, group_size=32)
    assert type(model.layers[0].self_attn.q_proj).__name__ == "FastQuantizedLinear"  # on the CPU backend
    plain, _ = load_model(str(tiny_model))
    assert count_parameters(model)["total"] == count_parameters(plain)["total"]
    formula = lora_parameter_formula(model, rank=8)
    assert formula == lora_parameter_formula(plain, rank=8)
    acfg = attach_adapters(model, dict(fine_tune_type="lora", lora_rank=8, lora_alpha=16.0))
    assert count_parameters(model)["trainable"] == formula
    assert acfg["base_quantization"]["bits"] == 4 and acfg["base_quantization"]["group_size"] == 32
    x = _tokens(tok)
    _randomize(model)
    out = model(x)
    assert out.shape == (1, x.shape[1], tok.vocab_size) and mx.all(mx.isfinite(out)).item()
    assert 1e-4 < _max_diff(out, plain(x))  # quantization changes the numbers
    run = save_adapters(model, acfg, tmp_path/"run")
    again, _ = load_model(str(tiny_model), adapter_path=run)  # re-quantizes as recorded
    assert type(again.layers[0].self_attn.q_proj.linear).__name__ == "FastQuantizedLinear"
    assert _max_diff(again(x), out) < 1e-5
    ref, _ = mlx_lm.load(str(tiny_model), adapter_path=str(run))  # plain mlx-lm accepts them too (on the unquantized base)
    assert mx.all(mx.isfinite(ref(x))).item()
    with pytest.raises(ModelError, match="cannot be fully fine-tuned"):
        attach_adapters(load_model(str(tiny_model), quantize_bits=8, group_size=32)[0], dict(fine_tune_type="full"))


def test_qlora_from_config(tiny_model):
    from finetune.config import TrainConfig
    model, _ = load_model(TrainConfig(model=str(tiny_model), quantize_bits=8, quantize_group_size=64, fine_tune_type="dora", lora_rank=4))
    assert model.layers[0].mlp.up_proj.bits == 8 and model.layers[0].mlp.up_proj.group_size == 64
    formula = lora_parameter_formula(model, rank=4, fine_tune_type="dora")
    attach_adapters(model, TrainConfig(model=str(tiny_model), quantize_bits=8, fine_tune_type="dora", lora_rank=4))
    assert count_parameters(model)["trainable"] == formula


def test_load_adapters_checks_the_base(tiny_model, tmp_path):
    "Adapters onto a model of other shapes give a ModelError naming the tensors; a directory without weights too."
    from finetune.tiny import make_tiny_model
    model, _ = load_model(str(tiny_model))
    run = save_adapters(model, attach_adapters(model, dict(fine_tune_type="lora", lora_rank=2)), tmp_path/"run")
    other, _ = load_model(str(make_tiny_model(tmp_path/"other", hidden_size=32, n_heads=2, n_kv_heads=1, intermediate_size=64)))
    with pytest.raises(ModelError, match="(?s)do not fit this model: .*lora_a.* more.*trained on"): load_adapters(other, run)
    (run/"adapters.safetensors").unlink()
    with pytest.raises(ModelError, match="No adapters.safetensors"): load_adapters(load_model(str(tiny_model))[0], run)


# --- compute dtype ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bf16_model(tiny_model, tmp_path_factory):
    "The tiny model saved in bfloat16, as most Hub and mlx-community models are."
    from mlx_lm.utils import save_model
    d = tmp_path_factory.mktemp("bf16")/"tiny-bf16"
    d.mkdir()
    for f in tiny_model.iterdir():
        if not f.name.startswith("model"): (d/f.name).write_bytes(f.read_bytes())
    m, _ = mlx_lm.load(str(tiny_model))
    m.set_dtype(mx.bfloat16)
    save_model(d, m)
    assert {str(v.dtype) for v in mx.load(str(d/"model.safetensors")).values()} == {"mlx.core.bfloat16"}
    return d


def _data(d: Path) -> Path:
    "A directory of small completion rows to train on."
    d.mkdir(parents=True, exist_ok=True)
    words = "red green blue one two three four five six seven eight nine ten".split()
    rows = [{"prompt": f"What is {words[i % 13]} plus {words[(i * 5) % 13]}?", "completion": f"The answer is {words[(i * 3) % 13]}."}
            for i in range(30)]
    (d/"train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:24]))
    (d/"valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[24:]))
    return d


def test_bf16_model_trains_in_float32_on_cpu(bf16_model, tmp_path, capsys):
    "Saved in bfloat16 and loaded for training on the CPU: float32 by default (and the run log says so); `dtype: bfloat16` keeps it."
    from finetune.config import TrainConfig
    from finetune.train import Trainer
    base = dict(model=str(bf16_model), data=str(_data(tmp_path/"data")), iters=1, batch_size=4, max_seq_length=64, eval_every=10,
                output_dir=str(tmp_path/"runs"))
    t = Trainer(TrainConfig.from_dict(base | dict(run_name="auto")))
    assert weights_dtype(t.model) == "float32"
    assert {v.dtype for _, v in tree_flatten(t.model.trainable_parameters())} == {mx.float32}
    t.fit()
    assert "computing in float32 (the CPU default; saved as bfloat16)" in capsys.readouterr().out
    kept = Trainer(TrainConfig.from_dict(base | dict(run_name="kept", dtype="bfloat16")))
    assert weights_dtype(kept.model) == "bfloat16"
    assert describe_dtype(kept.model).startswith("bfloat16 (dtype: bfloat16 in the config")
    # The config's dtype also works the other way: a float32 model asked for bfloat16.
    m, _ = load_model(TrainConfig(model=str(bf16_model), dtype="float16"))
    assert weights_dtype(m) == "float16" and m.finetune_info.saved_dtype == "bfloat16"


def test_ft_info_says_the_dtype_policy(ft_exe, ft_env):
    import subprocess
    r = subprocess.run([ft_exe, "info", "--no-measure"], env=ft_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "dtype     auto: float32 on the CPU backend" in r.stdout


# --- fast QLoRA on the CPU -------------------------------------------------------------------------------------

def _plain_quantized(model):
    "Turn the fast quantized classes back into MLX's own (its quantized matmul), in place."
    for _, m in model.named_modules():
        m.__class__ = {FastQuantizedLinear: nn.QuantizedLinear, FastQuantizedEmbedding: nn.QuantizedEmbedding}.get(type(m), type(m))
    return model


def test_fast_qlora_equals_the_quantized_path(tiny_model):
    "Logits and adapter gradients of the dequantize-then-matmul path equal MLX's quantized matmul's, within float32 margins."
    from finetune.batching import loss_fn
    acfg = dict(fine_tune_type="lora", lora_rank=8, lora_alpha=16.0)
    fast, tok = load_model(str(tiny_model), quantize_bits=4, group_size=32)
    assert fast.finetune_info.fast_quantized == 2 * 7 + 1  # 2 blocks of 7 projections, and the tied embedding
    slow = _plain_quantized(load_model(str(tiny_model), quantize_bits=4, group_size=32)[0])
    for m in (fast, slow): attach_adapters(m, acfg)
    _randomize(fast)
    slow.load_weights(tree_flatten(fast.trainable_parameters()), strict=False)  # the same adapters on both
    x = mx.array([tok.encode(PROMPT * 3)])
    assert x.shape[1] > 8  # enough rows for the fast path
    a, b = fast(x), slow(x)
    # Both multiply the same dequantized numbers; only float32 summation order differs (measured ~1e-6 at logits of ~1).
    assert _max_diff(a, b) < 1e-3 and (a.argmax(-1) == b.argmax(-1)).all().item()
    inp, tgt = x[:, :-1], x[:, 1:]
    w = mx.ones(tgt.shape)
    grad = lambda m: nn.value_and_grad(m, lambda m: loss_fn(m, inp, tgt, w)[0])(m)[1]
    ga, gb = dict(tree_flatten(grad(fast))), dict(tree_flatten(grad(slow)))
    assert ga.keys() == gb.keys() and len(ga) == 2 * 2 * 7
    scale = max(mx.abs(g).max().item() for g in gb.values())
    assert scale > 0 and max(_max_diff(ga[k], gb[k]) for k in ga) < 1e-3 * scale


def test_fast_qlora_keeps_no_float_weights(tmp_path):
    "A compiled QLoRA step holds the packed weights, not a float32 copy of them: its peak stays far below LoRA's."
    from finetune.config import TrainConfig
    from finetune.tiny import make_tiny_model
    from finetune.train import make_optimizer, make_step
    from finetune.batching import Batch
    d = make_tiny_model(tmp_path/"wide", n_layers=4, hidden_size=256, n_heads=4, n_kv_heads=2, intermediate_size=1024)
    x = mx.array([list(range(1, 18))], mx.int32)
    batch = Batch(x[:, :-1], x[:, 1:], mx.ones((1, 16)), None, 16, 16, 16, mx.arange(16))
    extra = {}
    for bits in (None, 4):
        c = TrainConfig(model=str(d), quantize_bits=bits, quantize_group_size=32, lora_rank=4)
        m, _ = load_model(c)
        attach_adapters(m, c)
        opt = make_optimizer(c, 10); opt.init(m.trainable_parameters())
        micro, update = make_step(m, opt)
        for _ in range(2):  # the first compiles
            mx.eval(m.parameters(), opt.state)
            base = mx.get_active_memory(); mx.reset_peak_memory()
            mx.eval(update(*micro(batch)), m.state, opt.state)
        extra[bits] = mx.get_peak_memory() - base
        del m, opt, micro, update
    f32_layers = 4 * (2 * 256 * 256 + 2 * 256 * 128 + 3 * 256 * 1024) * 4  # what all blocks' weights take in float32
    # A step's own memory (activations, one dequantized slice at a time) is about the same either way; a QLoRA step that kept
    # every dequantized weight alive would add all of f32_layers on top.
    assert extra[4] < extra[None] + 0.5 * f32_layers, (extra, f32_layers)


def test_qlora_loss_falls(tiny_model, tmp_path):
    from finetune.config import TrainConfig
    from finetune.callbacks import Progress
    from finetune.train import train
    t = train(TrainConfig(model=str(tiny_model), data=str(_data(tmp_path/"data")), quantize_bits=4, quantize_group_size=32, lora_rank=8,
                          learning_rate=3e-3, batch_size=4, iters=16, eval_every=100, max_seq_length=64, output_dir=str(tmp_path/"runs")),
              callbacks=[Progress(enabled=False)])
    assert type(t.model.layers[0].mlp.up_proj.linear).__name__ == "FastQuantizedLinear"
    ls = [r["train_loss"] for r in t.history["train"]]
    assert sum(ls[-4:]) / 4 < 0.7 * sum(ls[:4]) / 4, ls
