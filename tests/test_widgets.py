"Headless tests of the notebook widgets and the live plot: set .value, .click(), assert on config and trainer state."
import io, json, time
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
    assert [t for t in form.widget.children[-1].titles] == ["model", "data", "adapter", "optimization", "schedule", "output"]

def test_form_errors_beside_field_and_recovery(setup):
    form, _ = setup
    form.widgets["batch_size"].value = 0
    form.widgets["lora_modules"].value = "[unclosed"
    with pytest.raises(FinetuneError): form.config
    assert "at least 1" in form.errors["batch_size"].value
    assert "inline YAML" in form.errors["lora_modules"].value
    assert "2 field(s)" in form.status.value
    form.widgets["batch_size"].value = 3; form.widgets["lora_modules"].value = "[self_attn.q_proj]"
    c = form.config
    assert (c.batch_size, c.lora_modules) == (3, ["self_attn.q_proj"]) and form.errors["batch_size"].value == ""

def test_profile_fills_fields_and_yaml_roundtrip(setup):
    form, tmp = setup
    form.profile.value = "instruction"
    assert form.config.profile == "instruction" and form["data"].endswith("data.jsonl")
    form.widgets["lora_rank"].value = 5
    assert form.save(tmp/"c.yaml") == tmp/"c.yaml"
    other = ConfigForm()
    other.load(tmp/"c.yaml")
    assert other.config.to_dict() == form.config.to_dict()

def test_field_widget_kinds_follow_metadata():
    assert field_widget("optimizer").options[0][1] == "adamw"
    assert type(field_widget("grad_checkpoint")).__name__ == "Checkbox"

def test_train_stop_refuse_and_checkpoint(setup):
    form, _ = setup
    form.widgets["iters"].value = 5000
    panel = TrainPanel(form, every=2, seconds=0)
    panel.train_button.click()
    assert panel.running and not panel.train()
    assert "already going" in panel.status.value
    t0 = time.monotonic()
    while (panel.trainer is None or panel.trainer.step < 6) and time.monotonic() - t0 < 120: time.sleep(0.05)
    assert panel.stop() and panel.wait(120)
    t = panel.trainer
    assert t.stopped == "stopped by request" and 6 <= t.step < 5000
    assert (t.run_dir/"checkpoints"/f"step_{t.step:07d}").is_dir()
    assert panel.plot.value[:4] == b"\x89PNG" and panel.error is None
    assert not panel.train_button.disabled and panel.stop_button.disabled
    assert not panel.stop()  # nothing to stop now

def test_invalid_form_does_not_start(setup):
    form, _ = setup
    form.widgets["learning_rate"].value = -1.0
    panel = TrainPanel(form)
    assert not panel.train() and panel.thread is None
    assert "Not started" in panel.status.value

def test_exception_in_run_is_shown(setup):
    form, tmp = setup
    form.widgets["model"].value = str(tmp/"no-model-here")
    panel = TrainPanel(form)
    assert panel.train() and panel.wait(120)
    assert isinstance(panel.error, FinetuneError)
    shown = "".join(o.get("text", "") for o in panel.out.outputs)
    assert "no-model-here" in shown and "no-model-here" in panel.status.value

def test_liveplot_with_blocking_fit_prints_text_in_terminal(setup):
    form, _ = setup
    from finetune.train import Trainer
    from finetune.callbacks import Progress
    buf = io.StringIO()
    lp = LivePlot(every=5, seconds=0, file=buf)
    t = Trainer(form.config, callbacks=[Progress(enabled=False), lp])
    t.fit()
    lines = buf.getvalue().splitlines()
    assert lp.fig is None and lp.png is None            # nothing slow drawn outside a notebook
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
    assert [c[0] for c in calls] == ["display"] + ["update"] * (lp.draws - 1) and lp.draws >= 4
    assert len({c[1] for c in calls}) == len(calls)     # every redraw is a new image
    assert lp.fig.axes[0].get_xlim() == (0, 20)

def test_chat_compare_streams_side_by_side(setup):
    form, _ = setup
    panel = TrainPanel(form, every=100)
    assert panel.train() and panel.wait(120) and panel.error is None
    cc = ChatCompare.from_run(panel.trainer.run_dir, max_tokens=6)
    cc.prompt.value = "copy red"; cc.send.click()
    assert set(cc.answers) == {"base", "tuned"}
    assert all(cc.answers[k].value for k in cc.answers) and max(cc.updates.values()) > 1

def test_dataset_picker_preview(setup):
    form, tmp = setup
    dp = DatasetPicker(form, rows=2)
    assert dp.preview() is not None
    assert dp.format == "completion" and len(dp.rows) == 2 and dp.report.splits["train"]["examples"] > 0
    assert "Token lengths" in dp.view.value or "data:image/png" in dp.view.value
