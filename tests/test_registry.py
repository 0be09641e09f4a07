"Registry: models (local names, HF cache, built-in), datasets, runs; name validation, no clobbering, atomic indexes, names loading everywhere."
import json, os, subprocess, sys, textwrap
from pathlib import Path

import pytest

import finetune  # noqa: F401  (loads the fast BLAS before mlx)
from finetune.config import TrainConfig
from finetune.errors import ModelError, RegistryError
from finetune.models import add_to_hf_cache, load_model, resolve_model
from finetune.data import resolve_dataset
from finetune.registry import Registry, check_name, run_summary

BAD_NAMES = ["../x", "/abs", "a/b/c", "a\\b", "..", "x/../y", "", "a b", ".hidden", "~/x", "C:x", "a/"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    "A private FINETUNE_HOME and HF cache for one test."
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path/"home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path/"hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path/"home"


def _run(d: Path, model="tiny", kind="lora", lr=1e-4, train=(3.0, 2.5, 2.0), vals=((1, 2.8), (3, 2.9))):
    "A run directory as the trainer writes one."
    d.mkdir(parents=True)
    (d/"config.yaml").write_text(f"model: {model}\nfine_tune_type: {kind}\nlearning_rate: {lr}\nbatch_size: 2\n")
    (d/"adapter_config.json").write_text(json.dumps({"model": model, "fine_tune_type": kind}))
    (d/"adapters.safetensors").write_bytes(b"")
    recs = [{"event": "train", "step": i + 1, "train_loss": v} for i, v in enumerate(train)]
    recs += [{"event": "val", "step": s, "val_loss": v} for s, v in vals]
    (d/"metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return d


# --- models ------------------------------------------------------------------------------------------------------

def test_local_model_added_by_name_loads_everywhere(home, tiny_model):
    reg = Registry()
    assert reg.home == home
    row = reg.add_model("org/my-tiny", tiny_model)
    assert (row["name"], row["source"], row["model_type"], row["path"]) == ("org/my-tiny", "local", "llama", str(tiny_model))
    assert row["size_bytes"] == sum(f.stat().st_size for f in tiny_model.iterdir())
    assert resolve_model("org/my-tiny") == tiny_model
    model, tok = load_model("org/my-tiny")
    assert model.finetune_info.path == tiny_model and len(model.layers) == 2
    model2, _ = load_model(TrainConfig(model="org/my-tiny"))
    assert model2.finetune_info.path == tiny_model
    assert reg.model_path("org/my-tiny") == str(tiny_model)


def test_hf_cache_models_listed(home, tiny_model, tmp_path):
    rev = "abcdef0123456789abcdef0123456789abcdef01"
    snap = add_to_hf_cache(tiny_model, "someorg/tiny-llama", revision=rev)
    rows = {r["name"]: r for r in Registry().models()}
    assert set(rows) == {"tiny", "smollm2-135m", "someorg/tiny-llama"}
    assert (rows["smollm2-135m"]["source"], rows["smollm2-135m"]["exists"]) == ("embedded", True)
    hf = rows["someorg/tiny-llama"]
    assert (hf["source"], hf["path"], hf["model_type"], hf["exists"]) == ("hf-cache", str(snap), "llama", True)
    assert hf["size_bytes"] >= (tiny_model/"model.safetensors").stat().st_size
    assert rows["tiny"]["source"] == "builtin"
    assert Registry().model_path("someorg/tiny-llama") == str(snap)


def test_models_saved_in_home_are_listed(home, tiny_model):
    import shutil
    shutil.copytree(tiny_model, home/"models"/"saved")
    reg = Registry()
    assert [(r["name"], r["source"]) for r in reg.models()] == [("tiny", "builtin"), ("smollm2-135m", "embedded"), ("saved", "local")]
    assert reg.model_path("saved") == str(home/"models"/"saved")
    with pytest.raises(RegistryError, match="--force"):
        reg.add_model("saved", tiny_model)  # would shadow the saved model


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_traversal_and_odd_names_rejected(home, tiny_model, tmp_path, bad):
    reg = Registry()
    run = _run(tmp_path/"r")
    for call in (lambda: reg.add_model(bad, tiny_model), lambda: reg.add_dataset(bad, tiny_model), lambda: reg.add_run(run, name=bad)):
        with pytest.raises(RegistryError, match="Invalid .* name"):
            call()
    assert not (home/"registry").exists()  # nothing written anywhere
    assert resolve_dataset(bad) == bad


def test_good_names_accepted():
    for ok in ["a", "my-model", "org/name", "Qwen2.5-0.5B-Instruct", "x_y.z"]:
        assert check_name(ok) == ok


def test_no_clobbering_without_force(home, tiny_model, tmp_path):
    reg = Registry()
    other = Path(__import__("shutil").copytree(tiny_model, tmp_path/"other"))
    reg.add_model("m", tiny_model)
    with pytest.raises(RegistryError) as e:
        reg.add_model("m", other)
    assert "--force" in str(e.value) and str(tiny_model) in str(e.value)
    assert reg.model_path("m") == str(tiny_model)  # unchanged
    reg.add_model("m", other, force=True)
    assert reg.model_path("m") == str(other)
    data = tmp_path/"d.jsonl"; data.write_text('{"text": "hi"}\n')
    reg.add_dataset("d", data)
    with pytest.raises(RegistryError, match="--force"):
        reg.add_dataset("d", tmp_path)
    run = _run(tmp_path/"r")
    reg.add_run(run)
    with pytest.raises(RegistryError, match="--force"):
        reg.add_run(run)


def test_bad_paths_rejected(home, tmp_path):
    reg = Registry()
    with pytest.raises(RegistryError, match="no config.json"):
        reg.add_model("m", tmp_path)
    with pytest.raises(RegistryError, match="does not exist"):
        reg.add_dataset("d", tmp_path/"missing.jsonl")
    with pytest.raises(RegistryError, match="not a run directory"):
        reg.add_run(tmp_path)
    with pytest.raises(RegistryError, match="built-in"):
        reg.add_model("tiny", tmp_path)


# --- datasets ----------------------------------------------------------------------------------------------------

def test_datasets_resolve(home, tmp_path):
    reg = Registry()
    f = tmp_path/"train.jsonl"; f.write_text('{"text": "a"}\n')
    row = reg.add_dataset("org/set", f)
    assert (row["format"], row["size_bytes"], row["exists"]) == ("jsonl", f.stat().st_size, True)
    reg.add_dataset("folder", tmp_path)
    assert [(d["name"], d["format"]) for d in reg.datasets()] == [("folder", "dir"), ("org/set", "jsonl")]
    assert resolve_dataset("org/set") == str(f) and isinstance(resolve_dataset("org/set"), str)
    assert resolve_dataset(str(f)) == str(f)
    assert resolve_dataset("hub-org/unknown") == "hub-org/unknown"
    assert reg.dataset_path("folder") == str(tmp_path)
    with pytest.raises(RegistryError, match="Did you mean 'folder'"):
        reg.dataset_path("fodler")


# --- runs --------------------------------------------------------------------------------------------------------

def test_runs_read_metrics(home, tmp_path):
    out = tmp_path/"runs"
    _run(out/"run-1", train=(3.0, 2.5, 2.1, 1.9), vals=((2, 2.6), (4, 2.4)))
    (out/"not-a-run").mkdir()
    rows = Registry().runs(out)
    assert [r["name"] for r in rows] == ["run-1"]
    r = rows[0]
    assert (r["model"], r["fine_tune_type"], r["steps"], r["train_loss"]) == ("tiny", "lora", 4, 1.9)
    assert (r["best_val_loss"], r["best_val_step"], r["last_val_loss"], r["adapters"]) == (2.4, 4, 2.4, True)
    assert r["created"] and r["path"] == str((out/"run-1").resolve()) and r["catalogued"] is False


def test_run_summary_tolerates_partial_and_missing(tmp_path):
    d = tmp_path/"r"; d.mkdir()
    (d/"metrics.jsonl").write_text('{"step": 1, "train_loss": 2.0}\nnot json\n{"step": 2, "train_loss": NaN}\n{"step": 3, "tra')
    s = run_summary(d)
    assert (s["steps"], s["train_loss"], s["best_val_loss"], s["model"]) == (2, 2.0, None, None)
    assert json.dumps(s)


def test_runs_default_dirs_catalogued_and_compare(home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run(tmp_path/"runs"/"here", lr=1e-4)                       # ./runs, the output_dir default
    _run(home/"runs"/"in-home", kind="dora", lr=3e-4, vals=())  # FINETUNE_HOME/runs
    far = _run(tmp_path/"far"/"away", kind="full", lr=0.002)
    reg = Registry()
    reg.add_run(far, name="far-run")
    names = {r["name"]: r for r in reg.runs()}
    assert set(names) == {"here", "in-home", "far-run"}
    assert names["far-run"]["catalogued"] and names["in-home"]["best_val_loss"] is None
    assert reg.run_path("far-run") == str(far.resolve())
    assert reg.run_path("in-home") == str((home/"runs"/"in-home").resolve())
    rows = reg.compare_runs(["here", "in-home", "far-run"])
    assert [(r["name"], r["fine_tune_type"], r["learning_rate"]) for r in rows] == [("here", "lora", 1e-4), ("in-home", "dora", 3e-4), ("far-run", "full", 0.002)]
    assert all("batch_size" not in r for r in rows)  # equal everywhere
    json.dumps(rows)
    with pytest.raises(RegistryError, match="No run named"):
        reg.run_path("nowhere")


# --- removing, storage -------------------------------------------------------------------------------------------

def test_removing(home, tiny_model, tmp_path):
    reg = Registry()
    reg.add_model("m", tiny_model)
    f = tmp_path/"d.jsonl"; f.write_text("{}\n")
    reg.add_dataset("d", f)
    run = _run(tmp_path/"elsewhere"/"r")
    reg.add_run(run)
    assert reg.remove_model("m")["path"] == str(tiny_model)
    assert reg.remove_dataset("d")["path"] == str(f)
    assert reg.remove_run("r")["path"] == str(run.resolve())
    assert tiny_model.is_dir() and f.exists() and run.is_dir()  # files stay
    assert [r["name"] for r in reg.models()] == ["tiny", "smollm2-135m"] and reg.datasets() == [] and reg.runs(tmp_path/"none") == []
    with pytest.raises(ModelError, match="Tried"):
        resolve_model("m")
    assert resolve_dataset("d") == "d"
    with pytest.raises(RegistryError, match="No model named 'm' is registered"):
        reg.remove_model("m")


def test_index_files_atomic_and_corrupt_reported(home, tiny_model):
    reg = Registry()
    for i in range(5): reg.add_model(f"m{i}", tiny_model)
    assert sorted(p.name for p in (home/"registry").iterdir()) == ["models.json"]  # no temp files left
    assert set(json.loads((home/"registry"/"models.json").read_text())["entries"]) == {f"m{i}" for i in range(5)}
    (home/"registry"/"models.json").write_text("{broken")
    with pytest.raises(RegistryError, match="not valid JSON"):
        reg.models()


def test_missing_registered_model_reported(home, tiny_model, tmp_path):
    import shutil
    d = Path(shutil.copytree(tiny_model, tmp_path/"m"))
    Registry().add_model("vanishing", d)
    shutil.rmtree(d)
    with pytest.raises(RegistryError, match="no longer holds a model"):
        resolve_model("vanishing")


def test_fresh_process_resolves_names(home, tiny_model, tmp_path):
    "Importing finetune.registry registers the resolver; names written by one process load in another."
    f = tmp_path/"d.jsonl"; f.write_text("{}\n")
    Registry().add_model("named", tiny_model)
    Registry().add_dataset("ds", f)
    code = textwrap.dedent("""
        import finetune.registry
        from finetune.models import resolve_model
        from finetune.data import resolve_dataset
        print(resolve_model("named")); print(resolve_dataset("ds"))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(tiny_model), str(f)]
