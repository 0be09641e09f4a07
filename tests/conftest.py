import os, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

@pytest.fixture(autouse=True)
def seeded():
    "Every test starts from the same random state (MLX, NumPy, random): none depends on what ran before it."
    import random
    import numpy as np
    import finetune  # noqa: F401  (loads the BLAS before mlx)
    import mlx.core as mx
    random.seed(0); np.random.seed(0); mx.random.seed(0)

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
