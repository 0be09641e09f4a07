"""The quickstart and the dashboard in a real browser: JupyterLab and `ft ui` (Voila) on 127.0.0.1, Debian's Chromium
driven headless by Playwright, one browser for both, screenshots at 2x device scale (under pytest's tmp dir, or
FINETUNE_SCREENSHOTS).

Needs `apt-get install chromium` and `pip install playwright` (never `playwright install`: we use /usr/bin/chromium).
Skips only when chromium is absent and the environment variable CI is unset; in CI a missing browser fails."""
import json, os, re, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("FINETUNE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

def _require_browser():
    if not Path(CHROMIUM).exists():
        msg = f"{CHROMIUM} not found: apt-get install -y chromium"
        if os.environ.get("CI"): pytest.fail(msg + " (CI is set, so the browser test may not skip)")
        pytest.skip(msg)
    try: import playwright.sync_api  # noqa: F401
    except ImportError: pytest.fail("chromium is installed but the Python package playwright is not: pip install playwright")

def _free_port() -> int:
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

@pytest.fixture(scope="module")
def browser():
    "One headless Chromium for the module's tests."
    _require_browser()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try: yield b
        finally: b.close()

def _page(browser, width=1400, height=1800):
    "A page at 2x device scale (as a Retina screen): what is drawn must stay sharp."
    return browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=2)

def _png_size(path) -> tuple[int, int]:
    b = Path(path).read_bytes()
    return int.from_bytes(b[16:20], "big"), int.from_bytes(b[20:24], "big")

_SVG_FIT_JS = """sel => {
  const svg = document.querySelector(sel + ' svg');
  if (!svg) return null;
  return {tag: svg.tagName.toLowerCase(), width: svg.getBoundingClientRect().width, area: svg.parentElement.getBoundingClientRect().width,
          dpr: window.devicePixelRatio};
}"""

@pytest.fixture
def lab(tmp_path):
    "A JupyterLab server on 127.0.0.1 serving a copy of the quickstart; yields (url, token, folder)."
    _require_browser()
    work = tmp_path/"work"; work.mkdir()
    shutil.copy(ROOT/"nbs"/"tutorials"/"quickstart.ipynb", work/"quickstart.ipynb")
    port, token = _free_port(), "finetune-browser-test"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "FINETUNE_QUICKSTART_ITERS": "8",
           "JUPYTER_CONFIG_DIR": str(tmp_path/"jupyter-config"), "JUPYTER_RUNTIME_DIR": str(tmp_path/"jupyter-runtime")}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--allow-root",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = open(tmp_path/"lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2); break
            except OSError: time.sleep(0.5)
            assert proc.poll() is None, (tmp_path/"lab.log").read_text()
        else: pytest.fail("JupyterLab did not start:\n" + (tmp_path/"lab.log").read_text())
        yield url, token, work
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill()
        log.close()

_OUTPUTS_JS = """() => {
  const nb = window.jupyterapp.shell.currentWidget;
  const cells = nb.content.model.cells, out = [];
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type === 'code') out.push({count: c.executionCount, outputs: c.outputs.toJSON()});
  }
  return out;
}"""

def _wait(pred, timeout, what, step=0.25):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if (v := pred()): return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")

