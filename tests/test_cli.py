"The real `ft` executable in subprocesses: a train -> list -> evaluate -> fuse -> export round trip, and every bad-input path."
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FT = str(Path(sys.executable).parent / "ft")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    "A working folder with a private FINETUNE_HOME and HF cache, one tiny model and a small chat dataset."
    d = tmp_path_factory.mktemp("cli")
    env = {**os.environ, "FINETUNE_HOME": str(d / "home"), "HF_HUB_CACHE": str(d / "hf"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus 1?"}, {"role": "assistant", "content": str(i + 1)}]} for i in range(24)]
    (d / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    w = dict(dir=d, env=env)
    r = ft(w, "make-tiny", "m")
    assert r.returncode == 0, r.stderr
    return w


def ft(work, *args, ok=None):
    "Run `ft ARGS` in the working folder; with ok=True/False assert it succeeded/failed."
    r = subprocess.run([FT, *map(str, args)], cwd=work["dir"], env=work["env"], capture_output=True, text=True, timeout=300)
    if ok is True: assert r.returncode == 0, f"ft {' '.join(map(str, args))} failed:\n{r.stdout}\n{r.stderr}"
    if ok is False:
        assert r.returncode != 0, r.stdout
        assert "Traceback" not in r.stderr + r.stdout, r.stderr
        assert r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) <= 3, r.stderr  # one short paragraph
    return r


TRAIN = ["--set", "model=m", "--set", "batch_size=2", "--set", "eval_every=5", "--set", "log_every=1", "--set", "output_dir=runs"]


@pytest.fixture(scope="module")
def run(work):
    "Split the data, then train run r1 for 5 steps."
    r = ft(work, "dataset", "split", "chat.jsonl", "data", "--valid", "0.2", "--test", "0.2", "--seed", "1", ok=True)
    assert "train: 14 rows, valid: 5 rows, test: 5 rows" in r.stdout
    r = ft(work, "train", *TRAIN, "--set", "data=data", "--set", "iters=5", "--set", "run_name=r1", ok=True)
    assert "step 5/5" in r.stdout and "val" in r.stdout, r.stdout
    assert (work["dir"] / "runs" / "r1" / "adapters.safetensors").is_file()
    return "r1"


def test_runs_list_show_compare(work, run):
    rows = json.loads(ft(work, "runs", "list", "--json", ok=True).stdout)
    r1 = next(r for r in rows if r["name"] == "r1")
    assert r1["steps"] == 5 and r1["model"] == "m" and r1["best_val_loss"] is not None
    assert "r1" in ft(work, "runs", "list", ok=True).stdout
    show = json.loads(ft(work, "runs", "show", "r1", "--json", ok=True).stdout)
    assert show["config"]["iters"] == 5 and show["adapters"] is True
    ft(work, "train", *TRAIN, "--set", "data=data", "--set", "iters=2", "--set", "run_name=r2", "--set", "lora_rank=4", "--quiet", ok=True)
    cmp = json.loads(ft(work, "runs", "compare", "r1", "r2", "--json", ok=True).stdout)
    assert [r["name"] for r in cmp] == ["r1", "r2"] and [r["lora_rank"] for r in cmp] == [8, 4] and [r["steps"] for r in cmp] == [5, 2]
    ft(work, "runs", "show", "nope", ok=False)


def test_evaluate(work, run):
    out = json.loads(ft(work, "evaluate", "r1", "--limit", "2", "--max-tokens", "4", "--json", ok=True).stdout)
    assert out["names"] == ["base", "tuned"] and out["meta"]["n_examples"] == 2
    # held-out test.jsonl found in the data folder; 5 steps lower its loss by 0.34-0.39 nats (seeds 0-3), far beyond rounding
    assert out["summary"]["tuned"]["loss"] < out["summary"]["base"]["loss"] - 0.2, out["summary"]
    assert (work["dir"] / "runs" / "r1" / "evaluation.json").is_file()
    r = ft(work, "evaluate", "r1", "--data", "nothere.jsonl", ok=False)
    assert "does not exist" in r.stderr and "--data" in r.stderr


def test_evaluate_registered_dataset(work, run):
    "A run whose data is a registered dataset name evaluates on that folder's test.jsonl; --data takes registered names."
    ft(work, "dataset", "add", "splitdata", "data", ok=True)
    try:
        ft(work, "train", *TRAIN, "--set", "data=splitdata", "--set", "iters=1", "--set", "run_name=rreg", "--quiet", ok=True)
        out = json.loads(ft(work, "evaluate", "rreg", "--limit", "1", "--max-tokens", "2", "--json", ok=True).stdout)
        assert out["meta"]["data"].endswith("test.jsonl"), out["meta"]
        out = json.loads(ft(work, "evaluate", "r1", "--data", "splitdata", "--limit", "1", "--max-tokens", "2", "--json", ok=True).stdout)
        assert out["meta"]["data"].endswith("test.jsonl"), out["meta"]
    finally: ft(work, "dataset", "remove", "splitdata", ok=True)
    ft(work, "train", *TRAIN, "--set", "data=chat.jsonl", "--set", "iters=1", "--set", "run_name=rnone", "--quiet", ok=True)
    r = ft(work, "evaluate", "rnone", ok=False)
    assert "no held-out data" in r.stderr and "--data" in r.stderr and "data=" not in r.stderr, r.stderr


def test_resume(work, run):
    ft(work, "train", *TRAIN, "--set", "data=data", "--set", "iters=3", "--set", "run_name=r3", "--quiet", ok=True)
    r = ft(work, "train", "--resume", "r3", "--set", "iters=5", ok=True)
    assert "resumed at step 3" in r.stdout and "step 5/5" in r.stdout, r.stdout
    assert json.loads(ft(work, "runs", "show", "r3", "--json", ok=True).stdout)["steps"] == 5


def test_fuse_export(work, run):
    ft(work, "model", "fuse", "r1", "fused", ok=True)
    info = json.loads(ft(work, "model", "info", "fused", "--json", ok=True).stdout)
    base = json.loads(ft(work, "model", "info", "m", "--json", ok=True).stdout)
    assert info["parameters"] == base["parameters"] and info["model_type"] == "llama" and info["quantization"] is None
    r = ft(work, "model", "fuse", "r1", "fused", ok=False)  # clobbering
    assert "already exists" in r.stderr and "--force" in r.stderr
    ft(work, "model", "fuse", "r1", "fused", "--force", ok=True)
    ft(work, "model", "export", "r1", "peft", "--to", "peft", ok=True)
    acfg = json.loads((work["dir"] / "peft" / "adapter_config.json").read_text())
    assert acfg["peft_type"] == "LORA" and (work["dir"] / "peft" / "adapter_model.safetensors").is_file()
    ft(work, "model", "export", "r1", "m.gguf", "--to", "gguf", ok=True)
    assert (work["dir"] / "m.gguf").read_bytes()[:4] == b"GGUF"
    assert "--force" in ft(work, "model", "export", "r1", "peft", ok=False).stderr
    assert "Unknown export format" in ft(work, "model", "export", "r1", "x", "--to", "onnx", ok=False).stderr


def test_quantize(work):
    ft(work, "model", "quantize", "m", "q4", "--bits", "4", "--group-size", "32", ok=True)
    info = json.loads(ft(work, "model", "info", "q4", "--json", ok=True).stdout)
    assert info["quantization"]["bits"] == 4 and info["quantization"]["group_size"] == 32
    assert "group size" in ft(work, "model", "quantize", "m", "q5", "--group-size", "48", ok=False).stderr.lower()


def test_model_registry(work):
    ft(work, "model", "add", "mine", "m", ok=True)
    rows = json.loads(ft(work, "model", "list", "--json", ok=True).stdout)
    assert {"tiny", "mine"} <= {r["name"] for r in rows}
    assert "already exists" in ft(work, "model", "add", "mine", "m", ok=False).stderr
    ft(work, "model", "add", "mine", "m", "--force", ok=True)
    assert "Invalid model name" in ft(work, "model", "add", "bad name!", "m", ok=False).stderr
    ft(work, "model", "remove", "mine", ok=True)
    assert "mine" not in {r["name"] for r in json.loads(ft(work, "model", "list", "--json", ok=True).stdout)}


def test_download_offline(work):
    r = ft(work, "model", "download", "someone/not-cached", ok=False)
    assert "someone/not-cached" in r.stderr and "HF_HUB_OFFLINE" in r.stderr


@pytest.mark.parametrize("args, needle", [
    (["--set", "iterz=5"], "Did you mean 'iters'?"),
    (["--set", "learning_rate=-1"], "Field 'learning_rate' must be between"),
    (["--set", "lora_rank=many"], "Field 'lora_rank' must be int"),
    (["--set", "iters"], "--set expects key=value"),
    (["no-such-config.yaml"], "does not exist"),
    (["--set", "model=nobody/nothing", "--set", "data=chat.jsonl"], "Model 'nobody/nothing' not found"),
    (["--set", "model=m", "--set", "data=missing.jsonl"], "Data file 'missing.jsonl' (field 'data'"),
    (["--set", "model=m", "--set", "data=bad.jsonl"], "line 2: invalid JSON"),
])
def test_train_bad_input(work, args, needle):
    (work["dir"] / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "broken"\n')
    r = ft(work, "train", *args, ok=False)
    assert needle in r.stderr, r.stderr


def test_debug_shows_traceback(work):
    r = ft(work, "--debug", "train", "--set", "iterz=5")
    assert r.returncode != 0 and "Traceback" in r.stderr and "ConfigError" in r.stderr


def test_dataset_commands(work):
    d = work["dir"]
    (d / "inst.jsonl").write_text('{"instruction": "Add", "input": "1 1", "output": "2"}\n{"instruction": "Say hi", "output": "hi"}\n')
    ft(work, "dataset", "convert", "inst.jsonl", "conv.jsonl", ok=True)
    rows = [json.loads(line) for line in (d / "conv.jsonl").read_text().splitlines()]
    assert rows[0] == {"messages": [{"role": "user", "content": "Add\n\n1 1"}, {"role": "assistant", "content": "2"}]}
    assert "--force" in ft(work, "dataset", "convert", "inst.jsonl", "conv.jsonl", ok=False).stderr
    v = json.loads(ft(work, "dataset", "validate", "conv.jsonl", "--json", ok=True).stdout)
    assert v == {"data": "conv.jsonl", "rows": 2, "format": "chat", "valid": True}
    (d / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "broken"\n')
    assert "line 2: invalid JSON" in ft(work, "dataset", "validate", "bad.jsonl", ok=False).stderr
    assert "does not exist" in ft(work, "dataset", "validate", "missing.jsonl", ok=False).stderr
    (d / "norole.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    assert "no assistant turn" in ft(work, "dataset", "validate", "norole.jsonl", ok=False).stderr
    rep = json.loads(ft(work, "dataset", "inspect", "chat.jsonl", "--model", "m", "--json", ok=True).stdout)
    assert rep["model"] == "m"
    (d / "insp.yaml").write_text("model: m\n")
    assert json.loads(ft(work, "dataset", "inspect", "chat.jsonl", "--config", "insp.yaml", "--json", ok=True).stdout)["model"] == "m"
    assert "tokenizer of model 'tiny' (the default: pass --model)" in ft(work, "dataset", "inspect", "chat.jsonl", ok=True).stdout
    assert rep["format"] == "chat" and rep["splits"]["train"]["rows"] + rep["splits"].get("valid", {}).get("rows", 0) == 24
    a = ft(work, "dataset", "split", "chat.jsonl", "s1", "--valid", "0.25", "--seed", "3", ok=True)
    ft(work, "dataset", "split", "chat.jsonl", "s2", "--valid", "0.25", "--seed", "3", ok=True)
    assert "train: 18 rows, valid: 6 rows" in a.stdout
    assert (d / "s1" / "valid.jsonl").read_text() == (d / "s2" / "valid.jsonl").read_text() and not (d / "s1" / "test.jsonl").exists()
    ft(work, "dataset", "add", "qa", "chat.jsonl", ok=True)
    assert [r["name"] for r in json.loads(ft(work, "dataset", "list", "--json", ok=True).stdout)] == ["qa"]
    assert "Invalid dataset name" in ft(work, "dataset", "add", "../x", "chat.jsonl", ok=False).stderr


def test_info_json(work):
    assert json.loads(ft(work, "info", "--json", "--no-measure", ok=True).stdout)["backend"]


def test_cli_reference_up_to_date():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.render()
    assert "`ft train`" in text and "`ft model export`" in text and "--set" in text
    assert (ROOT / "docs" / "cli.md").read_text() == text, "docs/cli.md is stale: run `python scripts/cli_reference.py`"


def test_serve(work, run):
    import socket
    import time
    import urllib.request
    env = {k: v for k, v in work["env"].items() if k != "FINETUNE_API_KEY"}
    r = ft({**work, "env": env}, "serve", "--host", "0.0.0.0", ok=False)
    assert "needs an API key" in r.stderr
    assert "No run named" in ft(work, "serve", "--model", "m", "--adapter", "nope", ok=False).stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([FT, "serve", "--model", "m", "--adapter", "r1", "--port", str(port), "--log-level", "warning"], cwd=work["dir"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as resp:
                    body = json.loads(resp.read())
                break
            except OSError:
                assert p.poll() is None, p.communicate()[1]
                time.sleep(0.5)
        else:
            pytest.fail("ft serve did not answer")
        assert body["data"], body
    finally:
        p.terminate()
        p.wait(timeout=30)


def test_benchmark_script_runs_both_benchmarks():
    "scripts/benchmark.py is the training benchmark, with --serve the serving one, with --preference DPO's (their command lines)."
    script = str(Path(__file__).resolve().parent.parent/"scripts"/"benchmark.py")
    train = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=300)
    serve = subprocess.run([sys.executable, script, "--serve", "--help"], capture_output=True, text=True, timeout=300)
    assert train.returncode == 0 and "--workload" in train.stdout and "mlx_lm.lora" in train.stdout, train.stderr
    assert serve.returncode == 0 and "mlx_lm.server" in serve.stdout and "--held-out" in serve.stdout, serve.stderr
    pref = subprocess.run([sys.executable, script, "--preference", "--help"], capture_output=True, text=True, timeout=300)
    assert pref.returncode == 0 and "mlx-lm-lora" in pref.stdout and "--batch" in pref.stdout, pref.stderr
