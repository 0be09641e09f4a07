"Export: fused logits (LoRA/DoRA, plain/quantized), PEFT adapters loaded by transformers+peft, GGUF files, Hub upload."
import json

import pytest

import finetune  # noqa: F401  (fast BLAS before mlx)
from finetune.config import TrainConfig
from finetune.errors import ExportError
from finetune.export import fuse, model_card, push_to_hub, to_gguf, to_peft, upload_files
from finetune.models import attach_adapters, load_model, save_adapters
from finetune.tiny import make_tiny_model
import mlx.core as mx
import mlx_lm
from mlx.utils import tree_flatten, tree_unflatten

X = [[5, 17, 33, 2, 64, 100, 7, 250, 11]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("m") / "tiny")


def make_run(tiny, d, num_layers=-1, **cfg):
    c = TrainConfig(model=str(tiny), lora_layers=num_layers, **cfg)
    m, _ = load_model(c)
    mx.random.seed(0)  # lora_a's random init
    acfg = attach_adapters(m, c)
    for i, (k, v) in enumerate(tree_flatten(m.trainable_parameters())):
        if k.endswith("lora_b"):
            m.update(tree_unflatten([(k, 0.1 * mx.random.normal(v.shape, key=mx.random.key(i)))]))
        if k.endswith(".m"):  # move DoRA's magnitudes away from their initial norms
            m.update(tree_unflatten([(k, v * (1 + 0.2 * mx.random.uniform(shape=v.shape, key=mx.random.key(100 + i))))]))
    return save_adapters(m, acfg, d)


@pytest.mark.parametrize("kind", ["lora", "dora"])
@pytest.mark.parametrize("quant", [None, 4])
def test_fused_logits_equal_adapted(tiny, tmp_path, kind, quant):
    q = dict(quantize_bits=quant, quantize_group_size=32) if quant else {}
    run = make_run(tiny, tmp_path / "run", fine_tune_type=kind, lora_rank=4, lora_alpha=8.0, **q)
    adapted, _ = load_model(str(tiny), adapter_path=run)
    x = mx.array(X)
    want = adapted(x).astype(mx.float32)
    out = fuse(run, tmp_path / "fused", dequantize=bool(quant))
    fm, ftok = mlx_lm.load(str(out))
    assert not any(type(m).__name__ in ("QuantizedLinear", "LoRALinear", "DoRALinear") for _, m in fm.named_modules())
    got = fm(x).astype(mx.float32)
    assert mx.abs(got - want).max().item() < 1e-4
    base, _ = load_model(str(tiny), quantize_bits=quant, group_size=32 if quant else None)
    assert mx.abs(base(x) - want).max().item() > 1e-2
    assert ftok.eos_token_ids == {2}
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2]
    assert "<|im_start|>assistant" in (ftok.chat_template or "")


def test_fuse_qlora_keeps_the_finetune(tiny, tmp_path):
    "A QLoRA run fuses into float weights by default: the fused model computes base + adapter, which re-quantizing would not."
    run = make_run(tiny, tmp_path / "run", quantize_bits=4, quantize_group_size=32, lora_rank=4, lora_alpha=8.0)
    adapted, _ = load_model(str(tiny), adapter_path=run)
    x = mx.array(X)
    want = adapted(x).astype(mx.float32)
    out = fuse(run, tmp_path / "fused")
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization" not in cfg and "quantization_config" not in cfg
    fm, _ = load_model(str(out))
    assert fm.finetune_info.quantization is None
    err = mx.abs(fm(x).astype(mx.float32) - want).max().item()
    assert err < 1e-4, err
    base, _ = load_model(str(tiny), quantize_bits=4, group_size=32)
    effect = mx.abs(base(x) - want).max().item()
    assert effect > 1e-2, effect  # the adapter matters
    # re-quantizing (asked for, with no check prompts) rounds the fused weights again: farther from base + adapter
    q = fuse(run, tmp_path / "requantized", dequantize=False, prompts=())
    qm, _ = load_model(str(q))
    assert qm.finetune_info.quantization["bits"] == 4
    assert mx.abs(qm(x).astype(mx.float32) - want).max().item() > 10 * err


