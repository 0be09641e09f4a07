"""The real-model tier for preference tuning: a short DPO run with LoRA on SmolLM2-135M-Instruct (`smollm2-135m`) over
examples/datasets/preference (scripts/make_preference_data.py: the chosen answer follows an instruction about its form,
the rejected one is the plain sentence the model gives when it ignores it).

Sized for CI: six steps of four pairs, sequences under 64 tokens, twelve held-out pairs and twelve held-out prompts; one
run, then only assertions. The session's FINETUNE_HOME (conftest.py) holds the imported model."""
import json, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT/"examples"/"datasets"/"preference"



def test_dpo_raises_held_out_preference_accuracy_and_moves_generations(home, gguf_file, follows, tmp_path):
    from finetune.callbacks import Progress
    from finetune.config import load_config
    from finetune.generate import generate_batch
    from finetune.train import Trainer, validation_metrics
    tic = time.perf_counter()
    test = [json.loads(line) for line in (DATA/"test.jsonl").read_text().splitlines()]
    cfg = load_config(model="smollm2-135m", data=str(DATA), method="dpo", beta=0.1, learning_rate=1.5e-4, lr_schedule="constant",
                      batch_size=4, max_seq_length=64, iters=6, eval_every=6, save_every=6, eval_batches=3, lora_rank=8, lora_alpha=16,
                      output_dir=str(tmp_path/"runs"), seed=0)
    t = Trainer(cfg, callbacks=[Progress(enabled=False)])
    complied = lambda: sum(follows(r["kind"], a) for r, a in zip(test, generate_batch(t.model, t.tokenizer, [r["prompt"] for r in test], max_tokens=16)))
    before = complied()
    v0 = validation_metrics(t.model, t.valid_data, 4, 64, num_batches=3, objective=t.objective)  # computes (and caches) the reference's
    h = t.fit()
    v1, after = h["val"][-1], complied()
    print(f"held-out accuracy {v0['val_accuracy']:.0%} -> {v1['val_accuracy']:.0%}, margin {v1['val_margin']:.2f}; "
          f"answers following their instruction {before}/{len(test)} -> {after}/{len(test)}; {time.perf_counter() - tic:.0f} s")
    assert v0["val_accuracy"] == 0.5 and v0["val_margin"] == 0  # the policy starts as the reference: every reward is 0, ties
    assert v1["val_accuracy"] >= 0.8 and v1["val_margin"] > 0.5, v1  # 100% and margins of 1.7-2.2 measured (seeds 0, 1)
    assert v1["val_rewards_rejected"] < v1["val_rewards_chosen"]
    assert before <= 1 and after >= before + 4, (before, after)  # 0 -> 10 of 12 measured (seeds 0, 1)
    assert [r["step"] for r in h["train"]] == list(range(1, 7)) and h["train"][0]["train_accuracy"] == 0.5
