"MLX's fused CPU kernels compiled with finetune's flags (finetune.JIT_FLAGS) give the same numbers, bit for bit, as MLX's own generic build."
import os, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import finetune

pytestmark = pytest.mark.skipif(not finetune.cpu_state["native"], reason="finetune wraps g++ for MLX's kernels on Linux with a g++ that takes its flags")

SCRIPT = r'''
import os, sys
import finetune
os.environ["PATH"] = sys.argv[2] + os.pathsep + os.environ["PATH"]  # this run's g++ first
finetune.cpu_state["native"] = True  # the same kernels in every run: only the compiler's flags differ
import mlx.core as mx, numpy as np
from mlx.utils import tree_flatten
from finetune.kernels import fast_softmax, fast_swiglu, fast_cross_entropy, grouped_attention, causal_attention
mx.random.seed(0)
s = mx.random.normal((2, 3, 50, 50)) * 30
g, u = mx.random.normal((4, 100, 64)) * 8, mx.random.normal((4, 100, 64))
z, t = mx.random.normal((64, 1000)) * 10, mx.random.randint(0, 1000, (64,))
q, k, v = mx.random.normal((2, 6, 40, 16)), mx.random.normal((2, 2, 40, 16)), mx.random.normal((2, 2, 40, 16))
outs = dict(
    softmax=mx.compile(mx.value_and_grad(lambda s: (fast_softmax(s) * mx.arange(50)).sum()))(s),
    swiglu=mx.compile(mx.value_and_grad(lambda g, u: (fast_swiglu(g, u) ** 2).sum(), argnums=(0, 1)))(g, u),
    cross_entropy=mx.compile(mx.value_and_grad(lambda z: fast_cross_entropy(z, t).sum()))(z),
    attention=mx.compile(mx.value_and_grad(lambda q: grouped_attention(q, k, v, None, 0.25, "causal").sum()))(q),
    causal=mx.compile(mx.value_and_grad(lambda q, k, v: (causal_attention(q, k, v, 0.25, 16) * mx.cos(q)).sum(), argnums=(0, 1, 2)))(q, k, v),
    norm=mx.compile(mx.value_and_grad(lambda g: (g * mx.rsqrt((g * g).mean(-1, keepdims=True) + 1e-5)).sum()))(g))
np.savez(sys.argv[1], **{f"{n}{i}": np.array(a) for n, o in outs.items() for i, (_, a) in enumerate(tree_flatten(o))})
'''


def kernels(tmp_path, name, flags):
    "The kernels' outputs and gradients from a fresh process whose g++ adds `flags` to MLX's kernels (None: MLX's own command)."
    real = shutil.which("g++", path=os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p and Path(p).parent != finetune._jit_dir()))
    wrap = tmp_path/f"{name}-bin"; wrap.mkdir()
    (wrap/"g++").write_text(finetune.jit_wrapper(real, flags) if flags is not None else f"#!/bin/sh\nexec '{real}' \"$@\"\n")
    (wrap/"g++").chmod(0o755)
    tmp = tmp_path/f"{name}-tmp"; tmp.mkdir()  # its own MLX kernel cache: every kernel compiled here, with these flags
    out = tmp_path/f"{name}.npz"
    env = {**os.environ, "TMPDIR": str(tmp)}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(out), str(wrap)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    built = list(tmp.glob("mlx/*/cpu/*.so"))
    assert built, "no fused kernel was compiled in this run"
    return dict(np.load(out)), built


def test_flags_keep_the_numbers(tmp_path):
    plain, built = kernels(tmp_path, "plain", None)
    assert len(built) >= 5
    for name, flags in [("native", ("-march=native", "-ffp-contract=off")), ("vectorised", finetune.JIT_FLAGS)]:
        other, _ = kernels(tmp_path, name, flags)
        assert other.keys() == plain.keys()
        for k in plain: assert np.array_equal(plain[k], other[k], equal_nan=True), f"{k} differs with {name} flags"