def test_fuse_refuses_to_requantize_when_answers_change(tiny, tmp_path, monkeypatch):
    import finetune.export as ex
    run = make_run(tiny, tmp_path / "run", quantize_bits=4, quantize_group_size=32)
    answers = iter([["a", "b", "c"], ["a", "x", "c"]])  # before and after re-quantizing
    monkeypatch.setattr(ex, "greedy_answers", lambda *a, **k: next(answers))
    with pytest.raises(ExportError, match="changes its greedy answers to 1 of 3 check prompts"):
        fuse(run, tmp_path / "q", dequantize=False)
    assert not (tmp_path / "q").exists()


def test_fuse_full_finetune(tiny, tmp_path):
    c = TrainConfig(model=str(tiny), fine_tune_type="full")
    m, _ = load_model(c)
    acfg = attach_adapters(m, c)
    m.update(tree_unflatten([("model.norm.weight", m.model.norm.weight * 1.5)]))
    run = save_adapters(m, acfg, tmp_path / "run")
    out = fuse(run, tmp_path / "fused")
    fm, _ = mlx_lm.load(str(out))
    x = mx.array(X)
    assert mx.abs(fm(x) - m(x)).max().item() < 1e-4
    with pytest.raises(ExportError, match="no adapter to write for PEFT"):
        to_peft(run, tmp_path / "peft")


def test_fuse_needs_base(tiny, tmp_path):
    run = make_run(tiny, tmp_path / "run")
    acfg = json.loads((run / "adapter_config.json").read_text())
    acfg.pop("model")
    (run / "adapter_config.json").write_text(json.dumps(acfg))
    with pytest.raises(ExportError, match="does not say which base model"):
        fuse(run, tmp_path / "f")
    assert (fuse(run, tmp_path / "f", base=str(tiny)) / "model.safetensors").exists()


@pytest.mark.parametrize("kind,num_layers", [("lora", -1), ("dora", -1), ("lora", 1)])
def test_peft_logits_match_mlx(tiny, tmp_path, kind, num_layers):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM
    run = make_run(tiny, tmp_path / "run", num_layers=num_layers, fine_tune_type=kind, lora_rank=4, lora_alpha=12.0,
                   lora_modules=["q_proj", "v_proj", "down_proj"])
    out = to_peft(run, tmp_path / "peft")
    adapted, _ = load_model(str(tiny), adapter_path=run)
    want = adapted(mx.array(X)).astype(mx.float32)
    base = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32)
    pm = peft.PeftModel.from_pretrained(base, str(out))
    pm.eval()
    n_lora = sum(1 for n, _ in pm.named_modules() if n.endswith("lora_A.default"))
    assert n_lora == 3 * (2 if num_layers == -1 else 1)
    with torch.no_grad():
        got = pm(torch.tensor(X)).logits.float().numpy()
    import numpy as np
    assert np.abs(got - np.array(want)).max() < 1e-4
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32)(torch.tensor(X)).logits.numpy()
    assert np.abs(plain - np.array(want)).max() > 1e-2
    # the adapter names its base so that PEFT finds it alone: the model directory's absolute path (the Hub id when known)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny.resolve())
    with torch.no_grad():
        alone = peft.AutoPeftModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()(torch.tensor(X)).logits.float().numpy()
    assert np.abs(alone - np.array(want)).max() < 1e-4


@pytest.mark.parametrize("outtype,ftype,kind", [("f32", 0, "F32"), ("f16", 1, "F16"), ("q8_0", 7, "Q8_0")])
def test_gguf(tiny, tmp_path, outtype, ftype, kind):
    "A run's GGUF: every tensor under llama.cpp's names in the declared type (norms F32), and the tokenizer metadata llama.cpp reads."
    import gguf
    import numpy as np
    run = make_run(tiny, tmp_path / "run")
    path = to_gguf(run, tmp_path / "m.gguf", outtype=outtype)
    r = gguf.GGUFReader(str(path))
    fm, tok = mlx_lm.load(str(fuse(run, tmp_path / "fused")))
    weights = dict(tree_flatten(fm.parameters()))
    tensors = {t.name: t for t in r.tensors}
    assert len(tensors) == len(weights)
    assert {"token_embd.weight", "blk.0.attn_q.weight", "blk.1.ffn_down.weight", "output_norm.weight"} <= set(tensors)
    assert {t.tensor_type.name for n, t in tensors.items() if not n.endswith("norm.weight")} == {kind}
    assert tensors["output_norm.weight"].tensor_type.name == "F32"
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
    assert (f["general.architecture"], f["general.file_type"], f["tokenizer.ggml.model"], f["tokenizer.ggml.pre"]) == ("llama", ftype, "gpt2", "gpt-2")
    assert r.fields["tokenizer.ggml.token_type"].types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32]
    assert len(f["tokenizer.ggml.merges"]) > 100 and f["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert (f["tokenizer.ggml.eos_token_id"], f["tokenizer.ggml.add_bos_token"], f["tokenizer.chat_template"]) == (2, False, tok.chat_template)
    if outtype != "q8_0":
        t = tensors["blk.1.ffn_down.weight"]
        got = np.array(t.data, dtype=np.float32).reshape(np.array(weights["model.layers.1.mlp.down_proj.weight"]).shape)
        assert np.allclose(got, np.array(weights["model.layers.1.mlp.down_proj.weight"]), atol=1e-6 if outtype == "f32" else 1e-3)


def test_gguf_rejects(tiny, tmp_path):
    d = tmp_path / "phi"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "phi3"}))
    with pytest.raises(ExportError, match="this model is 'phi3'"):
        to_gguf(d)
    with pytest.raises(ExportError, match="Unknown GGUF outtype 'q4_k'"):
        to_gguf(d, outtype="q4_k")
    with pytest.raises(ExportError, match="neither a run"):
        to_gguf(tmp_path / "nothing")


