"Training on finetune's own threads: a script that trains from the notebook panel and exits at once ends cleanly, and runs reuse one thread."
import json, os, subprocess, sys
import pytest

SCRIPT = r"""
import json, sys, threading
from finetune.config import TrainConfig
from finetune.widgets import TrainPanel
c = TrainConfig.from_dict(dict(model=sys.argv[1], data=sys.argv[2], output_dir=sys.argv[3], batch_size=2, learning_rate=1e-3, iters=4,
                               eval_every=2, save_every=1000, max_seq_length=32))
panel, seen = TrainPanel(c, samples=0), []
for i in range(3):
    assert panel.train() and panel.wait(300), panel.status.value
    assert panel.error is None and panel.trainer.step == 4, (panel.error, panel.status.value)
    seen.append((panel.thread.thread.ident, threading.active_count()))
print(json.dumps(seen), flush=True)
"""  # and nothing after: the interpreter shuts down right after the last run's thread finished its call


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("threads")
    data = root/"data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"copy {w}", "completion": w}) + "\n" for w in "red green blue one two three four".split() * 3))
    return root, tiny_model, data


@pytest.mark.parametrize("attempt", range(3))
def test_panel_runs_share_a_thread_and_exit_cleanly(setup, attempt):
    """The runs of a panel take turns on one thread that stays (its MLX streams and compiled steps with it): the count of
    threads does not grow run after run, and the process exits with 0 right after training. When each run had a thread of
    its own, MLX freed the ended thread's compiled-function cache while Python was shutting down about one time in two,
    and the process aborted (exit code 134, "terminate called without an active exception")."""
    root, model, data = setup
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(model), str(data), str(root/f"runs-{attempt}")], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "FINETUNE_HOME": str(root/"home")})
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    assert "terminate called" not in r.stderr, r.stderr[-3000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert len({ident for ident, _ in seen}) == 1, seen        # one thread for every run
    assert len({count for _, count in seen}) == 1, seen        # and no thread left behind by a run