def test_quickstart_in_browser(lab, browser, tmp_path):
    url, token, work = lab
    shots = Path(os.environ.get("FINETUNE_SCREENSHOTS", tmp_path)); shots.mkdir(parents=True, exist_ok=True)
    page = _page(browser)
    try:
        page.goto(f"{url}/lab/tree/quickstart.ipynb?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget && "
                               "window.jupyterapp.shell.currentWidget.sessionContext?.session?.kernel?.status === 'idle'", timeout=120_000)
        # Run the whole notebook, as a new user would with Run > Run All Cells.
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        def ran():
            cells = page.evaluate(_OUTPUTS_JS)
            errs = [o for c in cells for o in c["outputs"] if o.get("output_type") == "error"]
            assert not errs, json.dumps(errs)[:3000]
            return cells if all(c["count"] for c in cells) and page.evaluate(
                "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status") == "idle" else None
        cells = _wait(ran, 300, "the quickstart to run")
        text = json.dumps(cells)
        assert "train loss: first steps" in text and "tuned" in text
        page.screenshot(path=str(shots/"quickstart-after-run.png"), full_page=False)
        assert _png_size(shots/"quickstart-after-run.png") == (2800, 3600)   # drawn at 2x

        # The data preview: chat bubbles, the loss mask token by token, an SVG histogram.
        data = page.locator(".finetune-data")
        assert data.locator(".bubble.assistant").count() >= 3 and data.locator(".tok.trained").count() > 0
        assert data.locator("svg .bar").count() > 0
        data.locator(".finetune-mask").scroll_into_view_if_needed()
        page.screenshot(path=str(shots/"data-preview.png"))

        # The chart is SVG as wide as its output area (so sharp at any pixel ratio and never stretched).
        fit = page.evaluate(_SVG_FIT_JS, ".finetune-liveplot")
        assert fit and fit["tag"] == "svg" and fit["dpr"] == 2 and abs(fit["width"] - fit["area"]) <= 2 and fit["width"] > 600, fit
        assert page.locator(".finetune-samples table").count() == 1     # sample answers under the chart

        # The chat: Enter sends, the columns fit (no horizontal overflow), the title names the run.
        chat = page.locator(".finetune-chat")
        chat.scroll_into_view_if_needed()
        assert "run-" in chat.locator(".finetune-chat-title").text_content()
        box = chat.locator("input[type=text]")
        box.fill("Extract name, age and city as JSON: Ana Lima, 31, lives in Porto."); box.press("Enter")
        answer = lambda: " ".join(chat.locator("textarea").nth(i).input_value() for i in range(2))
        _wait(lambda: any(w in answer() for w in ("Porto", "Ana", "31")), 120, "the answers to the prompt sent with Enter")
        assert chat.evaluate("e => e.scrollWidth <= e.clientWidth + 1"), "the chat columns overflow"
        chat.scroll_into_view_if_needed(); page.screenshot(path=str(shots/"chat.png"))

        # The form: a fraction in a whole-number field is refused with a message and its tab is marked.
        form = page.locator(".finetune-form")
        iters = form.locator(".widget-inline-hbox:has(> label:text-is('iters')) input")
        iters.fill("1.5"); iters.press("Tab")
        _wait(lambda: "whole number" in form.inner_text(), 30, "the whole-number message")
        assert form.locator(".lm-TabBar-tab", has_text="⚠ essentials").count() == 1
        # A long run from the form, stopped while another cell holds the kernel.
        iters.fill("100000"); iters.press("Tab")
        _wait(lambda: "whole number" not in form.inner_text(), 30, "the message to clear")
        page.locator("button.finetune-train").click()
        progress, status = page.locator("[data-step]"), page.locator(".finetune-status")
        _wait(lambda: progress.count() and progress.get_attribute("data-total") == "100000" and int(progress.get_attribute("data-step")) >= 2,
              180, "two steps of the long run")
        # (the kernel status shown by Lab is not a witness: the subshell's idle after a click overwrites it, so watch the reply)
        page.evaluate("() => { window._slept = false; const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;"
                      " k.requestExecute({code: 'import time; time.sleep(120)'}).done.then(() => { window._slept = true; }); }")
        time.sleep(1)
        page.locator("button.finetune-train").scroll_into_view_if_needed()
        page.screenshot(path=str(shots/"quickstart-training.png"))
        page.locator("button.finetune-stop").click()
        _wait(lambda: "stopped at step" in status.inner_text(), 110, "Stop to act while a cell runs")
        assert page.evaluate("() => window._slept") is False   # the 120 s cell is still running
        msg = status.inner_text()
        page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.interrupt()")
        assert ">stopped<" in page.locator(".finetune-liveplot").inner_html()
        page.locator(".finetune-liveplot").scroll_into_view_if_needed()
        page.screenshot(path=str(shots/"quickstart-stopped.png"))
        time.sleep(1); assert status.inner_text() == msg          # nothing overwrites the final status
    finally: page.close()
    step = int(re.search(r"stopped at step (\d+)", msg).group(1))
    assert 0 < step < 100000, msg
    cks = sorted(work.glob("runs/*/checkpoints/step_*"))
    assert any(c.name == f"step_{step:07d}" for c in cks), (msg, cks)
    assert (shots/"quickstart-stopped.png").stat().st_size > 10_000

