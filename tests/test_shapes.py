"Batches rounded up to shape multiples (finetune.batching.pad_multiples, a GPU's default): the same run, far fewer traces of the step."
import json, os
import pytest
import finetune  # noqa: F401  (loads the BLAS before mlx)
import finetune.train as train
from finetune.batching import PAD_ENV
from finetune.callbacks import Progress
from finetune.config import TrainConfig

WORDS = "red green blue one two three four five six seven eight nine ten".split()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    "A tiny model and 200 chat rows of 3-90 words a side: every batch of 4 has a padded length and trained count of its own."
    root = tmp_path_factory.mktemp("shapes")
    os.environ["FINETUNE_HOME"] = str(root/"home")
    from finetune.tiny import make_tiny_model
    d = root/"data"; d.mkdir()
    say = lambda i, n: " ".join(WORDS[(i * k + n) % 13] for k in range(n))  # noqa: E731
    rows = [{"messages": [{"role": "user", "content": say(i, 3 + (i * 37) % 88)}, {"role": "assistant", "content": say(i + 1, 3 + (i * 53) % 61)}]}
            for i in range(200)]
    (d/"train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dict(root=root, model=make_tiny_model(root/"tiny"), data=d)


def run(env, multiples, monkeypatch):
    "Train 40 steps (most of an epoch) with `FINETUNE_PAD_MULTIPLE=multiples` on one stream; the trainer and how often its step was traced."
    traced = []
    summed = train._summed  # called only while mx.compile traces the step: once per new set of input shapes
    monkeypatch.setattr(train, "_summed", lambda *a, **k: traced.append(1) or summed(*a, **k))
    monkeypatch.setenv(PAD_ENV, multiples)
    monkeypatch.setenv(train.STREAMS_ENV, "1")
    c = TrainConfig.from_dict(dict(model=str(env["model"]), data=str(env["data"]), lora_rank=8, learning_rate=3e-3, batch_size=4, iters=40,
                                   eval_every=1000, save_every=1000, max_seq_length=512, output_dir=str(env["root"]/"runs"), run_name=f"m{multiples}"))
    t = train.Trainer(c, callbacks=[Progress(enabled=False)])
    t.fit()
    return t, len(traced)


def test_rounded_shapes_train_alike_with_fewer_traces(env, monkeypatch):
    exact, n_exact = run(env, "1", monkeypatch)
    rounded, n_rounded = run(env, "32,256", monkeypatch)
    rows = lambda t, k: [r[k] for r in t.history["train"]]  # noqa: E731
    assert rows(rounded, "n_tokens") == rows(exact, "n_tokens")  # the same batches, the same trained tokens
    assert all(n % 32 == 0 for n in rows(rounded, "n_padded")) and sum(rows(rounded, "n_padded")) > sum(rows(exact, "n_padded"))
    for a, b in zip(rows(rounded, "train_loss"), rows(exact, "train_loss")):
        assert abs(a - b) <= 1e-3 * abs(b), (a, b)  # padding with weight 0 changes nothing but float rounding
    assert n_exact >= 35, n_exact  # every step had shapes of its own (45 here: 40 steps)
    assert n_rounded <= n_exact // 2, (n_rounded, n_exact)  # about half the steps reused shapes already compiled (19 here)
