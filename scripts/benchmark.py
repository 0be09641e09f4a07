#!/usr/bin/env python
"""finetune's trainer vs `mlx_lm.lora` (as installed, and with its length sort and loss mask fixed) on the same model, data and settings.

    python scripts/benchmark.py                    # both workloads: the made-up 28M model, and the real SmolLM2-135M-Instruct
    python scripts/benchmark.py --workload real    # one of them
    python scripts/benchmark.py --quick            # a small made-up model in about a minute (CI)
    python scripts/benchmark.py --serve            # serving instead: ft serve against mlx_lm.server and llama.cpp (finetune.servebench)
    python scripts/benchmark.py --preference       # a DPO step against an SFT step and mlx-lm-lora's (scripts/preference_speed.py)

Each workload writes OUT/<workload>/results.json, results.md and results.png (OUT: --out, default bench-results).
The harness lives in `finetune.bench` (nbs/15_bench.ipynb); `ft bench` runs the same thing."""
import sys
import finetune  # noqa: F401  (loads the fast BLAS before MLX)
from finetune.bench import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--serve" in args:
        from finetune.servebench import main as serve_main
        serve_main([a for a in args if a != "--serve"])
    elif "--preference" in args:
        from preference_speed import cli  # beside this script
        cli([a for a in args if a != "--preference"])
    else: main(args)
