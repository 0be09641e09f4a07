"Headless tests of the notebook widgets and the live plot: set .value, .click(), assert on config and trainer state."
import io, json, shlex, time
from pathlib import Path
import pytest
import finetune  # noqa: F401  (loads the BLAS before mlx)
from finetune.config import TrainConfig
from finetune.errors import FinetuneError
from finetune.liveplot import LivePlot
from finetune.widgets import ChatCompare, ConfigForm, DatasetPicker, TrainPanel, field_widget

WORDS = "red green blue one two three four five six seven".split()

@pytest.fixture
def setup(tmp_path, tiny_model):
    data = tmp_path/"data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"copy {w}", "completion": w}) + "\n" for w in WORDS * 4))
    form = ConfigForm(model=str(tiny_model), data=str(data), output_dir=str(tmp_path/"runs"), batch_size=2, learning_rate=1e-3,
                      eval_every=5, save_every=1000, max_seq_length=32, iters=20)
    return form, tmp_path

def test_form_has_every_field_once_with_its_default():
    from dataclasses import fields
    form = ConfigForm(TrainConfig())
    assert list(form.widgets) == [f.name for f in fields(TrainConfig)]
    assert form.config.to_dict() == TrainConfig().to_dict()
    assert all(form.widgets[f.name].tooltip == f.metadata["help"] for f in fields(TrainConfig))
    assert list(form.tabs.titles) == ["essentials", "model", "data", "adapter", "optimization", "schedule", "output"]
    assert sum(form.rows[n] in page.children for page in form.tabs.children for n in form.rows) == len(form.rows)  # each field once

def test_form_errors_beside_field_and_recovery(setup):
    form, _ = setup
    form.widgets["batch_size"].value = "0"
    form.widgets["lora_modules"].value = "[unclosed"
    with pytest.raises(FinetuneError): form.config
    assert "at least 1" in form.errors["batch_size"].value
    assert "inline YAML" in form.errors["lora_modules"].value
    assert "2 field(s)" in form.status.value
    form.widgets["batch_size"].value = "3"; form.widgets["lora_modules"].value = "[self_attn.q_proj]"
    c = form.config
    assert (c.batch_size, c.lora_modules) == (3, ["self_attn.q_proj"]) and form.errors["batch_size"].value == ""

def test_profile_fills_fields_and_yaml_roundtrip(setup):
    form, tmp = setup
    form.profile.value = "instruction"
    assert form.config.profile == "instruction" and form["data"].endswith("data.jsonl")
    form.widgets["lora_rank"].value = "5"
    assert form.save(tmp/"c.yaml") == tmp/"c.yaml"
    other = ConfigForm()
    other.load(tmp/"c.yaml")
    assert other.config.to_dict() == form.config.to_dict()

def test_field_widget_kinds_follow_metadata():
    assert field_widget("optimizer").options[0][1] == "adamw"
    assert type(field_widget("grad_checkpoint")).__name__ == "Checkbox"

def test_train_stop_refuse_and_checkpoint(setup):
    form, _ = setup
    form.widgets["iters"].value = "5000"
    panel = TrainPanel(form, every=2, seconds=0, samples=0)
    panel.train_button.click()
    assert panel.running and not panel.train()
    assert "already going" in panel.status.value
    t0 = time.monotonic()
    while (panel.trainer is None or panel.trainer.step < 6) and time.monotonic() - t0 < 120: time.sleep(0.05)
    assert panel.stop() and panel.wait(120)
    t, final = panel.trainer, panel.status.value
    assert t.stopped == "stopped by request" and 6 <= t.step < 5000
    assert (t.run_dir/"checkpoints"/f"step_{t.step:07d}").is_dir()
    assert panel.plot.value.startswith("<svg") and ">stopped</text>" in panel.plot.value and panel.error is None
    assert "stopped" in panel.progress.value and f"step {t.step:,}/5,000" in panel.progress.value
    assert not panel.train_button.disabled and panel.stop_button.disabled and not panel.resume_button.disabled
    assert not panel.stop() and panel.status.value == final  # a late Stop changes nothing: the final status stays

def test_invalid_form_does_not_start(setup):
    form, _ = setup
    form.widgets["learning_rate"].value = -1.0
    panel = TrainPanel(form)
    assert not panel.train() and panel.thread is None
    assert "Not started" in panel.status.value

