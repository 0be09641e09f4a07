"""Preference tuning through the Trainer on the tiny model: every method and kind of adapter learns, the metrics reach the
history and metrics.jsonl, the reference is the model as training began, a resumed DPO run matches an uninterrupted one,
gradient accumulation and two processes match one bigger batch, and data of the wrong kind is refused."""
import json, math, os, subprocess, sys
from pathlib import Path
import pytest
import finetune  # noqa: F401  (loads the BLAS before mlx)
from finetune.callbacks import Callback, Progress, read_metrics
from finetune.config import TrainConfig
from finetune.errors import DataError
from finetune.train import Trainer

WORDS = "red green blue one two three four five six seven eight nine ten".split()
QUIET = lambda: [Progress(enabled=False)]  # noqa: E731
losses = lambda h: [r["train_loss"] for r in h["train"]]  # noqa: E731


def write_pairs(d: Path, n_train=24, n_valid=8):
    "train.jsonl and valid.jsonl of pairs whose chosen response answers and whose rejected one declines."
    d.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": f"What is {WORDS[i % 13]} plus {WORDS[(i * 5) % 13]}?", "chosen": f"The answer is {WORDS[(i * 3) % 13]}.",
             "rejected": "I do not know."} for i in range(n_train + n_valid)]
    (d/"train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n_train]))
    (d/"valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[n_train:]))
    return d


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("pref")
    os.environ["FINETUNE_HOME"] = str(root/"home")
    from finetune.tiny import make_tiny_model
    return dict(root=root, model=make_tiny_model(root/"tiny"), data=write_pairs(root/"data"))


def cfg(env, **kw):
    base = dict(model=str(env["model"]), data=str(env["data"]), method="dpo", lora_rank=8, learning_rate=3e-3, batch_size=4, iters=12,
                eval_every=6, save_every=6, max_seq_length=64, output_dir=str(env["root"]/"runs"), run_name="run")
    return TrainConfig.from_dict({**base, **kw})


class StopAt(Callback):
    def __init__(self, at): self.at = at
    def after_step(self, m):
        if m["step"] == self.at: self.trainer.stop()


@pytest.fixture(scope="module")
def reference(env):
    "An uninterrupted 12-step DPO run (two epochs), with adapter dropout."
    t = Trainer(cfg(env, run_name="reference", lora_dropout=0.1), callbacks=QUIET())
    t.fit()
    return t


def test_dpo_learns_and_logs(env, reference):
    h = reference.history
    first, last = h["train"][0], h["train"][-1]
    assert abs(first["train_loss"] - math.log(2)) < 1e-4 and first["train_accuracy"] == 0.5  # the policy starts as the reference
    assert last["train_loss"] < 0.1 and last["train_margin"] > 1, last
    assert h["val"][-1]["val_accuracy"] == 1.0 and h["val"][-1]["val_margin"] > h["val"][0]["val_margin"] > 0, h["val"]
    assert last["train_rewards_chosen"] > last["train_rewards_rejected"]
    assert last["n_tokens"] > 0 and last["trained_tokens"] > last["n_tokens"]
    recs = read_metrics(reference.run_dir/"metrics.jsonl")
    train = [r for r in recs if r["event"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 13))
    assert {"train_accuracy", "train_margin", "train_rewards_chosen", "train_rewards_rejected"} <= set(train[-1])
    assert {"val_accuracy", "val_margin", "val_rewards_chosen", "val_rewards_rejected"} <= set(next(r for r in recs if r["event"] == "val"))
    assert TrainConfig.from_yaml(reference.run_dir/"config.yaml").method == "dpo"


def test_reference_is_the_base_without_a_copy(env, reference):
    "Fresh LoRA adapters: the reference is the base model with the adapters switched off, whatever the adapters learnt."
    import mlx.core as mx
    from finetune.models import load_model
    obj = reference.objective
    assert obj.reference.adapters_off and obj.reference.snapshot is None
    base, _ = load_model(str(env["model"]))
    x = mx.array([reference.train_data[0].chosen.tokens])
    with obj.reference(reference.model): ref = reference.model(x)
    assert mx.abs(ref - base(x)).max().item() < 1e-4
    assert mx.abs(reference.model(x) - base(x)).max().item() > 1e-2  # the trained policy is elsewhere


def test_dpo_after_sft_compares_with_the_sft_model(env):
    "DPO on a model that already has (SFT) adapters: the reference is that model, so the first loss is log 2 again."
    from finetune.models import load_model
    sft = Trainer(cfg(env, method="sft", run_name="sft", iters=4, eval_every=100), callbacks=QUIET())
    sft.fit()
    assert sft.data.format == "preference" and sft.train_data.sides == 1  # SFT trains on the chosen responses
    model, tok = load_model(str(env["model"]), adapter_path=sft.run_dir)
    t = Trainer(cfg(env, run_name="dpo-after-sft", iters=3, eval_every=100), model=model, tokenizer=tok, callbacks=QUIET())
    h = t.fit()
    assert not t.objective.reference.adapters_off
    assert abs(h["train"][0]["train_loss"] - math.log(2)) < 1e-4 and h["train"][-1]["train_loss"] < h["train"][0]["train_loss"]


@pytest.mark.parametrize("kw", [dict(fine_tune_type="dora"), dict(fine_tune_type="full", learning_rate=1e-3),
                                dict(quantize_bits=4, quantize_group_size=32), dict(pack=True), dict(batch_size=2, grad_accumulation=2),
                                dict(grad_checkpoint=True),
                                dict(dpo_loss="ipo"),
                                dict(method="orpo"), dict(method="simpo"), dict(method="kto")], ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_methods_and_adapters_learn(env, kw):
    name = "m-" + "-".join(f"{k}={v}" for k, v in kw.items())
    t = Trainer(cfg(env, run_name=name, iters=6, eval_every=100, save_every=100, **kw), callbacks=QUIET())
    h = t.fit()
    ls = losses(h)
    assert ls[-1] < 0.7 * ls[0], ls  # 0.01-0.4 of the first measured
    assert h["val"][-1]["val_accuracy"] >= 0.9 and h["val"][-1]["val_margin"] > 0, h["val"]
    assert t.objective.name == kw.get("method", "dpo")
    if kw.get("fine_tune_type") == "full": assert t.objective.reference.snapshot  # a frozen copy of the weights


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_resume_is_exact(env, reference, dropout):
    "Stopped in the second epoch and resumed in a new Trainer (the reference log-probabilities computed again): the same run."
    if dropout == 0.0:
        ref = Trainer(cfg(env, run_name="ref0"), callbacks=QUIET()); ref.fit()
    else: ref = reference
    c = cfg(env, run_name=f"resume{dropout}", lora_dropout=dropout)
    a = Trainer(c, callbacks=QUIET() + [StopAt(8)])
    a.fit()
    assert a.step == 8 and a.stopped and a.epoch == 1
    b = Trainer(c, callbacks=QUIET())
    h = b.fit(resume=True)
    assert b.step == 12 and len(losses(h)) == 12
    assert max(abs(x - y) for x, y in zip(losses(h), losses(ref.history))) < 1e-5
    for k in ("val_loss", "val_margin", "val_accuracy"):
        assert max(abs(x[k] - y[k]) for x, y in zip(h["val"], ref.history["val"])) < 1e-5, k


def test_grad_accumulation_equals_one_batch(env, reference):
    "One DPO step accumulated over two halves of four pairs equals one step on all four: loss, metrics and new weights."
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten
    from finetune.batching import make_batch
    from finetune.models import attach_adapters, load_model
    from finetune.objectives import DPO
    from finetune.train import make_step
    ds = reference.train_data
    def step(groups):
        mx.random.seed(0)
        m, _ = load_model(str(env["model"])); attach_adapters(m, dict(lora_rank=4))
        obj = DPO(); obj.setup(m, fresh_adapters=True)
        micro, update = make_step(m, optim.SGD(learning_rate=0.5), obj.loss)
        acc = None
        for rows in groups: acc = micro(obj.prepare(m, make_batch(ds, rows, 64), ds), acc)
        loss, w, n, norm, extra = update(*acc)
        mx.eval(m.parameters(), loss, extra)
        return loss.item(), w.item(), {k: v.item() for k, v in extra.items()}, dict(tree_flatten(m.trainable_parameters()))
    l1, w1, e1, p1 = step([[[0], [1], [2], [3]]])
    l2, w2, e2, p2 = step([[[0], [1]], [[2], [3]]])
    assert (w1, w2) == (4, 4) and abs(l1 - l2) < 1e-5 and abs(l1 - math.log(2)) < 1e-5
    assert all(abs(e1[k] - e2[k]) < 1e-5 for k in e1) and set(e1) == {"rewards_chosen", "rewards_rejected", "margin", "accuracy"}
    assert max(mx.abs(p1[k] - p2[k]).max().item() for k in p1) < 1e-5
    assert max(mx.abs(v).max().item() for k, v in p1.items() if k.endswith("lora_b")) > 0  # the step did move the adapters


def test_wrong_data_is_refused(env, tmp_path):
    from test_train import write_data
    sft_rows = write_data(tmp_path/"sft")
    with pytest.raises(DataError) as e: Trainer(cfg(env, data=str(sft_rows), run_name="wrong"), callbacks=QUIET())
    assert "method 'dpo' trains on preference pairs, but the rows have no chosen or rejected column" in e.value.message
    assert "columns" in e.value.hint
    pairs = Trainer(cfg(env, run_name="pairs", iters=1), callbacks=QUIET()).data
    with pytest.raises(DataError, match="Method 'sft' trains on single examples, but the training data holds preference pairs"):
        Trainer(cfg(env, method="sft", run_name="wrong2"), data=pairs, callbacks=QUIET())


def test_two_processes_match_one_with_doubled_batch(env, tmp_path):
    "DPO data-parallel over two local processes (ring backend) follows one process with the doubled batch."
    from test_distributed import SCRIPT
    h1 = Trainer(cfg(env, run_name="dist-one", iters=4, eval_every=4, save_every=4), callbacks=QUIET()).fit()
    cfg(env, run_name="two", batch_size=2, iters=4, eval_every=4, save_every=4, output_dir=str(tmp_path/"runs")).to_yaml(tmp_path/"two.yaml")
    (tmp_path/"script.py").write_text(SCRIPT)
    launch = Path(sys.executable).parent/"mlx.launch"
    r = subprocess.run([str(launch), "-n", "2", "--backend", "ring", "--", sys.executable, str(tmp_path/"script.py"), str(tmp_path/"two.yaml"),
                        str(tmp_path/"two")], env={**os.environ, "FINETUNE_HOME": str(env["root"]/"home")}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    h2 = json.loads((tmp_path/"two.0.json").read_text())["history"]
    for k in ("train_loss", "train_margin", "train_accuracy"):
        assert max(abs(x[k] - y[k]) for x, y in zip(h1["train"], h2["train"])) < 1e-3, (k, h1["train"], h2["train"])
    for k in ("val_loss", "val_accuracy"): assert abs(h1["val"][-1][k] - h2["val"][-1][k]) < 1e-3, k


def test_live_plot_draws_accuracy_and_margin(reference):
    "The live plot (and a saved run's chart) adds an accuracy and a margin panel for a preference run, none for SFT."
    from finetune.liveplot import history_chart
    lp = history_chart(read_metrics(reference.run_dir/"metrics.jsonl"))
    assert set(lp.extra) == {"train_accuracy", "val_accuracy", "train_margin", "val_margin"}
    assert "accuracy</text>" in lp.svg and "margin</text>" in lp.svg
    sft = history_chart([{"event": "train", "step": s, "train_loss": 1 / s} for s in range(1, 4)])
    assert not sft.extra and "accuracy</text>" not in sft.svg


def test_ft_train_and_the_jobs_api_take_the_method(env, tmp_path):
    "`ft train --set method=dpo` trains DPO and prints the held-out accuracy; a server job's config passes the method and its options."
    from typer.testing import CliRunner
    from finetune.cli import app
    from finetune.config import load_config
    from finetune.errors import ConfigError
    from finetune.jobs import Roots, job_config
    sets = [f"model={env['model']}", f"data={env['data']}", "method=dpo", "beta=0.2", "iters=2", "eval_every=2", "max_seq_length=64",
            f"output_dir={tmp_path/'runs'}", "run_name=cli-dpo"]
    r = CliRunner().invoke(app, ["train", *sum((["--set", s] for s in sets), [])])
    assert r.exit_code == 0, r.output
    assert "val acc" in r.output
    c = TrainConfig.from_yaml(tmp_path/"runs"/"cli-dpo"/"config.yaml")
    assert (c.method, c.beta) == ("dpo", 0.2)
    roots = Roots(allow_dirs=[env["root"]], home=tmp_path/"home")
    d = job_config({"model": "tiny", "data": str(env["data"]), "method": "kto", "beta": 0.3}, roots)
    assert (load_config(**d).method, load_config(**d).beta) == ("kto", 0.3)
    with pytest.raises(ConfigError, match="must be one of"): job_config({"method": "ppo"}, roots)
    with pytest.raises(ConfigError, match="Label smoothing belongs to the sigmoid loss"):
        job_config({"method": "dpo", "dpo_loss": "ipo", "label_smoothing": 0.1}, roots)


def test_evaluate_run_scores_the_held_out_pairs(env, reference):
    "`evaluate_run` on a DPO run: the loss of the chosen answers, and the run's own preference metrics against the base."
    from finetune.evaluate import dataset_loss, evaluate_run
    ev = evaluate_run(reference.run_dir, limit=2, max_tokens=4, save=False)
    base, tuned, last = ev.summary["base"], ev.summary["tuned"], reference.history["val"][-1]
    assert (base["pref_accuracy"], base["pref_margin"]) == (0.5, 0.0) and abs(base["pref_loss"] - math.log(2)) < 1e-5, base
    assert abs(tuned["pref_accuracy"] - last["val_accuracy"]) < 1e-6 and abs(tuned["pref_margin"] - last["val_margin"]) < 1e-3, (tuned, last)
    assert abs(tuned["pref_loss"] - last["val_loss"]) < 1e-3 and tuned["prefers_chosen"] == 1.0, (tuned, base)
    valid = reference.valid_data.side(0)  # the chosen answers alone
    assert abs(tuned["loss"] - dataset_loss(reference.model, valid, 4, 64)["loss"]) < 1e-4
    assert len(ev.examples) == 2 and ev.examples[0]["reference"].startswith("The answer is")


@pytest.mark.parametrize("layout", ["hh", "orca", "instruction"])
def test_common_hub_layouts_train(env, tmp_path, layout):
    "Anthropic HH transcripts, Orca's system/question and instruction/input columns: pairs whose trained tokens are the replies."
    from finetune.data import prepare_data
    from finetune.models import load_model
    def row(i):
        q, good, bad = f"What is {WORDS[i % 13]} plus {WORDS[(i * 5) % 13]}?", f"The answer is {WORDS[(i * 3) % 13]}.", "I do not know."
        if layout == "hh": return {"chosen": f"\n\nHuman: {q}\n\nAssistant: {good}", "rejected": f"\n\nHuman: {q}\n\nAssistant: {bad}"}
        if layout == "orca": return {"system": "Answer briefly.", "question": q, "chosen": good, "rejected": bad}
        return {"instruction": q, "input": "", "chosen": good, "rejected": bad}
    d = tmp_path/layout; d.mkdir()
    (d/"train.jsonl").write_text("".join(json.dumps(row(i)) + "\n" for i in range(12)))
    _, tok = load_model(str(env["model"]))
    c = cfg(env, data=str(d), run_name=f"layout-{layout}", iters=4, eval_every=100, save_every=100)
    data = prepare_data(c, tok, quiet=True)
    pairs = data.train
    assert len(pairs) + len(data.valid or []) == 12 and pairs.sides == 2
    trained = lambda ex: tok.decode([t for t, m in zip(ex.tokens, ex.mask) if m])  # noqa: E731
    assert trained(pairs[0].chosen).startswith("The answer is") and trained(pairs[0].rejected).startswith("I do not know.")
    assert "What is" in tok.decode(pairs[0].chosen.tokens) and "Human:" not in tok.decode(pairs[0].chosen.tokens)
    h = Trainer(c, data=data, callbacks=QUIET()).fit()
    assert losses(h)[-1] < losses(h)[0]


def write_feedback(d: Path, n_train=24, n_valid=8):
    "train.jsonl and valid.jsonl of unpaired feedback (TRL's KTO layout): each prompt with one response, an answer labelled desirable or a refusal labelled undesirable, alternately."
    d.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": f"What is {WORDS[i % 13]} plus {WORDS[(i * 5) % 13]}?",
             "completion": f"The answer is {WORDS[(i * 3) % 13]}." if i % 2 == 0 else "I do not know.", "label": i % 2 == 0} for i in range(n_train + n_valid)]
    (d/"train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n_train]))
    (d/"valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[n_train:]))
    return d


@pytest.fixture(scope="module")
def unpaired(env):
    "An uninterrupted 12-step KTO run on unpaired feedback (two epochs)."
    env["feedback"] = write_feedback(env["root"]/"feedback")
    t = Trainer(cfg(env, data=str(env["feedback"]), method="kto", run_name="kto-unpaired"), callbacks=QUIET())
    t.fit()
    return t


def test_unpaired_kto_learns_and_logs(env, unpaired):
    "KTO on responses labelled true or false: it starts at loss 1/2 with every response on the reference point, and ends with the answers above it and the refusals below."
    h, t = unpaired.history, unpaired
    assert t.data.format == "feedback" and t.train_data.labels.tolist() == [True, False] * 12 and t.train_data.sides == 2
    assert t.parts == 1  # its reference point is a mean over the whole batch: never split into parts (KTO.whole_batch)
    first, last = h["train"][0], h["train"][-1]
    assert abs(first["train_loss"] - 0.5) < 1e-4 and first["train_accuracy"] == 0.5 and abs(first["train_kl"]) < 1e-4, first  # up to float rounding
    assert last["train_loss"] < 0.5 * first["train_loss"], losses(h)  # measured 0.03 of 0.5
    assert h["val"][-1]["val_accuracy"] >= 0.9 and h["val"][-1]["val_margin"] > 1, h["val"]
    recs = read_metrics(t.run_dir/"metrics.jsonl")
    assert {"train_accuracy", "train_margin", "train_kl"} <= set(next(r for r in recs if r["event"] == "train"))
    assert {"val_accuracy", "val_margin", "val_kl"} <= set(next(r for r in recs if r["event"] == "val"))


def test_unpaired_kto_resume_is_exact(env, unpaired):
    "Stopped in the second epoch and resumed: the same losses and validation as the uninterrupted run."
    c = cfg(env, data=str(env["feedback"]), method="kto", run_name="kto-resume")
    a = Trainer(c, callbacks=QUIET() + [StopAt(8)])
    a.fit()
    assert a.step == 8 and a.stopped
    h = Trainer(c, callbacks=QUIET()).fit(resume=True)
    assert len(losses(h)) == 12 and max(abs(x - y) for x, y in zip(losses(h), losses(unpaired.history))) < 1e-5
    for k in ("val_loss", "val_margin", "val_accuracy", "val_kl"):
        assert max(abs(x[k] - y[k]) for x, y in zip(h["val"], unpaired.history["val"])) < 1e-4, k


def test_unpaired_feedback_is_refused_by_pair_methods_and_evaluated(env, unpaired):
    "DPO on unpaired feedback says to use KTO; `evaluate_run` on the KTO run scores the held-out responses and compares only with the desirable ones."
    from finetune.evaluate import dataset_loss, evaluate_run
    with pytest.raises(DataError) as e: Trainer(cfg(env, data=str(env["feedback"]), method="dpo", run_name="dpo-feedback"), callbacks=QUIET())
    assert "single responses with a `label`" in e.value.message and "method kto" in e.value.hint
    ev = evaluate_run(unpaired.run_dir, limit=None, max_tokens=4, save=False)
    base, tuned = ev.summary["base"], ev.summary["tuned"]
    assert abs(base["pref_loss"] - 0.5) < 1e-5 and base["pref_accuracy"] == 0.5 and abs(base["pref_margin"]) < 1e-4 and abs(base["kl"]) < 1e-4, base
    assert tuned["pref_accuracy"] >= 0.9 and tuned["pref_loss"] < 0.25 and tuned["pref_margin"] > 1, tuned
    assert abs(tuned["loss"] - dataset_loss(unpaired.model, unpaired.valid_data.responses(True), 4, 64)["loss"]) < 1e-4
    assert len(ev.examples) == 4 and all(x["reference"].startswith("The answer is") for x in ev.examples)  # the refusals are no reference
