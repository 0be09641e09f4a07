"The wheel: built from the sources, installed into a fresh venv outside the checkout, it finds its configs and examples and runs."
import json, os, shutil, subprocess, sys, sysconfig
from pathlib import Path
import pytest
from conftest import ROOT

CHECK = """
import json, sys
from pathlib import Path
import finetune
from finetune.config import configs_dir, list_presets, list_profiles, load_config
from finetune.quickstart import quickstart_config
from finetune.widgets import examples_dir
chat, qwen, qs = load_config(profile="chat"), load_config(model="Qwen/Qwen2.5-0.5B"), quickstart_config(iters=2)
print(json.dumps(dict(file=finetune.__file__, configs=str(configs_dir()), profiles=list_profiles(), presets=list_presets(),
                      chat=[chat.data_format, chat.sources["data_format"]], qwen=[qwen.sources["lora_modules"], qwen.lora_modules],
                      quickstart_data=qs.data, examples=str(examples_dir()))))
"""


def _copy_sources(dest: Path) -> Path:
    "The files a wheel is built from, copied (a build writes build/ and *.egg-info next to them, not into the checkout)."
    keep = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for name in ("pyproject.toml", "README.md"): shutil.copy2(ROOT/name, dest/name)
    for name in ("finetune", "configs", "examples"): shutil.copytree(ROOT/name, dest/name, ignore=keep)
    return dest


def _run(args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, args))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    "A venv outside the checkout with the freshly built wheel installed, borrowing the dependencies already installed here."
    tmp = tmp_path_factory.mktemp("wheel")
    (tmp/"src").mkdir()
    src = _copy_sources(tmp/"src")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(tmp/"dist"), str(src)])
    wheel, = (tmp/"dist").glob("finetune-*.whl")
    venv = tmp/"venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv/"bin"/"python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # The dependencies: this environment's site-packages as a plain path entry (its .pth files, among them the editable
    # finetune's finder, are not run), after the venv's own site-packages where the wheel goes.
    (site/"borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)])
    work = tmp/"work"; work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FINETUNE_CONFIGS", "VIRTUAL_ENV")}
    env.update(FINETUNE_HOME=str(tmp/"home"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    mkl = sorted(Path(sys.prefix, "lib").glob("libmkl_rt.so*"))  # the venv's prefix lacks the mkl wheel's library: point at ours
    if mkl: env["FINETUNE_BLAS"] = str(mkl[0])
    return dict(venv=venv, py=py, site=site, wheel=wheel, work=work, env=env)


def test_wheel_ships_configs_and_examples(installed):
    import zipfile
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    files = [p.relative_to(ROOT) for d in ("configs", "examples") for p in (ROOT/d).rglob("*") if p.is_file()]
    files = [f.as_posix() for f in files if not any(part.startswith(".") or part == "__pycache__" for part in f.parts)]
    assert len(files) >= 15 and "examples/datasets/quickstart/train.jsonl" in files
    for f in files: assert f"finetune/{f}" in names, f"{f} is not in the wheel: widen the package-data globs in pyproject.toml"


def test_installed_wheel_finds_its_files(installed):
    r = _run([str(installed["py"]), "-c", CHECK], cwd=installed["work"], env=installed["env"])
    got = json.loads(r.stdout.strip().splitlines()[-1])
    pkg = installed["site"]/"finetune"
    assert Path(got["file"]).resolve() == (pkg/"__init__.py").resolve(), got["file"]  # the wheel, not the checkout's editable copy
    assert Path(got["configs"]).resolve() == (pkg/"configs").resolve()
    assert got["profiles"] == ["chat", "code", "domain", "instruction"] and got["presets"] == ["llama", "mistral", "phi", "qwen"]
    assert got["chat"] == ["chat", "profile chat"]
    assert got["qwen"][0] == "preset qwen" and got["qwen"][1]
    data = Path(got["quickstart_data"])
    assert data.exists() and data.resolve().is_relative_to((pkg/"examples"/"datasets").resolve()), data  # configs/quickstart.yaml's data, shipped
    assert Path(got["examples"]).resolve() == (pkg/"examples"/"datasets").resolve()
    assert str(ROOT) not in r.stdout


QUICKSTART = """
import json
from finetune.quickstart import run_quickstart
r = run_quickstart(iters=2, limit=2, show=1, model="tiny")
print(json.dumps(r))
"""


def test_installed_ft_quickstart(installed):
    "`ft` runs from the wheel, and the quickstart trains and scores on the data the wheel ships."
    ft, cwd, env = str(installed["venv"]/"bin"/"ft"), installed["work"], installed["env"]
    help_ = _run([ft, "quickstart", "--help"], cwd=cwd, env=env).stdout
    assert "--iters" in help_ and "--limit" in help_
    # The quickstart's own model is a real 135M-parameter one (about two minutes even for 2 steps, and run in full by
    # test_quickstart.py); here the same code path runs on the demo model `tiny`: the wheel's config, data and trainer.
    r = _run([str(installed["py"]), "-c", QUICKSTART], cwd=cwd, env=env)
    got = json.loads(r.stdout.strip().splitlines()[-1])
    run = cwd/got["run_dir"]  # relative to the working directory: runs land where the user is, not in the package
    assert got["steps"] == 2 and run.parent == cwd/"runs", got
    assert (run/"adapters.safetensors").is_file() and (run/"evaluation.json").is_file()
    assert str(installed["site"]/"finetune"/"examples"/"datasets") in r.stdout, r.stdout  # it trained on the wheel's data