def test_exception_in_run_is_shown(setup):
    form, tmp = setup
    form.widgets["model"].value = str(tmp/"no-model-here")      # caught by the form: nothing starts
    panel = TrainPanel(form, samples=0)
    assert not panel.train() and "no-model-here" in panel.status.value and panel.thread is None
    form.widgets["model"].value = form.widgets["model"].value.replace(str(tmp/"no-model-here"), "tiny")
    (tmp/"broken.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    form.widgets["data"].value = str(tmp/"broken.jsonl")         # exists, so only the run finds it broken
    assert panel.train() and panel.wait(120)
    assert isinstance(panel.error, FinetuneError)
    shown = "".join(o.get("text", "") for o in panel.out.outputs)
    assert "line 2" in shown and "The run failed" in panel.status.value and panel.plot.value == ""

def test_liveplot_with_blocking_fit_prints_text_in_terminal(setup):
    form, _ = setup
    from finetune.train import Trainer
    from finetune.callbacks import Progress
    buf = io.StringIO()
    lp = LivePlot(every=5, seconds=0, file=buf)
    t = Trainer(form.config, callbacks=[Progress(enabled=False), lp])
    t.fit()
    lines = buf.getvalue().splitlines()
    assert lp.svg is None                               # nothing drawn outside a notebook
    assert lines[0].startswith("step 5/20") and lines[-1].startswith("step 20/20")
    assert len(lines) == 5 and "val" in lines[-1] and "GB peak" in lines[-1]

def test_liveplot_display_mode_updates_one_handle(setup, monkeypatch):
    form, _ = setup
    import IPython.display as D
    calls = []
    class Handle:
        def update(self, obj): calls.append(("update", obj.data))
    def display(obj, display_id=False): calls.append(("display", obj.data)); return Handle()
    monkeypatch.setattr(D, "display", display)
    from finetune.train import Trainer
    from finetune.callbacks import Progress
    t = Trainer(form.config, callbacks=[Progress(enabled=False), lp := LivePlot(every=5, seconds=0, mode="display")])
    t.fit()
    assert [c[0] for c in calls] == ["display"] + ["update"] * (len(calls) - 1) and lp.draws >= 4
    assert sum("<svg" in c[1] for c in calls) >= lp.draws   # every redraw replaces the one output in place
    assert "step 20/20" in calls[-1][1] and ">20</text>" in calls[-1][1]   # the x-axis spans the run

def test_chat_compare_streams_side_by_side(setup):
    form, _ = setup
    panel = TrainPanel(form, every=100, samples=0)
    assert panel.train() and panel.wait(120) and panel.error is None
    first = panel.trainer.run_dir
    cc = ChatCompare.from_run(first, max_tokens=6).follow(panel)
    assert first.name in cc.title.value
    cc.prompt.value = "copy red"; cc.send.click()
    assert set(cc.answers) == {"base", "tuned"}
    assert all(cc.answers[k].value for k in cc.answers) and max(cc.updates.values()) > 1
    form["iters"] = 4
    assert panel.train() and panel.wait(120) and panel.error is None
    second = panel.trainer.run_dir
    assert second != first and second.name in cc.title.value        # it names the run it will compare
    cc.prompt.value = "copy blue"
    cc.prompt._handle_string_msg(None, {"event": "submit"}, None)   # Enter in the prompt box
    assert cc.run_dir == second and second.name in cc.title.value     # loaded at this question
    assert {k: a.value for k, a in cc.answers.items()} == cc.ask("copy blue")   # the shown answers are this prompt's (greedy)

def test_dataset_picker_preview(setup):
    form, tmp = setup
    dp = DatasetPicker(form, rows=2)
    assert dp.preview() is not None
    assert dp.format == "completion" and len(dp.rows) == 2 and dp.report.splits["train"]["examples"] > 0
    v = dp.view.value
    assert v.count("bubble assistant") == 2 and "<svg" in v and "max_seq_length 32" in v
    assert v.count("class='tok trained'") == sum(dp.data.train[0].mask) > 0     # the loss mask of one example, token by token

def test_form_rules_fractions_hidden_fields_and_yaml_paths(setup):
    form, tmp = setup
    form.widgets["iters"].value = "1.5"                 # a browser number box would have made this 15
    assert "whole number, not 1.5" in form.errors["iters"].value and form.tabs.titles[0].startswith("⚠")
    with pytest.raises(FinetuneError, match="iters"): form.config
    form.widgets["iters"].value = "12"
    form.widgets["lora_rank"].value = "0"
    form.widgets["fine_tune_type"].value = "full"       # LoRA fields hidden and not checked
    assert form.rows["lora_rank"].layout.display == "none" and form.config.fine_tune_type == "full"
    form.widgets["data"].value = str(tmp/"nope.jsonl")  # checked while typing, before any Train
    assert "does not exist" in form.errors["data"].value
    (tmp/"cfg").mkdir(); (tmp/"cfg"/"d.jsonl").write_text((tmp/"data.jsonl").read_text())
    (tmp/"cfg"/"run.yaml").write_text("data: d.jsonl\niters: 9\n")
    assert form.load(tmp/"cfg"/"run.yaml").data == str(tmp/"cfg"/"d.jsonl")   # relative to the YAML file

def test_form_as_ft_command_gives_the_same_config(setup):
    form, _ = setup
    from finetune.cli import parse_sets
    from finetune.config import as_config
    form.profile.value = "chat"; form["lora_modules"] = ["self_attn.q_proj"]; form["learning_rate"] = 3e-4
    words = shlex.split(form.as_text("ft command"))
    assert words[:4] == ["ft", "train", "--profile", "chat"]
    sets = [w for i, w in enumerate(words) if i and words[i - 1] == "--set"]
    again = as_config(profile="chat", **parse_sets(sets))
    assert again.to_dict() == form.config.to_dict()

def test_stop_click_acts_while_a_cell_runs(setup):
    "In a real kernel, a Stop click ends the run while another cell (a long sleep) is still running."
    form, tmp = setup
    from jupyter_client.manager import start_new_kernel
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp))
    def run(code, timeout=120):
        kc.execute(code)
        while (r := kc.get_shell_msg(timeout=timeout))["msg_type"] != "execute_reply": pass
        assert r["content"]["status"] == "ok", r["content"]
    def click(comm_id): kc.shell_channel.send(kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {"method": "custom", "content": {"event": "click"}}}))
    try:
        c = form.config
        run(f"import time, json, pathlib\nfrom finetune.widgets import ConfigForm, TrainPanel\n"
            f"panel = TrainPanel(ConfigForm(model={c.model!r}, data={c.data!r}, output_dir={c.output_dir!r}, batch_size=2, "
            f"max_seq_length=32, iters=100000, eval_every=100000, save_every=100000), every=1000, samples=0)\n"
            f"pathlib.Path('ids.json').write_text(json.dumps([panel.is_responsive, panel.train_button.comm.comm_id, panel.stop_button.comm.comm_id]))")
        responsive, train_id, stop_id = json.loads((tmp/"ids.json").read_text())
        assert responsive, "ipykernel without subshells: the controls wait for the running cell"
        kc.execute("time.sleep(600)")                       # a long cell holds the main shell (interrupted below)
        time.sleep(0.5); click(train_id)
        metrics = lambda: [json.loads(line) for p in Path(c.output_dir).glob("*/metrics.jsonl") for line in p.read_text().splitlines()]
        t0 = time.monotonic()
        while sum(r["event"] == "train" for r in metrics()) < 3: assert time.monotonic() - t0 < 300, "Train did not start during the cell"; time.sleep(0.2)
        click(stop_id); t1 = time.monotonic()
        while not any(r["event"] == "fit" for r in metrics()): assert time.monotonic() - t1 < 120, "Stop was not handled during the cell"; time.sleep(0.2)
        assert not kc.shell_channel.msg_ready()            # the run ended while the sleeping cell had not replied
        km.interrupt_kernel()
        while kc.get_shell_msg(timeout=30)["msg_type"] != "execute_reply": pass
        click(stop_id); time.sleep(0.5)                    # a late Stop
        run("pathlib.Path('status.txt').write_text(panel.status.value)")
        assert "stopped at step" in (tmp/"status.txt").read_text()
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)
