"""How much a preference step costs against an SFT step on the same pairs (LoRA, the real model by default).

Every kind of step runs on the same four pairs of examples/datasets/preference, interleaved round by round so that the
machine's load weighs on each alike; the median time of each is reported with its ratio to SFT on the chosen responses:

  sft-chosen   SFT on the chosen responses (what an SFT run on this data trains on)
  sft-both     SFT on both responses (the same tokens as a preference step)
  dpo          DPO's step as the trainer runs it: both responses in one padded batch, the reference log-probabilities
               computed before training (`Preference.precompute`)
  reference    that pass over these pairs, without gradients (once per run; `dpo+reference` is the two together, what a
               step of a one-epoch run costs)
  dpo-lazy     DPO with the reference log-probabilities computed inside the step instead (what every first-epoch step
               cost before the pass existed)
  orpo, simpo  reference-free
  mlx-lm-lora  mlx-lm-lora's DPO step (its loss functions, step and second reference model, as its train_dpo builds them),
               when the package is importable (`pip install mlx-lm-lora`, or its wheel on PYTHONPATH)

Usage: python scripts/preference_speed.py [--model smollm2-135m] [--rounds 5] [--batch 4] [--out FILE]
(or python scripts/benchmark.py --preference ...)"""
import argparse, json, statistics, time
from pathlib import Path
import finetune  # noqa: F401  (loads the BLAS before mlx)
import mlx.core as mx
import mlx.optimizers as optim

ROOT = Path(__file__).resolve().parent.parent


def main(model="smollm2-135m", rounds=5, batch=4, seq=64, out=None):
    from finetune.batching import make_batch
    from finetune.config import as_config
    from finetune.data import TokenizedDataset, prepare_data
    from finetune.models import attach_adapters, load_model
    from finetune.objectives import SFT, make_objective
    from finetune.train import make_step
    m, tok = load_model(model)
    attach_adapters(m, dict(fine_tune_type="lora", lora_rank=8))
    cfg = as_config(model=model, data=str(ROOT/"examples"/"datasets"/"preference"), method="dpo", max_seq_length=seq)
    pairs = prepare_data(cfg, tok, quiet=True).train
    rows = [[i] for i in range(batch)]
    chosen = TokenizedDataset.from_lists([(s.tokens, s.mask) for i in range(batch) for s in pairs.sequences(i)[:1]])
    both = TokenizedDataset.from_lists([(s.tokens, s.mask) for i in range(batch) for s in pairs.sequences(i)])
    def stepper(obj, ds, rows, source):
        obj.setup(m, fresh_adapters=True)
        if source is not None: obj.precompute(m, source, batch, seq)
        micro, update = make_step(m, optim.Adam(learning_rate=1e-5), obj.loss)
        b = make_batch(ds, rows, seq)
        def run():
            out = update(*micro(obj.prepare(m, b, source)))
            mx.eval(m.parameters(), out)
        return run
    kinds = {"sft-chosen": stepper(SFT(), chosen, rows, None), "sft-both": stepper(SFT(), both, [[i] for i in range(2 * batch)], None),
             "dpo": stepper(make_objective(cfg), pairs, rows, pairs), "reference": reference_pass(make_objective(cfg), m, pairs, batch, seq),
             "dpo-lazy": stepper(make_objective(cfg), pairs, rows, None),
             "orpo": stepper(make_objective(as_config(cfg, method="orpo")), pairs, rows, None),
             "simpo": stepper(make_objective(as_config(cfg, method="simpo")), pairs, rows, None)}
    if (other := mlx_lm_lora_step(model, pairs, batch, seq)) is not None: kinds["mlx-lm-lora"] = other
    times = {k: [] for k in kinds}
    for r in range(rounds + 1):  # the first round compiles and warms up: not counted
        for k, run in kinds.items():
            t = time.perf_counter(); run()
            if r: times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    med["dpo+reference"] = med["dpo"] + med["reference"]
    tokens = sum(len(s.tokens) for i in range(batch) for s in pairs.sequences(i))
    res = dict(model=model, batch_pairs=batch, tokens_per_step=tokens, rounds=rounds,
               seconds={k: round(v, 3) for k, v in med.items()}, tokens_per_sec={k: round(tokens / v) for k, v in med.items() if not k.startswith("sft-chosen")}, ratio_to_sft_chosen={k: round(v / med["sft-chosen"], 2) for k, v in med.items()},
               ratio_to_sft_both={k: round(v / med["sft-both"], 2) for k, v in med.items()})
    print(json.dumps(res, indent=1))
    if out: Path(out).write_text(json.dumps(res, indent=1))
    return res


def reference_pass(obj, m, pairs, batch, seq):
    "A timed `precompute` of the reference log-probabilities of the first `batch` pairs, from an empty cache each time."
    sub = type(pairs).from_lists([(s.tokens, s.mask) for i in range(batch) for s in pairs.sequences(i)], pad_id=pairs.pad_id)
    obj.setup(m, fresh_adapters=True)
    def run():
        obj._cache.clear()
        assert obj.precompute(m, sub, batch, seq) == batch
    return run


def mlx_lm_lora_step(model, pairs, batch, seq):
    "A timed DPO step of mlx-lm-lora on the same pairs (chosen and rejected as separate batches, a second model as reference), or None."
    try: from mlx_lm_lora.trainer.dpo_trainer import compute_score, dpo_loss, get_token_scores
    except ImportError: return None
    from functools import partial
    import mlx.nn as nn
    import numpy as np
    from finetune.models import attach_adapters, load_model
    m, _ = load_model(model); attach_adapters(m, dict(fine_tune_type="lora", lora_rank=8))
    ref, _ = load_model(model); ref.freeze()
    def side(k):
        seqs = [pairs.sequences(i)[k] for i in range(batch)]
        L = min(max(len(x.tokens) for x in seqs), seq)
        toks, masks = np.zeros((batch, L), np.int32), np.zeros((batch, L), np.float32)
        for j, x in enumerate(seqs): toks[j, :len(x.tokens[:L])], masks[j, :len(x.mask[:L])] = x.tokens[:L], x.mask[:L]
        return mx.array(toks), mx.array(masks)
    (c, cm), (r, rm) = side(0), side(1)
    def loss_wrapper(c, r, cm, rm):  # as mlx_lm_lora.trainer.dpo_trainer.train_dpo
        pc, pr = compute_score(get_token_scores(m, c, cm), cm, "sigmoid"), compute_score(get_token_scores(m, r, rm), rm, "sigmoid")
        rc = compute_score(mx.stop_gradient(get_token_scores(ref, c, cm)), cm, "sigmoid")
        rr = compute_score(mx.stop_gradient(get_token_scores(ref, r, rm)), rm, "sigmoid")
        return dpo_loss(pc, pr, rc, rr, cm, rm, beta=0.1, delta=50.0, loss_type="sigmoid")
    vg = nn.value_and_grad(m, loss_wrapper)
    opt = optim.Adam(learning_rate=1e-5)
    state = [m.state, opt.state, mx.random.state]
    @partial(mx.compile, inputs=state, outputs=state)
    def step(c, r, cm, rm):
        (l, reward, toks, metrics), g = vg(c, r, cm, rm)
        opt.update(m, g)
        return l
    def run(): mx.eval(step(c, r, cm, rm), m.parameters())
    return run


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m"); p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=4, help="pairs per step"); p.add_argument("--seq", type=int, default=64)
    p.add_argument("--out", help="also write the results (JSON) here")
    a = p.parse_args(argv)
    return main(a.model, a.rounds, a.batch, a.seq, a.out)


if __name__ == "__main__": cli()
