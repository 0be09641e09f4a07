#!/usr/bin/env python
"""The training benchmark on a GPU (MLX's CUDA or Metal backend): finetune against `mlx_lm.lora` at real models' shapes.

    python scripts/gpu_bench.py --out gpu-results                # every workload below
    python scripts/gpu_bench.py --workloads synthetic,llama3b    # some of them
    python scripts/gpu_bench.py --small --out /tmp/g             # tiny shapes: checks the script itself in a minute, on any backend

Workloads (each with `finetune.bench`'s harness, one repetition, every system in its own process):
- synthetic: the made-up 28M model and chat data of `scripts/benchmark.py`;
- smollm2:   SmolLM2-135M-Instruct's shapes and tokenizer, English chat data of realistic lengths;
- llama3b:   Llama-3.2-3B's shapes (3.2B parameters, vocabulary 128,256), the same data, LoRA on 16 layers (mlx_lm.lora's
             default), one epoch of 160 rows in batches of 4, with mlx_lm.lora also fed finetune's batches;
- llama3b-b16: the same in batches of 16 (20 steps).

The last two are made here with random weights saved in bfloat16 (as Hub models are), from `--shapes` (a folder holding a model's
config.json and tokenizer; default: the embedded SmolLM2's, converted once). Speed depends on the shapes, not on the weights' values,
so their tokens/s and memory are those of the real models; their losses say nothing of the real models.
Writes OUT/<workload>/results.json and results.md (the runs and models go under --workdir)."""
import argparse, dataclasses, json, shutil, sys, time
from pathlib import Path
import finetune  # noqa: F401  (loads the fast BLAS before MLX on a CPU)
import mlx.core as mx
from finetune.bench import BenchSpec, REAL, QUICK, markdown, matmul_peak, run_benchmark
from finetune.device import device_report

# Llama-3.2-3B's published config.json values (what matters for speed: the shapes)
LLAMA_3_2_3B = dict(model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                    num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5, vocab_size=128256, rope_theta=500000.0,
                    rope_scaling=dict(factor=32.0, high_freq_factor=4.0, low_freq_factor=1.0, original_max_position_embeddings=8192, rope_type="llama3"),
                    max_position_embeddings=131072, tie_word_embeddings=True, attention_bias=False, mlp_bias=False)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json")
SMALL = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32)

def shapes_folder(dst:Path) -> Path:
    "config.json and tokenizer of the embedded SmolLM2-135M-Instruct (no weights), in `dst`."
    from finetune.models import resolve_model
    src = resolve_model("smollm2-135m")
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("config.json",) + TOKENIZER_FILES:
        if (src/f).exists(): shutil.copy(src/f, dst/f)
    return dst

def shaped_model(dst:Path, config:dict, tokenizer_dir:Path, seed:int=0) -> Path:
    "A model folder with `config`'s shapes, random weights in bfloat16 and the tokenizer of `tokenizer_dir` (kept if already there)."
    if (dst/"config.json").exists() and any(dst.glob("*.safetensors")): return dst
    from mlx_lm.models import llama
    from mlx_lm.utils import save_model
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    model.set_dtype(mx.bfloat16)
    mx.eval(model.parameters())
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True); tmp.mkdir(parents=True)
    save_model(tmp, model)
    (tmp/"config.json").write_text(json.dumps({**config, "torch_dtype": "bfloat16"}, indent=2))
    for f in TOKENIZER_FILES:
        if (tokenizer_dir/f).exists(): shutil.copy(tokenizer_dir/f, tmp/f)
    shutil.rmtree(dst, ignore_errors=True); tmp.rename(dst)
    del model; mx.clear_cache()
    return dst

