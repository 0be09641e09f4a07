"""The quickstart in a real browser: JupyterLab on 127.0.0.1, Debian's Chromium driven headless by Playwright.

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

def test_quickstart_in_browser(lab, tmp_path):
    from playwright.sync_api import sync_playwright
    url, token, work = lab
    shots = Path(os.environ.get("FINETUNE_SCREENSHOTS", tmp_path)); shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
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

            # A long run from the form: set iters in the schedule tab, press Train.
            form = page.locator(".finetune-form")
            form.locator(".lm-TabBar-tab", has_text="schedule").click()
            iters = form.locator(".widget-inline-hbox:has(> label:text-is('iters')) input")
            iters.fill("100000"); iters.press("Tab")
            plot = page.locator("img.finetune-liveplot")
            before = plot.get_attribute("src")
            page.locator("button.finetune-train").click()
            status = page.locator(".finetune-status")
            _wait(lambda: "100000" in status.inner_text(), 120, "the run to start with 100000 steps")
            seen = [before]
            def changed_twice():
                s = plot.get_attribute("src")
                if s and s != seen[-1]: seen.append(s)
                return len(seen) >= 3
            _wait(changed_twice, 120, "the plot to redraw twice")
            page.locator("button.finetune-train").scroll_into_view_if_needed()
            page.screenshot(path=str(shots/"quickstart-training.png"))
            page.locator("button.finetune-stop").click()
            _wait(lambda: "stopped at step" in status.inner_text(), 120, "the run to stop")
            msg = status.inner_text()
            plot.scroll_into_view_if_needed()
            page.screenshot(path=str(shots/"quickstart-stopped.png"))
        finally: browser.close()
    step = int(re.search(r"stopped at step (\d+)", msg).group(1))
    assert 0 < step < 100000, msg
    cks = sorted(work.glob("runs/*/checkpoints/step_*"))
    assert any(c.name == f"step_{step:07d}" for c in cks), (msg, cks)
    assert (shots/"quickstart-stopped.png").stat().st_size > 10_000
