"Foundation: the ft executable, the BLAS loader, config files and the tiny-model factory, driven as a user would."
import json, platform, subprocess, sys
from pathlib import Path
import pytest
from conftest import ROOT


def run(args, env, check=True):
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    if check: assert r.returncode == 0, r.stderr + r.stdout
    return r


def test_ft_help_lists_commands(ft_exe, ft_env):
    out = run([ft_exe, "--help"], ft_env).stdout
    for cmd in ("info", "make-tiny", "quickstart"): assert cmd in out


def expected_backend() -> str:
    "The backend MLX should report here: metal on Apple silicon, cpu on Linux (cuda with mlx[cuda])."
    import finetune  # noqa: F401  (loads the BLAS before mlx)
    import mlx.core as mx
    return "cpu" if mx.default_device().type == mx.cpu else "metal" if sys.platform == "darwin" else "cuda"


def test_ft_info_reports_blas(ft_exe, ft_env):
    fast = json.loads(run([ft_exe, "info", "--json"], ft_env).stdout)
    slow = json.loads(run([ft_exe, "info", "--json"], {**ft_env, "FINETUNE_BLAS": "off"}).stdout)
    assert fast["backend"] == expected_backend() and fast["memory_total_gb"] > 0
    if sys.platform == "darwin":  # MLX uses Accelerate; there is nothing to load or turn off
        assert "Accelerate" in fast["blas"] and slow["blas"] == fast["blas"] and fast["blas_path"] is None
        return
    assert "reference" in slow["blas"] and slow["blas_path"] is None
    import finetune
    if not finetune.candidates() and platform.machine() != "x86_64":  # on x86-64 the mkl wheel is a dependency
        pytest.skip("no optimized BLAS installed (pip install mkl, or apt install libopenblas0)")
    assert "reference" not in fast["blas"] and Path(fast["blas_path"]).exists()
    if fast["backend"] != "cpu": return  # matrix products run on the GPU, not through the BLAS
    # The optimized BLAS is markedly faster; a loose bound so a busy machine does not flake (the real ratio is ~20x).
    assert fast["matmul_gflops"] > 3 * slow["matmul_gflops"], (fast["matmul_gflops"], slow["matmul_gflops"])


def test_blas_results_unchanged(ft_env):
    code = ("import json, finetune, mlx.core as mx; mx.random.seed(1); a=mx.random.normal((300,200)); b=mx.random.normal((200,100));"
            "x=mx.random.normal((64,64)); print(json.dumps({'mm': (a@b).tolist(), 'inv': mx.linalg.inv(x + 8*mx.eye(64), stream=mx.cpu).tolist()}))")
    on = json.loads(run([sys.executable, "-c", code], ft_env).stdout)
    off = json.loads(run([sys.executable, "-c", code], {**ft_env, "FINETUNE_BLAS": "off"}).stdout)
    import numpy as np
    np.testing.assert_allclose(np.array(on["mm"]), np.array(off["mm"]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.array(on["inv"]), np.array(off["inv"]), rtol=1e-4, atol=1e-5)


def test_bad_blas_path_falls_back(ft_exe, ft_env):
    r = json.loads(run([ft_exe, "info", "--json", "--no-measure"], {**ft_env, "FINETUNE_BLAS": "/nonexistent/libblas.so"}).stdout)
    assert ("Accelerate" if sys.platform == "darwin" else "reference") in r["blas"], r["blas"]


def test_make_tiny_and_errors(ft_exe, ft_env, tmp_path):
    run([ft_exe, "make-tiny", str(tmp_path/"m")], ft_env)
    import mlx_lm
    model, tok = mlx_lm.load(str(tmp_path/"m"))
    assert tok.eos_token == "<|im_end|>"
    r = run([ft_exe, "make-tiny", str(tmp_path/"m")], ft_env, check=False)
    assert r.returncode == 1 and "not empty" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("kind", ["profiles", "models"])
def test_config_files_are_valid(kind):
    from finetune.config import load_config
    files = sorted((ROOT/"configs"/kind).glob("*.yaml"))
    assert len(files) == 4
    for f in files:
        c = load_config(**({"profile": f.stem} if kind == "profiles" else {"preset": f.stem}))
        if kind == "profiles": assert c.sources["train_on"] == f"profile {f.stem}"


def test_config_error_names_field_and_file(tmp_path):
    from finetune.config import load_config
    from finetune.errors import ConfigError
    f = tmp_path/"run.yaml"
    f.write_text("learning_rate: fast\n")
    with pytest.raises(ConfigError, match=r"Field 'learning_rate' must be float, got str 'fast' \(from .*run.yaml\)"): load_config(f)
    f.write_text("lerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="Did you mean 'learning_rate'"): load_config(f)
