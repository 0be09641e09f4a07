"""The generation engine (finetune.engine) on the tiny model: concurrent requests decoded together give each one's own
answer; requests join mid-way, leave when cancelled, stop on their own strings and limits, sample with their own
settings; a long prompt is processed in chunks between decode steps. Behaviour only (step traces), never timings."""
import threading
import pytest
from finetune.engine import Engine
from finetune.errors import DataError
from finetune.generate import generate, load


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return load(str(tiny_model))


@pytest.fixture
def engine(tiny):
    engines = []
    def make(**kw):
        e = Engine(*tiny, **kw) if "select" not in kw else Engine(**kw)
        engines.append(e)
        return e
    yield make
    for e in engines: e.close()


LONG = "hello world " * 300  # ~600 tokens


def alone(tiny, prompt, **kw):
    return generate(*tiny, prompt, **kw)


def test_concurrent_greedy_equals_alone(tiny, engine):
    prompts = [f"What is {i} plus {i}?" for i in range(6)] + [LONG]
    eng = engine(prefill_chunk=64)
    gens = [eng.generate(p, max_tokens=20) for p in prompts]
    assert [g.result()[0] for g in gens] == [alone(tiny, p, max_tokens=20) for p in prompts]
    assert eng.call(lambda: eng.generating) == 0 and eng.tokens == 20 * len(prompts)


def test_request_joining_midway_gets_same_answer(tiny, engine):
    eng = engine()
    eng.trace = []
    chunks, later, done = [], [], threading.Event()
    def emit(c):  # on the engine's thread: the second request is queued when the first has 5 tokens, so it joins mid-way
        if c is None: done.set(); return
        chunks.append(c)
        if len(chunks) == 5: later.append(eng.generate("What is 2 plus 3?", max_tokens=20))
    first = eng.generate("Count to ten", max_tokens=40, emit=emit)
    assert done.wait(300)
    assert not [c for c in chunks if isinstance(c, BaseException)], chunks
    assert "".join(c.text for c in chunks) == alone(tiny, "Count to ten", max_tokens=40)
    late = later[0]
    assert late.result()[0] == alone(tiny, "What is 2 plus 3?", max_tokens=20)
    both = [s for s in eng.trace if first.id in s["decoded"] and late.id in s["decoded"]]
    assert len(both) >= 10  # they were decoded in the same steps


def test_cancel_frees_slot(tiny, engine):
    eng = engine(max_batch=1)
    first, second = eng.generate("hello", max_tokens=5000), eng.generate("What is 2 plus 3?", max_tokens=12)
    it = iter(first)
    next(it)
    assert eng.call(lambda: (second.n, eng.generating)) == (0, 2)  # one slot: the second waits
    it.close()  # the client went away
    assert second.result()[0] == alone(tiny, "What is 2 plus 3?", max_tokens=12)
    assert first.cancelled and first.n < 5000
    assert eng.call(lambda: eng.generating) == 0


def test_stop_strings_and_max_tokens_per_request(tiny, engine):
    full = alone(tiny, "hello", max_tokens=24)
    stop = full[6:9]
    eng = engine()
    a = eng.generate("hello", max_tokens=24, stop=[stop, "never appears"])
    b = eng.generate("hello", max_tokens=7)
    c = eng.generate("Name a color", max_tokens=3)
    assert a.result()[:2] == (full[:full.find(stop)], "stop") and stop not in a.result()[0]
    assert b.result()[1:] == ("length", b.result()[2], 7) and b.result()[0] == alone(tiny, "hello", max_tokens=7)
    assert c.result()[3] == 3


def test_sampling_settings_per_request(tiny, engine):
    eng = engine()
    greedy = eng.generate("hello", max_tokens=16)
    hot = eng.generate("hello", max_tokens=16, temperature=1.0, seed=3)
    top1 = eng.generate("hello", max_tokens=16, temperature=1.0, top_k=1, seed=5)  # top-1 sampling is greedy
    assert greedy.result()[0] == alone(tiny, "hello", max_tokens=16) == top1.result()[0]
    again = eng.generate("hello", max_tokens=16, temperature=1.0, seed=3)  # alone, same seed
    assert hot.result()[0] == again.result()[0] != greedy.result()[0]
    with pytest.raises(DataError, match="temperature=-1"): eng.generate("hello", temperature=-1)
    with pytest.raises(DataError, match="max_tokens"): eng.generate("hello", max_tokens=0)


