"The README's main job, as a person runs it: `ft quickstart` fine-tunes SmolLM2-135M-Instruct to answer in strict JSON (held-out ~0% -> >= 90%)."
import re, subprocess
from pathlib import Path


def test_ft_quickstart_learns_the_task(ft_exe, ft_env, tmp_path):
    env = {k: v for k, v in ft_env.items() if k != "FINETUNE_QUICKSTART_ITERS"}  # the full run a person gets
    r = subprocess.run([ft_exe, "quickstart", "--limit", "30"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    out = r.stdout
    assert "BLAS" in out and "before:" in out and "after:" in out
    m = re.search(r"before (\d+)%, after (\d+)%; held-out loss ([\d.]+) -> ([\d.]+)  \(trained (\d+) steps", out)
    assert m, out[-2000:]
    before, after, loss_before, loss_after, steps = int(m[1]), int(m[2]), float(m[3]), float(m[4]), int(m[5])
    assert steps == 30 and before <= 5 and after >= 90, out[-2000:]
    assert loss_after < loss_before / 4, out[-2000:]
    assert any((Path(env["FINETUNE_HOME"])/"gguf").glob("*/model.safetensors"))  # SmolLM2 converted once, into the home
    assert list(tmp_path.glob("runs/*/adapters.safetensors"))  # the run folder lands where the user is
