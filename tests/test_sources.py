"The real `ft` executable on stores laid out as Ollama and LM Studio lay them out: `ft model add --from-ollama/--from-lmstudio`, `ft model scan`."
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.sources import ollama_blob, write_ollama_model

FT = str(Path(sys.executable).parent / "ft")
CHATML = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
PARAMS = {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.2}


@pytest.fixture
def w(tmp_path):
    "An Ollama store (smol:latest with template, params and system prompt; smol:1b bare), an LM Studio folder, a private home."
    ollama, lms = tmp_path / "ollama", tmp_path / "lmstudio"
    manifest = write_ollama_model(ollama, "smol", template=CHATML, params=PARAMS, system="You are a helpful assistant.")
    write_ollama_model(ollama, "smol:1b", weights=b"GGUF" + bytes(100))
    repo = lms / "lmstudio-community" / "SmolLM2-135M-Instruct-GGUF"
    repo.mkdir(parents=True)
    for q in ("Q4_K_M", "Q8_0"): (repo / f"SmolLM2-135M-Instruct-{q}.gguf").write_bytes(b"GGUF" + bytes(28))
    (repo / "mmproj-SmolLM2-f16.gguf").write_bytes(b"GGUF" + bytes(4))
    env = {**os.environ, "FINETUNE_HOME": str(tmp_path / "home"), "OLLAMA_MODELS": str(ollama), "HOME": str(tmp_path / "user"),
           "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("LMSTUDIO_MODELS", None)
    blob = ollama_blob(ollama, json.loads(manifest.read_text())["layers"][0]["digest"])
    return dict(dir=tmp_path, env=env, ollama=ollama, lms=lms, repo=repo, blob=blob, home=tmp_path / "home")


def ft(w, *args, ok=None, **env):
    "Run `ft ARGS` (with extra environment `env`; a None value unsets one); with ok=True/False assert it succeeded/failed."
    e = {k: v for k, v in {**w["env"], **env}.items() if v is not None}
    r = subprocess.run([FT, *map(str, args)], cwd=w["dir"], env=e, capture_output=True, text=True, timeout=120)
    if ok is True: assert r.returncode == 0, f"ft {' '.join(map(str, args))} failed:\n{r.stdout}\n{r.stderr}"
    if ok is False:
        assert r.returncode != 0, r.stdout
        assert "Traceback" not in r.stderr + r.stdout, r.stderr
        assert r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) <= 3, r.stderr
    return r


def entry(w, name):
    return json.loads((w["home"] / "registry" / "models.json").read_text())["entries"][name]


def test_add_from_ollama(w, monkeypatch):
    r = ft(w, "model", "add", "mine", "--from-ollama", "smol:latest", ok=True)
    assert r.stdout.strip() == f"Registered model mine -> {w['blob']} (ollama smol:latest)"
    e = entry(w, "mine")
    assert (e["path"], e["source"], e["ref"], e["format"]) == (str(w["blob"]), "ollama", "smol:latest", "gguf")
    assert (e["template"], e["params"], e["system"]) == (CHATML, PARAMS, "You are a helpful assistant.")
    assert sorted(p.name for p in w["home"].rglob("*") if p.is_file()) == ["models.json"]  # read in place, nothing copied
    rows = {r["name"]: r for r in json.loads(ft(w, "model", "list", "--json", ok=True).stdout)}
    assert (rows["mine"]["source"], rows["mine"]["path"], rows["mine"]["exists"], rows["mine"]["size_bytes"]) == ("ollama", str(w["blob"]), True, 64)
    monkeypatch.setenv("FINETUNE_HOME", str(w["home"]))
    from finetune.models import registered_model
    from finetune.registry import Registry
    assert registered_model("mine") == w["blob"] and Registry().model_path("mine") == str(w["blob"])
    assert "already exists" in ft(w, "model", "add", "mine", "--from-ollama", "smol:1b", ok=False).stderr
    ft(w, "model", "add", "mine", "--from-ollama", "smol:1b", "--force", ok=True)
    assert entry(w, "mine")["ref"] == "smol:1b" and "template" not in entry(w, "mine")
    ft(w, "model", "add", "explicit", "--from-ollama", "smol", "--ollama-dir", w["ollama"], ok=True, OLLAMA_MODELS=None)
    assert entry(w, "explicit")["path"] == str(w["blob"])


