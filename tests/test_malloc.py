"finetune's glibc settings (finetune.tune_malloc): MLX's CPU streams take their buffers from the one main heap."
import os, subprocess, sys
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tune_malloc sets glibc's malloc, on Linux only")

SCRIPT = r'''
import ctypes, os, tempfile
import finetune
import mlx.core as mx
libc = ctypes.CDLL(None)
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]
outs = []
for s in (mx.new_stream(mx.cpu), mx.new_stream(mx.cpu)):  # as the trainer computes a batch in parts: a thread each
    with mx.stream(s): outs.append((mx.random.normal((512, 512)) @ mx.random.normal((512, 512))).sum())
mx.eval(outs)
path = tempfile.mktemp()
f = libc.fopen(path.encode(), b"w"); libc.malloc_info(0, f); libc.fclose(f)
print(open(path).read().count("<heap nr="), finetune.cpu_state["malloc"])
os.unlink(path)
'''


def arenas(**env) -> tuple[int, str]:
    "glibc's arenas (heaps) after two MLX CPU streams computed, in a fresh process with `env`; and what finetune did."
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    n, what = out.stdout.strip().split(" ", 1)
    return int(n), what


def test_streams_share_the_main_heap():
    # a thread's own arena gives freed buffers back to the system (its heaps unmapped), so every step faulted its pages in
    # again; the main heap keeps them for the next step
    n, what = arenas(FINETUNE_CPU_TUNING="auto")
    if "main heap" not in what: pytest.skip(f"not glibc here: {what}")
    off, _ = arenas(FINETUNE_CPU_TUNING="off")
    assert n == 1, (n, what)
    assert off > 1, off  # without the setting, each stream's thread has an arena of its own
