"Evaluation: metrics, loss equals the trainer's validation loss, a trained run evaluated base-vs-tuned and saved as JSON."
import json
import math

import pytest

import finetune  # noqa: F401  (fast BLAS before mlx)
from finetune.config import TrainConfig
from finetune.evaluate import Comparison, contains, dataset_loss, evaluate_run, exact_match, token_f1
from finetune.errors import DataError
from finetune.tiny import make_tiny_model


def test_metrics():
    assert exact_match("  The Paris! ", "paris") == 1.0
    assert exact_match("Paris France", "paris") == 0.0
    assert contains("I think it is Paris.", "Paris") == 1.0
    assert contains("Parisians", "Paris") == 0.0
    assert math.isclose(token_f1("red green blue", "green blue yellow"), 2 / 3)


def test_trained_run(tmp_path, monkeypatch):
    from finetune.train import train, validation_loss
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "home"))
    tiny = make_tiny_model(tmp_path / "tiny")
    qs = ["What is the capital of France?", "Name the capital of France.", "Which city is the capital of France?",
          "France has which capital?", "Tell me the capital city of France", "capital of France?"]
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "Paris"}]} for q in qs]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    # Memorise one answer: seeded, and a step size at which every seed tried (16) converges, so rounding cannot flip it.
    t = train(TrainConfig(model=str(tiny), data=str(data), valid_data=str(data), test_data=str(data), iters=40, batch_size=3,
              learning_rate=2e-3, lora_rank=8, lora_alpha=16.0, eval_every=1000, save_every=1000, output_dir=str(tmp_path / "runs"),
              run_name="r", log_every=1000, seed=0))
    run = t.run_dir
    ev = evaluate_run(run, max_tokens=4)
    assert (run / "evaluation.json").exists()
    saved = Comparison.load(run / "evaluation.json")
    assert saved.summary == json.loads(json.dumps(ev.summary))
    assert ev.summary["tuned"]["loss"] < ev.summary["base"]["loss"] / 4, ev.summary  # ~0.26 against ~6.4
    assert (ev.summary["base"]["exact_match"], ev.summary["tuned"]["exact_match"]) == (0.0, 1.0), ev.summary
    assert math.isclose(ev.summary["tuned"]["perplexity"], math.exp(ev.summary["tuned"]["loss"]), rel_tol=1e-9)
    # the same number the trainer reports for validation
    want = validation_loss(t.model, t.data.valid, 3, t.config.max_seq_length)
    assert math.isclose(dataset_loss(t.model, t.data.valid, 3, t.config.max_seq_length)["loss"], want, rel_tol=1e-4)
    d = ev.differences()
    assert len(d) == len(ev.examples) - sum(e["base"]["answer"] == e["tuned"]["answer"] for e in ev.examples)
    with pytest.raises(DataError, match="no config.yaml"):
        evaluate_run(tmp_path)