def test_long_prompt_is_processed_in_chunks_between_decode_steps(tiny, engine):
    eng = engine(prefill_chunk=64)
    eng.trace = []
    running = eng.generate("Count to ten", max_tokens=400)
    it = iter(running)
    next(it)
    long = eng.generate(LONG, max_tokens=4)
    assert long.result()[1] == "length"
    it.close()
    steps = [s for s in eng.trace if s["prefill"].get(long.id, 0) > 0]
    assert len(steps) >= len(long.ids) // 64 - 1
    assert all(s["prefill"][long.id] <= 64 for s in steps)          # one chunk per step
    assert all(running.id in s["decoded"] for s in steps)           # and the running stream got a token in every one


def test_long_prompt_does_not_starve_a_short_one(tiny, engine):
    eng = engine(prefill_chunk=64)
    eng.trace, gate = [], threading.Event()
    eng.submit(gate.wait)  # hold the engine so both arrive together
    long, short = eng.generate(LONG, max_tokens=4), eng.generate("hi", max_tokens=4)
    gate.set()
    assert short.result()[0] == alone(tiny, "hi", max_tokens=4) and long.result()[0] == alone(tiny, LONG, max_tokens=4)
    first = lambda g: next(s["step"] for s in eng.trace if g.id in s["decoded"])
    assert first(short) <= eng.trace[0]["step"] + 3 < first(long)


def test_adapter_groups_answer_with_their_own_weights(tiny, tiny_model, tmp_path, engine):
    from finetune.tiny import make_tiny_model
    other = load(str(make_tiny_model(tmp_path/"other", seed=1)))
    models = {None: tiny, "b": other}
    eng = engine(select=lambda key: models[key])
    eng.trace = []
    gens = [eng.generate("hello", key=k, max_tokens=12) for k in (None, "b", None, "b")]
    got = [g.result()[0] for g in gens]
    assert got[0] == got[2] == alone(tiny, "hello", max_tokens=12)
    assert got[1] == got[3] == alone(other, "hello", max_tokens=12) != got[0]
    # a step decodes one group: requests of different adapters are never in one forward pass
    groups = {g.id: g.key for g in gens}
    assert all(len({groups[i] for i in s["decoded"]}) <= 1 for s in eng.trace)


def test_emit_callback_and_errors(tiny, engine):
    eng = engine()
    got, done = [], threading.Event()
    def emit(x):
        got.append(x)
        if x is None: done.set()
    eng.generate("hello", max_tokens=6, emit=emit)
    done.wait(30)
    assert got[-1] is None and got[-2].finish_reason == "length" and "".join(c.text for c in got[:-1]) == alone(tiny, "hello", max_tokens=6)
    with pytest.raises(DataError, match="Cannot use a int"): eng.generate(5).result()  # a bad prompt fails its own request
    assert eng.generate("hello", max_tokens=2).result()[3] == 2                        # and nothing else
    eng.close()
    with pytest.raises(RuntimeError, match="closed"): eng.generate("hello")


def test_server_pool_quantized_base_answers_like_the_quantized_model(tiny_model):
    "`ft serve --quantize 8`: the pool's base is MLX-quantized (8 bits), and the engine answers as that model does alone."
    import mlx.nn as nn
    from finetune.models import load_model
    from finetune.serve import ModelPool
    pool = ModelPool(str(tiny_model), quantize=8)
    try:
        q = pool.call(lambda: pool.bases[None].model)
        layers = [m for _, m in q.named_modules() if isinstance(m, nn.QuantizedLinear)]
        assert layers and all(m.bits == 8 for m in layers)
        m8, tok = load_model(str(tiny_model), quantize_bits=8)
        gens = [pool.thread.generate(p, None, max_tokens=12) for p in ("hello", "What is 2 plus 3?")]
        assert [g.result()[0] for g in gens] == [generate(m8, tok, p, max_tokens=12) for p in ("hello", "What is 2 plus 3?")]
    finally: pool.thread.close()


def test_prompt_cache_reuses_a_shared_start(tiny, engine):
    eng = engine()
    eng.trace = []
    system = {"role": "system", "content": "You answer briefly and politely. " * 12}
    ask = lambda q: eng.generate([system, {"role": "user", "content": q}], max_tokens=8)
    a = ask("hello"); ra = a.result()[0]
    b = ask("What is 2 plus 3?"); rb = b.result()[0]
    again = ask("hello"); rc = again.result()[0]
    processed = lambda g: sum(s["prefill"].get(g.id, 0) for s in eng.trace)
    assert processed(a) >= len(a.ids) - 2
    assert 0 < processed(b) < len(b.ids) // 3        # only what follows the shared system message
    assert processed(again) <= 1                      # all of it was cached
    assert ra == rc == alone(tiny, [system, {"role": "user", "content": "hello"}], max_tokens=8)
    assert rb == alone(tiny, [system, {"role": "user", "content": "What is 2 plus 3?"}], max_tokens=8)