def test_ollama_errors(w):
    r = ft(w, "model", "add", "x", "--from-ollama", "smol:2b", ok=False)
    assert "has no model 'smol:2b'. Did you mean 'smol:1b' or 'smol:latest'?" in r.stderr and "ollama pull smol:2b" in r.stderr
    r = ft(w, "model", "add", "x", "--from-ollama", "smol", ok=False, OLLAMA_MODELS=str(w["dir"] / "nowhere"))
    assert f"No Ollama model store at '{w['dir'] / 'nowhere'}' (OLLAMA_MODELS)" in r.stderr
    if not Path("/usr/share/ollama/.ollama/models/manifests").is_dir():
        r = ft(w, "model", "add", "x", "--from-ollama", "smol", ok=False, OLLAMA_MODELS=None)
        assert f"OLLAMA_MODELS is not set, and '{w['dir'] / 'user' / '.ollama' / 'models'}'" in r.stderr and "--ollama-dir" in r.stderr
    w["blob"].unlink()
    r = ft(w, "model", "add", "x", "--from-ollama", "smol", ok=False)
    assert f"Ollama's blob '{w['blob']}' (application/vnd.ollama.image.model) of model 'smol:latest' is missing" in r.stderr
    assert "ollama pull smol:latest" in r.stderr
    assert "give one model, not a path and an Ollama model" in ft(w, "model", "add", "x", "m", "--from-ollama", "smol", ok=False).stderr


def test_add_from_lmstudio(w):
    r = ft(w, "model", "add", "s", "--from-lmstudio", "SmolLM2-135M-Instruct-GGUF", "--lmstudio-dir", w["lms"], ok=False)
    assert "holds several models: SmolLM2-135M-Instruct-Q4_K_M.gguf, SmolLM2-135M-Instruct-Q8_0.gguf" in r.stderr and "--file" in r.stderr
    ft(w, "model", "add", "s", "--from-lmstudio", "SmolLM2-135M-Instruct-GGUF", "--file", "Q8_0", "--lmstudio-dir", w["lms"], ok=True)
    assert (entry(w, "s")["path"], entry(w, "s")["source"]) == (str(w["repo"] / "SmolLM2-135M-Instruct-Q8_0.gguf"), "lmstudio")
    ft(w, "model", "add", "s4", "--from-lmstudio", "lmstudio-community/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_K_M.gguf",
       ok=True, LMSTUDIO_MODELS=str(w["lms"]))
    assert entry(w, "s4")["path"] == str(w["repo"] / "SmolLM2-135M-Instruct-Q4_K_M.gguf")
    (w["dir"] / "user" / ".lmstudio").mkdir(parents=True)
    (w["dir"] / "user" / ".lmstudio" / "models").symlink_to(w["lms"])
    ft(w, "model", "add", "s8", "--from-lmstudio", "SmolLM2-135M-Instruct-Q8_0.gguf", ok=True)  # found in ~/.lmstudio/models
    assert entry(w, "s8")["path"] == str(w["repo"] / "SmolLM2-135M-Instruct-Q8_0.gguf")
    r = ft(w, "model", "add", "x", "--from-lmstudio", "SmolLM2-135M-Instruct-GUF", ok=False)
    assert "Did you mean 'lmstudio-community/SmolLM2-135M-Instruct-GGUF'" in r.stderr


def test_scan(w):
    rows = json.loads(ft(w, "model", "scan", "--json", "--lmstudio-dir", w["lms"], ok=True).stdout)
    assert [(r["name"], r["source"]) for r in rows] == [
        ("smol:1b", "ollama"), ("smol:latest", "ollama"),
        ("lmstudio-community/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_K_M.gguf", "lmstudio"),
        ("lmstudio-community/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q8_0.gguf", "lmstudio")]
    assert rows[1]["path"] == str(w["blob"])
    assert "smol:latest" in ft(w, "model", "scan", ok=True).stdout  # no LM Studio folder in this HOME: skipped
    assert "No LM Studio models folder at" in ft(w, "model", "scan", "--lmstudio-dir", w["dir"] / "nowhere", ok=False).stderr
