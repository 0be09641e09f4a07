"One gate: the same run built through every way in (kwargs, dict, YAML, CLI --set, the form, a server job) gives equal configs."
from pathlib import Path

import pytest
import yaml

from finetune.config import TrainConfig, as_config, load_config
from finetune.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

# A run that exercises every layer: a profile, a model whose family preset applies (its folder is named Qwen-...), a list field.
RUN = {"profile": "chat", "lora_rank": 4, "learning_rate": 5e-5, "iters": 12, "output_dir": "runs", "lora_dropout": "0.05"}


@pytest.fixture(scope="module", autouse=True)
def qwen_named_model(tmp_path_factory):
    "A real (tiny) model in a folder whose name makes the qwen preset apply, so the form's model check finds it offline."
    from finetune.tiny import make_tiny_model
    d = tmp_path_factory.mktemp("allowed")
    make_tiny_model(d/"Qwen-tiny")
    RUN["model"] = str((d/"Qwen-tiny").resolve())
    yield d
    RUN.pop("model")


@pytest.fixture(scope="module")
def want():
    c = as_config(**RUN)
    assert (c.lr_schedule, c.sources["lr_schedule"]) == ("cosine", "profile chat")  # the profile applied
    assert (c.sources["lora_modules"], len(c.lora_modules)) == ("preset qwen", 7)  # the qwen preset applied
    assert c.lora_dropout == 0.05  # a value typed as a string
    return c


def test_kwargs_dict_trainconfig(want):
    from finetune.train import Trainer
    assert as_config(dict(RUN)) == want
    assert as_config(TrainConfig(**RUN)) == want
    assert TrainConfig.from_dict(dict(RUN)) == want
    assert load_config(**{k: v for k, v in RUN.items() if k != "profile"}, profile="chat") == want
    # the Trainer takes the same gate: a dict naming a profile trains with the profile's settings
    t = Trainer({**RUN, "model": "tiny", "data": str(ROOT / "examples/datasets/quickstart")})
    assert t.config == as_config({**RUN, "model": "tiny", "data": str(ROOT / "examples/datasets/quickstart")})
    assert (t.config.lr_schedule, t.config.data_format) == ("cosine", "chat")


def test_yaml(want, tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump(RUN))
    assert load_config(f) == want
    assert TrainConfig.from_yaml(f) == want
    assert as_config(f) == want
    want.to_yaml(tmp_path / "dump.yaml")  # a run's saved config.yaml reads back as the same run
    assert TrainConfig.from_yaml(tmp_path / "dump.yaml") == want


def test_cli_set(want):
    from finetune.cli import _train_config
    sets = [f"{k}={v}" if not isinstance(v, list) else f"{k}=[{', '.join(v)}]" for k, v in RUN.items() if k != "profile"]
    assert _train_config(None, "chat", None, sets, None) == want  # --profile chat --set ...
    assert _train_config(None, None, None, sets + ["profile=chat"], None) == want  # --set profile=chat
    # an explicit flag beats --set for the same field
    assert _train_config(None, "instruction", None, sets + ["profile=chat"], None).profile == "instruction"


def test_form(want):
    from finetune.widgets import ConfigForm
    f = ConfigForm(RUN)
    assert f.config == want
    g = ConfigForm()  # by hand: the model typed, the profile picked (it fills its fields and the model's preset), the rest typed
    g["model"] = RUN["model"]
    g.profile.value = "chat"
    for k, v in RUN.items():
        if k not in ("profile", "model"): g[k] = v
    assert g.config == want


def test_server_job(want, qwen_named_model, tmp_path):
    from finetune.jobs import Roots, job_config
    d = job_config({k: v for k, v in RUN.items() if k != "output_dir"}, Roots(allow_dirs=[qwen_named_model], home=tmp_path/"home"))
    got = load_config(**d)
    assert got.output_dir != want.output_dir  # a job's run goes under the server's runs folder
    assert as_config(got, output_dir=want.output_dir, run_name=want.run_name) == want


def test_every_way_rejects_the_same_bad_value(tmp_path):
    bad = {"learning_rate": float("nan")}
    f = tmp_path / "bad.yaml"
    f.write_text("learning_rate: .nan\n")
    for make in (lambda: as_config(bad), lambda: as_config(**bad), lambda: as_config(TrainConfig(**bad)), lambda: load_config(f)):
        with pytest.raises(ConfigError, match="finite"): make()
    with pytest.raises(ConfigError, match="batch_size"): as_config(TrainConfig(batch_size=0))
