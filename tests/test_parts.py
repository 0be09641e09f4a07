"A training batch computed in parts at once on CPU streams (finetune.train): the same run as whole batches, at the default threshold."
import json, os
import pytest
import finetune  # noqa: F401  (loads the BLAS before mlx)
import mlx.core as mx
from finetune.callbacks import Callback, Progress
from finetune.config import TrainConfig
from finetune.train import SPLIT_MIN_POSITIONS, STREAMS_ENV, Trainer

WORDS = "red green blue one two three four five six seven eight nine ten".split()
pytestmark = pytest.mark.skipif(mx.default_device() != mx.cpu, reason="streams split batches on the CPU backend only")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    "A tiny model and rows of 20-120 words, so that batches of 4 pass the smallest batch the trainer splits."
    root = tmp_path_factory.mktemp("parts")
    os.environ["FINETUNE_HOME"] = str(root/"home")
    from finetune.tiny import make_tiny_model
    d = root/"data"; d.mkdir()
    rows = [{"prompt": " ".join(WORDS[(i * k) % 13] for k in range(20 + (i * 37) % 100)) + "?", "completion": f"The answer is {WORDS[(i * 3) % 13]}."}
            for i in range(30)]
    (d/"train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:24]))
    (d/"valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[24:]))
    return dict(root=root, model=make_tiny_model(root/"tiny"), data=d)


def run(env, streams, name, callbacks=(), resume=None, **kw):
    os.environ[STREAMS_ENV] = str(streams)
    try:
        c = TrainConfig.from_dict(dict(model=str(env["model"]), data=str(env["data"]), lora_rank=8, learning_rate=3e-3, batch_size=4, iters=6,
                                       eval_every=100, save_every=100, max_seq_length=512, output_dir=str(env["root"]/"runs"), run_name=name) | kw)
        t = Trainer(c, callbacks=[Progress(enabled=False), *callbacks])
        t.fit(resume=resume)
        return t
    finally: del os.environ[STREAMS_ENV]


def rows(t, key): return [r[key] for r in t.history["train"]]


@pytest.mark.parametrize("kw", [{}, {"pack": True, "grad_accumulation": 2}, {"lora_dropout": 0.1}], ids=["plain", "packed-accumulated", "dropout"])
def test_parts_train_as_whole_batches(env, kw):
    whole, parts = run(env, 1, f"whole-{len(kw)}", **kw), run(env, 2, f"parts-{len(kw)}", **kw)
    assert (whole.parts, parts.parts) == (1, 2)
    assert min(rows(whole, "n_padded")) >= SPLIT_MIN_POSITIONS  # the default threshold: every batch here is split
    assert rows(parts, "n_tokens") == rows(whole, "n_tokens")
    assert sum(rows(parts, "n_padded")) < sum(rows(whole, "n_padded"))  # each part padded to its own longest row
    if "lora_dropout" in kw:  # other dropout masks: the loss differs, but stays as close as another seed's
        assert all(abs(a - b) < 0.05 * b for a, b in zip(rows(parts, "train_loss")[:1], rows(whole, "train_loss")[:1]))
    else:
        for a, b in zip(rows(parts, "train_loss"), rows(whole, "train_loss")): assert abs(a - b) <= 1e-4 * abs(b) + 1e-5, (a, b)
        for a, b in zip(rows(parts, "grad_norm"), rows(whole, "grad_norm")): assert abs(a - b) <= 1e-3 * abs(b) + 1e-6, (a, b)


class StopAt(Callback):
    def __init__(self, at): self.at = at
    def after_step(self, m):
        if m["step"] == self.at: self.trainer.stop()


def test_resume_in_parts_matches(env):
    "Exact resume holds with parts and dropout: both random draws of a step come from the step's seed, in order."
    full = run(env, 2, "full", lora_dropout=0.1)
    run(env, 2, "cut", [StopAt(3)], lora_dropout=0.1)
    resumed = run(env, 2, "cut", resume=True, lora_dropout=0.1)
    assert rows(resumed, "step")[-3:] == [4, 5, 6]
    for a, b in zip(rows(resumed, "train_loss")[-3:], rows(full, "train_loss")[3:]): assert abs(a - b) <= 1e-5 * abs(b), (a, b)


THREADS = """
import os, sys, threading
from finetune.train import Trainer
from finetune.callbacks import Progress
def go(name, out):
    try:
        t = Trainer(dict(model=sys.argv[1], data=sys.argv[2], batch_size=4, iters=2, max_seq_length=512, output_dir=sys.argv[3], run_name=name,
                         eval_every=100, save_every=100), callbacks=[Progress(enabled=False)])
        t.fit(); out.append((name, t.parts, len(t.history["train"])))
    except Exception as e: out.append((name, repr(e)))
out = []
go("main", out)
for name in ("thread-1", "thread-2"):  # as a notebook's Train button does: each run in a new thread
    th = threading.Thread(target=go, args=(name, out)); th.start(); th.join()
print(out, flush=True)
os._exit(0)  # (MLX used from other threads may abort at interpreter exit; not what this checks)
"""


def test_parts_in_new_threads(env):
    "Runs in threads of their own, one after another, each split in parts: MLX streams belong to the thread that made them."
    import subprocess, sys
    r = subprocess.run([sys.executable, "-c", THREADS, str(env["model"]), str(env["data"]), str(env["root"]/"thread-runs")],
                       capture_output=True, text=True, env={**os.environ, STREAMS_ENV: "2"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == str([("main", 2, 2), ("thread-1", 2, 2), ("thread-2", 2, 2)]), r.stdout + r.stderr[-3000:]
