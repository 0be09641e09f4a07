"scripts/gpu_bench.py's pieces that run anywhere: models in a real model's shapes with random weights, and its workloads."
import importlib.util, json, os
from pathlib import Path
import finetune  # noqa: F401  (loads the BLAS before mlx)
import mlx.core as mx

spec = importlib.util.spec_from_file_location("gpu_bench", Path(__file__).parent.parent/"scripts"/"gpu_bench.py")
gpu_bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(gpu_bench)


def test_shaped_model_has_the_shapes_and_tokenizer(tmp_path):
    os.environ.setdefault("FINETUNE_HOME", str(tmp_path/"home"))
    from finetune.tiny import make_tiny_model
    from finetune.models import load_model
    from finetune.bench import saved_dtype
    src = make_tiny_model(tmp_path/"tiny")  # stands in for the embedded SmolLM2: a config and a tokenizer
    shapes = tmp_path/"shapes"; shapes.mkdir()
    for f in ["config.json", *gpu_bench.TOKENIZER_FILES]:
        if (src/f).exists(): (shapes/f).write_bytes((src/f).read_bytes())
    cfg = {**gpu_bench.LLAMA_3_2_3B, **gpu_bench.SMALL, "vocab_size": 512}
    d = gpu_bench.shaped_model(tmp_path/"m", cfg, shapes)
    assert saved_dtype(d) == "bfloat16" and json.loads((d/"config.json").read_text())["rope_scaling"]["rope_type"] == "llama3"
    model, tok = load_model(str(d))
    w = model.model.layers[0].mlp.gate_proj.weight
    assert len(model.model.layers) == cfg["num_hidden_layers"] and w.shape == (cfg["intermediate_size"], cfg["hidden_size"])
    assert model.model.embed_tokens.weight.shape == (512, cfg["hidden_size"])
    assert tok.encode("red green blue") == load_model(str(src))[1].encode("red green blue")  # the tokenizer came along
    assert float(mx.abs(w.astype(mx.float32)).sum()) > 0  # random weights, not zeros
    mtime = (d/"config.json").stat().st_mtime
    assert gpu_bench.shaped_model(tmp_path/"m", cfg, shapes) == d and (d/"config.json").stat().st_mtime == mtime  # made once, then kept


def test_workloads_train_one_epoch_on_the_same_rows(tmp_path, monkeypatch):
    shapes = tmp_path/"shapes"; shapes.mkdir()
    (shapes/"config.json").write_text(json.dumps({**gpu_bench.LLAMA_3_2_3B, "vocab_size": 49152, "hidden_size": 576}))
    monkeypatch.setattr(gpu_bench, "shaped_model", lambda dst, config, tokenizer_dir, seed=0: dst)  # the specs alone, no model made
    specs = gpu_bench.workloads(shapes, tmp_path, small=False)
    for name, batch in [("llama3b", 4), ("llama3b-b16", 16), ("smollm2", 4)]:
        s = specs[name]()
        assert s.batch_size == batch and s.iters * s.batch_size == s.n_train, (name, s)  # every system sees every row once
        assert s.weights and "random" in s.weights and "finetune" in s.systems and "mlx_lm_fixed" in s.systems
    assert specs["llama3b"]().lora_layers == 16 and "mlx_lm_same" in specs["llama3b"]().systems