def test_ft_ui_in_browser(browser, tmp_path):
    "`ft ui` serves the dashboard with Voila on 127.0.0.1: runs with their chart and metrics, the registry, a new run from the form."
    shots = Path(os.environ.get("FINETUNE_SCREENSHOTS", tmp_path)); shots.mkdir(parents=True, exist_ok=True)
    work, home = tmp_path/"work", tmp_path/"home"
    run = work/"runs"/"run-demo"; run.mkdir(parents=True)
    (run/"config.yaml").write_text("model: tiny\nfine_tune_type: lora\niters: 40\n")
    recs = [{"event": "train", "step": s, "train_loss": 3.0 / s, "peak_memory": 0.1} for s in range(1, 31)]
    recs += [{"event": "val", "step": s, "val_loss": 3.2 / s} for s in (10, 20, 30)] + [{"event": "fit", "step": 30, "total_steps": 40, "stopped": "stopped by request"}]
    (run/"metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    port = _free_port()
    env = {**os.environ, "FINETUNE_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "JUPYTER_CONFIG_DIR": str(tmp_path/"jupyter-config"), "JUPYTER_RUNTIME_DIR": str(tmp_path/"jupyter-runtime")}
    log = open(tmp_path/"ui.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent/"ft"), "ui", "--port", str(port)], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    page = _page(browser, 1280, 1000)
    try:
        def up():
            assert proc.poll() is None, (tmp_path/"ui.log").read_text()
            try: return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status == 200
            except OSError: return False
        _wait(up, 120, "ft ui to listen on 127.0.0.1", step=0.5)
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector(".finetune-dashboard", timeout=180_000)
        tabs = page.locator(".finetune-dashboard .lm-TabBar").first.locator(".lm-TabBar-tab")   # the pages (the form has tabs too)
        assert [tabs.nth(i).inner_text() for i in range(tabs.count())] == ["runs", "models", "datasets", "new run"]
        runs = page.locator(".finetune-runs-page")
        _wait(lambda: "run-demo" in runs.inner_text(), 30, "the run listed")
        fit = page.evaluate(_SVG_FIT_JS, ".finetune-runs-page")
        assert fit and fit["tag"] == "svg" and abs(fit["width"] - fit["area"]) <= 2 and fit["width"] > 600, fit
        assert ">stopped<" in runs.inner_html() and "0.1000" in runs.inner_text()   # the markers and the metrics table
        page.screenshot(path=str(shots/"ui-runs.png"), full_page=True)
        shutil.copytree(run, work/"runs"/"run-later")                     # a run that appears later: Refresh is a kernel round trip
        runs.locator("button", has_text="Refresh").click()
        _wait(lambda: "run-later" in runs.inner_text(), 30, "Refresh to list the new run")
        tabs.nth(1).click()
        _wait(lambda: "tiny" in page.locator(".finetune-dashboard").inner_text(), 30, "the registry's models")
        page.screenshot(path=str(shots/"ui-models.png"))
        tabs.nth(3).click()
        form = page.locator(".finetune-dashboard .finetune-form")
        form.wait_for(state="visible", timeout=30_000)
        assert page.locator(".finetune-dashboard button.finetune-train").is_visible()
        assert form.locator(".lm-TabBar-tab", has_text="⚠").count() == 0     # the form starts valid from any folder
        iters = form.locator(".widget-inline-hbox:has(> label:text-is('iters')) input")
        iters.fill("6"); iters.press("Tab")
        page.locator(".finetune-dashboard button.finetune-train").click()   # a new run from the form, in the web app
        status = page.locator(".finetune-dashboard .finetune-status")
        _wait(lambda: "done: 6 steps" in status.inner_text(), 120, "the run from the dashboard's form")
        page.screenshot(path=str(shots/"ui-trained.png"))
        tabs.nth(0).click()
        _wait(lambda: runs.locator("select option").count() == 3, 30, "the new run under runs")
        page.screenshot(path=str(shots/"ui-new-run.png"))
        assert _png_size(shots/"ui-new-run.png") == (2560, 2000)
    finally:
        page.close(); proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill()
        log.close()
    # `ft ui` stopped with SIGTERM takes Voila and its kernels with it (their command lines name files under tmp_path)
    try: _wait(lambda: not _processes_naming(tmp_path), 30, "Voila and its kernels to exit after `ft ui` was terminated")
    except AssertionError as e: raise AssertionError(f"{e}; still running: {_processes_naming(tmp_path)}") from None

def _processes_naming(path) -> list[str]:
    "Command lines of this machine's processes that mention `path` (Linux: /proc), other than this one."
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try: cmd = (d/"cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError: continue
        if str(path) in cmd and int(d.name) != os.getpid(): out.append(cmd)
    return out
