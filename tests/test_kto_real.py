"""The real-model tier for KTO on unpaired feedback: SmolLM2-135M-Instruct (`smollm2-135m`) with LoRA over
examples/datasets/preference rewritten as single responses labelled desirable or not (TRL's unpaired layout), each prompt
with one response only: the answer that follows the instruction about its form (true), or the plain one (false).

Sized for CI like tests/test_dpo_real.py: six steps of four responses, sequences under 64 tokens."""
import json, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT/"examples"/"datasets"/"preference"



def unpaired(split: str) -> list:
    "The split's pairs as unpaired feedback: alternately the chosen response (label true) and the rejected one (false), never both for one prompt."
    rows = [json.loads(line) for line in (DATA/f"{split}.jsonl").read_text().splitlines()]
    return [{"prompt": r["prompt"], "completion": r["chosen"] if i % 2 == 0 else r["rejected"], "label": i % 2 == 0} for i, r in enumerate(rows)]


def test_kto_on_unpaired_feedback_moves_the_labels_apart_and_generations(home, gguf_file, follows, tmp_path):
    from finetune.callbacks import Progress
    from finetune.config import load_config
    from finetune.generate import generate_batch
    from finetune.train import Trainer, validation_metrics
    tic = time.perf_counter()
    d = tmp_path/"feedback"; d.mkdir()
    for split in ("train", "valid"): (d/f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in unpaired(split)))
    test = [json.loads(line) for line in (DATA/"test.jsonl").read_text().splitlines()]
    cfg = load_config(model="smollm2-135m", data=str(d), method="kto", beta=0.1, learning_rate=1.5e-4, lr_schedule="constant",
                      batch_size=4, max_seq_length=64, iters=6, eval_every=6, save_every=6, eval_batches=3, lora_rank=8, lora_alpha=16,
                      output_dir=str(tmp_path/"runs"), seed=0)
    t = Trainer(cfg, callbacks=[Progress(enabled=False)])
    assert t.data.format == "feedback" and t.train_data.labels.sum() == 38 and len(t.train_data) == 75
    complied = lambda: sum(follows(r["kind"], a) for r, a in zip(test, generate_batch(t.model, t.tokenizer, [r["prompt"] for r in test], max_tokens=16)))
    before = complied()
    v0 = validation_metrics(t.model, t.valid_data, 4, 64, num_batches=3, objective=t.objective)
    h = t.fit()
    v1, after = h["val"][-1], complied()
    print(f"held-out accuracy {v0['val_accuracy']:.0%} -> {v1['val_accuracy']:.0%}, margin {v0['val_margin']:.2f} -> {v1['val_margin']:.2f}, "
          f"kl {v1['val_kl']:.2f}; answers following their instruction {before}/{len(test)} -> {after}/{len(test)}; {time.perf_counter() - tic:.0f} s")
    assert v0["val_accuracy"] == 0.5 and abs(v0["val_margin"]) < 1e-3 and abs(h["train"][0]["train_loss"] - 0.5) < 1e-3
    assert v1["val_accuracy"] >= 0.8 and v1["val_margin"] > 0.2, v1
    assert after >= before + 3, (before, after)
