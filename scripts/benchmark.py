#!/usr/bin/env python
"""finetune's trainer vs `mlx_lm.lora` (as installed, and with its length sort fixed) on the same model, data and settings.

    python scripts/benchmark.py                    # both workloads: the made-up 28M model, and the real SmolLM2-135M-Instruct
    python scripts/benchmark.py --workload real    # one of them
    python scripts/benchmark.py --quick            # a small made-up model in about a minute (CI)

Each workload writes OUT/<workload>/results.json, results.md and results.png (OUT: --out, default bench-results).
The harness lives in `finetune.bench` (nbs/15_bench.ipynb); `ft bench` runs the same thing."""
import finetune  # noqa: F401  (loads the fast BLAS before MLX)
from finetune.bench import main

if __name__ == "__main__":
    main()
