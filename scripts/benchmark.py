#!/usr/bin/env python
"""finetune's trainer vs `mlx_lm.lora` on the same model, data and settings: writes results.json, results.md and results.png.

    python scripts/benchmark.py            # the full benchmark (28M-parameter model, 3 alternating repetitions)
    python scripts/benchmark.py --quick    # a small version that runs in about a minute (CI)

The harness lives in `finetune.bench` (nbs/15_bench.ipynb); `ft bench` runs the same thing."""
import finetune  # noqa: F401  (loads the fast BLAS before MLX)
from finetune.bench import main

if __name__ == "__main__":
    main()