def workloads(shapes:Path, models:Path, small:bool) -> dict:
    "name -> a function making its spec (models are made only when the workload runs)."
    base = json.loads((shapes/"config.json").read_text())
    shrink = (lambda c: {**c, **SMALL}) if small else (lambda c: c)
    few = dict(n_train=24, n_valid=8, iters=6, lora_layers=-1) if small else {}
    common = dict(reps=1, stock_iters=0, gc_iters=0, bf16_iters=0, profile=False, untuned=False, one_stream=False)
    def smollm2():
        d = shaped_model(models/("smollm2-135m-shapes" + ("-small" if small else "")), shrink(base), shapes)
        return dataclasses.replace(REAL, real_model=str(d), weights="random weights in SmolLM2-135M-Instruct's shapes, its tokenizer",
                                   **common | dict(n_train=160, iters=40, systems=("mlx_lm_fixed", "mlx_lm_same", "finetune")) | few)
    def llama3b(batch_size=4):
        d = shaped_model(models/("llama-3.2-3b-shapes" + ("-small" if small else "")), shrink(LLAMA_3_2_3B), shapes)
        n = 40 * batch_size if batch_size <= 4 else 20 * batch_size  # one epoch: every system trains on every row once
        return dataclasses.replace(REAL, real_model=str(d), weights="random weights in Llama-3.2-3B's shapes, SmolLM2's tokenizer",
                                   **common | dict(n_train=n, iters=n // batch_size, batch_size=batch_size, lora_layers=16,
                                                   systems=("mlx_lm_fixed", "mlx_lm_same", "finetune") if batch_size <= 4 else ("mlx_lm_fixed", "finetune")) | few)
    def synthetic():
        spec = QUICK if small else BenchSpec(iters=40)
        return dataclasses.replace(spec, systems=("mlx_lm", "mlx_lm_fixed", "mlx_lm_same", "finetune"), **common)
    return dict(synthetic=synthetic, llama3b=llama3b, smollm2=smollm2, **{"llama3b-b16": lambda: llama3b(16)})

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu-results", help="Folder for OUT/<workload>/results.json and results.md.")
    p.add_argument("--workdir", help="Where models, data and runs go (default: OUT/work).")
    p.add_argument("--workloads", default="synthetic,llama3b,smollm2,llama3b-b16", help="Comma-separated, run in this order (llama3b-b16: batches of 16).")
    p.add_argument("--shapes", help="A folder with a model's config.json and tokenizer (default: the embedded SmolLM2's).")
    p.add_argument("--deadline", type=float, default=None, help="Seconds after which no further workload starts.")
    p.add_argument("--small", action="store_true", help="Tiny shapes and few steps: checks the script.")
    a = p.parse_args(argv)
    t0, out = time.time(), Path(a.out)
    work = Path(a.workdir) if a.workdir else out/"work"
    r = device_report(measure=False)
    print(f"backend {r['backend']} ({r['device']}), MLX {r['mlx']}, {r['memory_total_gb']:.0f} GB; matmul peak "
          f"float32 {matmul_peak():.0f}, bfloat16 {matmul_peak(mx.bfloat16):.0f} GFLOP/s", flush=True)
    shapes = Path(a.shapes) if a.shapes else shapes_folder(work/"shapes")
    specs, done = workloads(shapes, work/"models", a.small), {}
    for name in a.workloads.split(","):
        if a.deadline and time.time() - t0 > a.deadline:
            print(f"{name}: not started, past the deadline of {a.deadline:.0f} s", flush=True); continue
        tic = time.time()
        try:
            res = run_benchmark(out/name, specs[name](), work, log=lambda s: print(f"  {s}", flush=True))
        except Exception as e:  # one workload failing leaves the others' results
            import traceback; traceback.print_exc()
            print(f"{name}: failed after {time.time() - tic:.0f} s: {e}", flush=True); continue
        done[name] = res
        rows = {k: round(v["useful_tokens_per_sec"]) for k, v in res["systems"].items()}
        print(f"{name}: {time.time() - tic:.0f} s; useful tok/s {rows}; finetune/fixed mlx_lm.lora "
              f"{res['ratios']['speedup_vs_fixed']:.2f}x, memory {res['ratios']['peak_memory_vs_fixed']:.2f}x", flush=True)
        print(markdown(res), flush=True)
    return done

if __name__ == "__main__":
    sys.exit(0 if main() else 1)