def test_card_and_files(tiny, tmp_path):
    run = make_run(tiny, tmp_path / "run")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "adapters.safetensors").write_bytes(b"x")
    TrainConfig(model="org/base", lora_rank=4).to_yaml(run / "config.yaml")
    (run / "evaluation.json").write_text("{}")
    card = model_card("me/run", "org/base", kind="adapter", config=TrainConfig(model="org/base", lora_rank=4),
                      data={"train examples": 3}, metrics={"test loss": 2.5})
    assert "base_model: org/base" in card and "adapter_path=snapshot_download" in card
    assert "| train examples | 3 |" in card and "| test loss | 2.5 |" in card and "lora_rank: 4" in card
    assert upload_files(run) == ["adapter_config.json", "adapters.safetensors", "config.yaml", "evaluation.json"]
    peft_card = model_card("me/p", "org/base", kind="peft")
    assert "library_name: peft" in peft_card and "PeftModel.from_pretrained" in peft_card


def test_upload_offline_and_unreachable(tiny, tmp_path, monkeypatch):
    run = make_run(tiny, tmp_path / "run")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExportError, match="HF_HUB_OFFLINE is set"):
        push_to_hub(run, "me/run", card="# card")
    assert (run / "README.md").read_text() == "# card"
    import huggingface_hub.constants as c
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    with pytest.raises(ExportError, match="Upload of .* to 'me/run' failed"):
        push_to_hub(run, "me/run", token="hf_fake", endpoint="http://127.0.0.1:9")
    with pytest.raises(ExportError, match="no weights to upload"):
        push_to_hub(tmp_path, "me/run")


def test_cli_export_formats(tiny, tmp_path):
    "`ft model export RUN OUT --to gguf|gguf-lora|ollama` and `ft model fuse` on a QLoRA run, through the CLI."
    import gguf
    from typer.testing import CliRunner
    from finetune.cli import app
    from finetune.export import read_modelfile
    run = make_run(tiny, tmp_path / "run")
    cli = CliRunner()
    def ft(*args):
        r = cli.invoke(app, [str(a) for a in args])
        assert r.exit_code == 0, r.output
        return r.output
    ft("model", "export", run, tmp_path / "m.gguf", "--to", "gguf", "--outtype", "q8_0")
    assert gguf.GGUFReader(str(tmp_path / "m.gguf")).fields["general.file_type"].contents() == 7
    ft("model", "export", run, tmp_path / "a.gguf", "--to", "gguf-lora")
    assert gguf.GGUFReader(str(tmp_path / "a.gguf")).fields["adapter.type"].contents() == "lora"
    assert "ollama create NAME -f" in ft("model", "export", run, tmp_path / "oll", "--to", "ollama")
    assert read_modelfile(tmp_path / "oll" / "Modelfile")["FROM"] == "./model.gguf"
    qrun = make_run(tiny, tmp_path / "qrun", quantize_bits=4, quantize_group_size=32)
    ft("model", "fuse", qrun, tmp_path / "fused")
    assert "quantization" not in json.loads((tmp_path / "fused" / "config.json").read_text())
    r = cli.invoke(app, ["model", "export", str(run), str(tmp_path / "x"), "--to", "onnx"])
    assert r.exit_code != 0 and "gguf-lora or ollama" in r.output
