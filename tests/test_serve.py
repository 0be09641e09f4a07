"The server against a real uvicorn process on loopback: the official openai client, a WebSocket client, a load test, bad requests."
import asyncio, json, os, socket, subprocess, sys, time
from pathlib import Path
import httpx, pytest

openai = pytest.importorskip("openai")
websockets = pytest.importorskip("websockets")

KEY = "sk-test"

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def _start(home:Path, model:str, **kw):
    port = _free_port()
    args = dict(model=model, host="127.0.0.1", port=port, log_level="warning", allow_dirs=[str(home)], **kw)
    env = {**os.environ, "FINETUNE_HOME": str(home), "HF_HUB_OFFLINE": "1", "FINETUNE_JOB_HOLD": str(home/"hold")}
    env.pop("FINETUNE_API_KEY", None)
    p = subprocess.Popen([sys.executable, "-c", f"from finetune.serve import run_server; run_server(**{args!r})"], env=env, cwd=home,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if p.poll() is not None: raise RuntimeError(f"server exited: {p.stdout.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200: return p, url
        except httpx.HTTPError: pass
        time.sleep(0.1)
    p.kill(); raise RuntimeError("server did not start")

def _stop(p, timeout=10):
    p.terminate()
    try: p.wait(timeout)
    except subprocess.TimeoutExpired: p.kill(); p.wait()

@pytest.fixture(scope="module")
def home(tmp_path_factory):
    from finetune.tiny import make_tiny_model
    h = tmp_path_factory.mktemp("home")
    make_tiny_model(h/"tiny")
    rows = [{"messages": [{"role": "user", "content": f"add {i} and {i}"}, {"role": "assistant", "content": str(2 * i)}]} for i in range(8)]
    (h/"data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return h

@pytest.fixture(scope="module")
def server(home):
    p, url = _start(home, str(home/"tiny"), api_key=KEY, max_tokens_cap=16, rate_limit=0)
    yield url
    _stop(p)
    assert p.returncode is not None

@pytest.fixture
def client(server): return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0)

H = {"Authorization": f"Bearer {KEY}"}
MSGS = [{"role": "user", "content": "hello"}]

def _job(home, **kw):
    return {"config": {"model": str(home/"tiny"), "data": str(home/"data.jsonl"), "batch_size": 2, "lora_layers": 1,
                       "eval_every": 1000, **kw}}

def _wait(url, id, timeout=120) -> dict:
    for _ in range(timeout * 10):
        j = httpx.get(f"{url}/v1/fine-tunes/{id}", headers=H).json()
        if j["status"] in ("succeeded", "failed", "cancelled"): return j
        time.sleep(0.1)
    raise AssertionError(f"job {id} did not finish")

# ---- inference with the official client

def test_models_and_health(client, server, home):
    assert [m.id for m in client.models.list().data][0] == str(home/"tiny")
    h = httpx.get(server + "/health").json()  # open without a key
    assert h["status"] == "ok"

def test_chat_completion_and_stream_agree(client):
    r = client.chat.completions.create(model="", messages=MSGS, max_tokens=6)
    c = r.choices[0]
    assert c.message.role == "assistant" and c.finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 6 and r.usage.prompt_tokens > 0
    chunks = list(client.chat.completions.create(model="", messages=MSGS, max_tokens=6, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == c.message.content  # greedy: the same text
    assert chunks[-1].choices[0].finish_reason == c.finish_reason
    assert len({ch.id for ch in chunks}) == 1

def test_completion_and_stream_agree(client, home):
    r = client.completions.create(model=str(home/"tiny"), prompt="the cat", max_tokens=5)
    assert r.object == "text_completion" and r.usage.completion_tokens <= 5
    parts = list(client.completions.create(model=str(home/"tiny"), prompt="the cat", max_tokens=5, stream=True))
    assert "".join(p.choices[0].text for p in parts) == r.choices[0].text
    assert parts[-1].choices[0].finish_reason == r.choices[0].finish_reason

def test_stop_string_cuts(client):
    full = client.completions.create(model="", prompt="a", max_tokens=12).choices[0].text
    if len(full) < 3: pytest.skip("answer too short to cut")
    stop = full[1:3]
    cut = client.completions.create(model="", prompt="a", max_tokens=12, stop=[stop]).choices[0]
    assert cut.text == full[:full.index(stop)] and cut.finish_reason == "stop"

# ---- adapters per request

@pytest.fixture(scope="module")
def runs(home):
    "Two short runs in the server's home (a LoRA and a DoRA one), and a run whose adapters file is broken."
    from finetune.config import load_config
    from finetune.train import train
    def one(name, **kw):
        cfg = load_config(model=str(home/"tiny"), data=str(home/"data.jsonl"), iters=6, batch_size=2, learning_rate=3e-2, eval_every=100,
                          seed=0, output_dir=str(home/"runs"), run_name=name, **kw)
        return train(cfg).run_dir
    a, b = one("lora-a", lora_layers=1), one("dora-b", fine_tune_type="dora", lora_layers=2)
    bad = home/"runs"/"broken"
    bad.mkdir()
    (bad/"adapter_config.json").write_text((a/"adapter_config.json").read_text())
    (bad/"adapters.safetensors").write_bytes(b"not a safetensors file")
    return {"lora-a": a, "dora-b": b}

def test_adapters_switched_per_request(client, server, home, runs):
    "Requests alternate between the base and two runs; each answers as finetune's own generate with that run, the base is loaded once."
    from finetune.generate import generate, load
    msgs = [{"role": "user", "content": "add 3 and 3"}]
    def ask(model, stream=False):
        if not stream: return client.chat.completions.create(model=model, messages=msgs, max_tokens=8).choices[0].message.content
        return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(model=model, messages=msgs, max_tokens=8, stream=True))
    order = ["", "lora-a", "dora-b", "", "dora-b", "lora-a"]
    got = [ask(m, stream=i % 2 == 1) for i, m in enumerate(order)]
    want = {n: generate(*load(str(home/"tiny"), adapter_path=d), msgs, max_tokens=8) for n, d in runs.items()}
    want[""] = generate(*load(str(home/"tiny")), msgs, max_tokens=8)
    assert got == [want[m] for m in order]
    assert want["lora-a"] != want[""] or want["dora-b"] != want[""]
    assert httpx.get(server + "/health").json()["base_loads"] == 1  # six switches, the base loaded once

def test_errors_are_json(server, runs):
    "Unknown routes and methods, an adapters file that does not load (500), all in OpenAI's error shape; the server stays up."
    r = httpx.get(server + "/v1/nothing", headers=H)
    assert r.status_code == 404 and r.json()["error"]["message"] == "There is no route /v1/nothing."
    r = httpx.get(server + "/v1/chat/completions", headers=H)
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    for stream in (False, True):
        r = httpx.post(server + "/v1/chat/completions", headers=H, json={"model": "broken", "messages": MSGS, "max_tokens": 2, "stream": stream})
        assert r.status_code == 500 and r.headers["content-type"] == "application/json", r.text
        assert r.json()["error"]["type"] == "server_error" and "safetensors" not in r.json()["error"]["message"]
    r = httpx.post(server + "/v1/chat/completions", headers=H, json={"model": ["x"], "messages": MSGS})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert httpx.post(server + "/v1/chat/completions", headers=H, json={"model": "lora-a", "messages": MSGS, "max_tokens": 2}).status_code == 200

def test_stream_failure_ends_with_error_and_done(home, monkeypatch):
    "A generation that fails half-way sends an error event and then [DONE] (in-process, with an engine step that breaks)."
    from fastapi.testclient import TestClient
    import finetune.engine
    from finetune.generate import Chunk
    from finetune.serve import create_app
    def broken(self, key):
        for g in list(self.groups[key].reqs.values()): g.emit(Chunk("Hi", None, 3, 1, 1.0))
        raise RuntimeError("out of memory in the kernel")
    monkeypatch.setattr(finetune.engine.Engine, "_step", broken)
    monkeypatch.setenv("FINETUNE_HOME", str(home))
    cl = TestClient(create_app(str(home/"tiny"), rate_limit=0), base_url="http://127.0.0.1", raise_server_exceptions=False)
    for path, body in (("/v1/chat/completions", {"messages": MSGS}), ("/v1/completions", {"prompt": "a"})):
        lines = [l[6:] for l in cl.post(path, json={**body, "stream": True}).text.splitlines() if l.startswith("data: ")]
        assert lines[-1] == "[DONE]" and json.loads(lines[-2])["error"]["type"] == "server_error", lines
        assert "Hi" in lines[-3] and "out of memory" not in lines[-2]
        r = cl.post(path, json=body)
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"

# ---- bad requests

def test_bad_requests(client, server):
    with pytest.raises(openai.NotFoundError, match="does not exist"): client.chat.completions.create(model="nope", messages=MSGS, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="cap of 16"): client.chat.completions.create(model="", messages=MSGS, max_tokens=17)
    with pytest.raises(openai.BadRequestError, match="messages"): client.chat.completions.create(model="", messages=[], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="temperature"): client.completions.create(model="", prompt="a", temperature=5)
    r = httpx.post(server + "/v1/chat/completions", headers={**H, "Content-Type": "application/json"}, content=b'{"messages": [')
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(server + "/v1/completions", headers=H, json={"prompt": "x" * 2_000_000})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    r = httpx.post(server + "/v1/completions", headers=H, json=[1, 2])
    assert r.status_code == 400
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(server + "/v1/models").status_code == 401
    assert httpx.get(server + "/v1/fine-tunes/ftjob-nope", headers=H).status_code == 404
    r = httpx.post(server + "/v1/fine-tunes", headers=H, json={"config": {"iters": "many"}})
    assert r.status_code == 400 and "iters" in r.json()["error"]["message"]
    assert httpx.get(server + "/health").status_code == 200

def test_rate_limit(home):
    p, url = _start(home, str(home/"tiny"), rate_limit=3)
    try:
        codes = [httpx.get(url + "/v1/models").status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        assert "Rate limit" in httpx.get(url + "/v1/models").json()["error"]["message"]
        assert httpx.get(url + "/health").status_code == 200
    finally: _stop(p)

def test_non_loopback_needs_key(home):
    r = subprocess.run([sys.executable, "-c", "from finetune.serve import run_server; run_server(host='0.0.0.0', port=1)"],
                       env={**os.environ, "FINETUNE_HOME": str(home), "FINETUNE_API_KEY": ""}, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "needs an API key" in r.stderr

# ---- load

def test_concurrent_streams(server, home):
    prompts = [f"question {i}" for i in range(4)]
    async def one(ac, prompt):
        body = {"model": "", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8, "stream": True}
        text, finish, done = "", None, False
        async with ac.stream("POST", server + "/v1/chat/completions", headers=H, json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if not line.startswith("data: "): continue
                if line == "data: [DONE]": done = True; continue
                ch = json.loads(line[6:])["choices"][0]
                text += ch["delta"].get("content") or ""
                finish = ch["finish_reason"] or finish
        return text, finish, done
    async def main():
        async with httpx.AsyncClient(timeout=300) as ac:
            refs = []
            for p in prompts:
                r = await ac.post(server + "/v1/chat/completions", headers=H, json={"messages": [{"role": "user", "content": p}], "max_tokens": 8})
                refs.append(r.json()["choices"][0]["message"]["content"])
            got = await asyncio.gather(*[one(ac, prompts[i % 4]) for i in range(32)])
        return refs, got
    refs, got = asyncio.run(main())
    assert len(got) == 32
    for i, (text, finish, done) in enumerate(got):
        assert done and finish in ("stop", "length")
        assert text == refs[i % 4]  # nothing interleaved or corrupted
    assert httpx.get(server + "/health").json()["status"] == "ok"

# ---- training jobs

def test_training_job_over_websocket(server, home, client):
    j = httpx.post(server + "/v1/fine-tunes", headers=H, json=_job(home, iters=3, run_name="ws-run")).json()
    assert j["status"] in ("queued", "running") and j["id"].startswith("ftjob-")
    async def follow():
        async with websockets.connect(server.replace("http", "ws") + f"/v1/fine-tunes/{j['id']}/events",
                                      additional_headers=H) as ws:
            return [json.loads(m) async for m in ws]
    events = asyncio.run(follow())
    steps = [e for e in events if e["event"] == "after_step"]
    assert [e["step"] for e in steps] == [1, 2, 3] and all(e["train_loss"] > 0 for e in steps)
    assert events[-1] == {**events[-1], "event": "status", "status": "succeeded"}
    assert [e["event"] for e in events].index("before_fit") < [e["event"] for e in events].index("after_step")
    info = httpx.get(f"{server}/v1/fine-tunes/{j['id']}", headers=H).json()
    assert info["status"] == "succeeded" and info["step"] == 3 and info["run_name"] == "ws-run"
    assert j["id"] in [x["id"] for x in httpx.get(server + "/v1/fine-tunes", headers=H).json()["data"]]
    # the finished run is a model the server can serve by name
    assert "ws-run" in [m.id for m in client.models.list().data]
    r = client.chat.completions.create(model="ws-run", messages=MSGS, max_tokens=3)
    assert r.model == "ws-run" and r.usage.completion_tokens <= 3

def test_websocket_needs_key(server):
    async def go():
        async with websockets.connect(server.replace("http", "ws") + "/v1/fine-tunes/ftjob-x/events") as ws: await ws.recv()
    with pytest.raises(websockets.exceptions.ConnectionClosed) as e: asyncio.run(go())
    assert e.value.rcvd.code == 4401
    async def unknown():
        async with websockets.connect(server.replace("http", "ws") + "/v1/fine-tunes/ftjob-x/events", additional_headers=H) as ws: await ws.recv()
    with pytest.raises(websockets.exceptions.ConnectionClosed) as e: asyncio.run(unknown())
    assert e.value.rcvd.code == 4404 and "No fine-tune job" in e.value.rcvd.reason

def test_cancel_running_and_queued_jobs(server, home):
    # While home/hold exists, the server's jobs wait after each step until cancelled (FINETUNE_JOB_HOLD): the job is still
    # running when we look, however fast the machine.
    (home/"hold").touch()
    try: _cancel_running_and_queued(server, home)
    finally: (home/"hold").unlink(missing_ok=True)

def _cancel_running_and_queued(server, home):
    a = httpx.post(server + "/v1/fine-tunes", headers=H, json=_job(home, iters=500, save_every=1000, run_name="long-run")).json()
    b = httpx.post(server + "/v1/fine-tunes", headers=H, json=_job(home, iters=2, run_name="never-run")).json()
    async def first_step():  # a client that disconnects after the first step: the job carries on
        async with websockets.connect(server.replace("http", "ws") + f"/v1/fine-tunes/{a['id']}/events", additional_headers=H) as ws:
            async for m in ws:
                if json.loads(m)["event"] == "after_step": return
    asyncio.run(first_step())
    assert httpx.get(f"{server}/v1/fine-tunes/{a['id']}", headers=H).json()["status"] == "running"
    rb = httpx.delete(f"{server}/v1/fine-tunes/{b['id']}", headers=H).json()
    assert rb["status"] == "cancelled"
    httpx.delete(f"{server}/v1/fine-tunes/{a['id']}", headers=H)
    ja = _wait(server, a["id"])
    assert ja["status"] == "cancelled" and ja["step"] == 1  # held after step 1, then stopped there
    ck = Path(ja["run_dir"])/"checkpoints"
    assert [c.name for c in ck.iterdir()] and (Path(ja["run_dir"])/"adapters.safetensors").is_file()
    time.sleep(0.5)
    jb = httpx.get(f"{server}/v1/fine-tunes/{b['id']}", headers=H).json()
    assert jb["status"] == "cancelled" and jb["run_dir"] is None and jb["step"] == 0
    assert httpx.get(server + "/health").json()["jobs"] == 0

# ---- jobs in their own process, durable

def test_inference_answers_during_a_job(server, home):
    "Chats are answered while a job trains (in its worker process): none waits for the job, which is still running after them."
    j = httpx.post(server + "/v1/fine-tunes", headers=H, json=_job(home, iters=100000, save_every=100000, run_name="busy-run")).json()
    try:
        for _ in range(600):
            if httpx.get(f"{server}/v1/fine-tunes/{j['id']}", headers=H).json()["step"] >= 2: break
            time.sleep(0.1)
        else: raise AssertionError("the job did not reach step 2")
        for i in range(3):  # with the model lock held by training (the old design) these would wait for all 100000 steps
            r = httpx.post(server + "/v1/chat/completions", headers=H, timeout=120,
                           json={"messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 8})
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None, r.text
        info = httpx.get(f"{server}/v1/fine-tunes/{j['id']}", headers=H).json()
        assert info["status"] == "running" and 2 <= info["step"] < 100000, info
    finally: httpx.delete(f"{server}/v1/fine-tunes/{j['id']}", headers=H)
    assert _wait(server, j["id"])["status"] == "cancelled"

def test_jobs_survive_a_restart(tmp_path):
    "A job stopped by the server's shutdown keeps its record and checkpoint; the next server lists it and resumes it."
    import shutil
    from finetune.tiny import make_tiny_model
    make_tiny_model(tmp_path/"tiny")
    rows = [{"messages": [{"role": "user", "content": f"add {i} and {i}"}, {"role": "assistant", "content": str(2 * i)}]} for i in range(8)]
    (tmp_path/"data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path/"hold").touch()  # the job waits after each step while this file exists
    p, url = _start(tmp_path, str(tmp_path/"tiny"), rate_limit=0)
    try:
        j = httpx.post(url + "/v1/fine-tunes", json=_job(tmp_path, iters=4, save_every=1, run_name="restarted")).json()
        for _ in range(3000):
            if httpx.get(f"{url}/v1/fine-tunes/{j['id']}").json()["step"] >= 1: break
            time.sleep(0.1)
        else: raise AssertionError("the job did not reach step 1")
    finally: _stop(p, 120)  # SIGTERM: the server asks the worker to stop; it saves a checkpoint at the step boundary
    (tmp_path/"hold").unlink()
    p, url = _start(tmp_path, str(tmp_path/"tiny"), rate_limit=0)
    try:
        info = httpx.get(f"{url}/v1/fine-tunes/{j['id']}").json()
        assert (info["status"], info["step"]) == ("interrupted", 1), info
        assert [c.name for c in (Path(info["run_dir"])/"checkpoints").iterdir()] == ["step_0000001"]
        assert j["id"] in [x["id"] for x in httpx.get(url + "/v1/fine-tunes").json()["data"]]
        assert httpx.post(f"{url}/v1/fine-tunes/{j['id']}/resume").json()["status"] == "queued"
        done = _wait(url, j["id"])
        assert done["status"] == "succeeded" and [e["step"] for e in done["metrics"] if e["event"] == "after_step"] == [1, 2, 3, 4]
        assert httpx.post(f"{url}/v1/fine-tunes/{j['id']}/resume").status_code == 409
    finally: _stop(p)
    shutil.rmtree(tmp_path/"runs", ignore_errors=True)
