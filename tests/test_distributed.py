"Data-parallel training: two local processes (mlx.launch, ring backend) follow the loss curve of one process with the doubled batch."
import json, os, subprocess, sys
from pathlib import Path
from test_train import write_data

SCRIPT = """
import json, sys, finetune
import mlx.core as mx
from finetune.config import TrainConfig
from finetune.callbacks import Progress
from finetune.train import Trainer
c = TrainConfig.from_yaml(sys.argv[1])
t = Trainer(c, callbacks=[Progress(enabled=False)])
t.fit()
json.dump(dict(rank=t.rank, size=t.world_size, history=t.history), open(sys.argv[2] + f".{t.rank}.json", "w"))
"""


def run_config(tmp, name, **kw):
    from finetune.config import TrainConfig
    base = dict(model=str(tmp/"tiny"), data=str(tmp/"data"), lora_rank=8, learning_rate=3e-3, iters=10, eval_every=5, save_every=5,
                max_seq_length=64, output_dir=str(tmp/"runs"), run_name=name, log_every=5)
    p = tmp/f"{name}.yaml"
    TrainConfig.from_dict({**base, **kw}).to_yaml(p)
    return p


def test_two_processes_match_one_with_doubled_batch(tmp_path):
    env = {**os.environ, "FINETUNE_HOME": str(tmp_path/"home")}
    from finetune.tiny import make_tiny_model
    make_tiny_model(tmp_path/"tiny")
    write_data(tmp_path/"data", n_train=32, n_valid=8)
    (tmp_path/"script.py").write_text(SCRIPT)
    one = run_config(tmp_path, "one", batch_size=4)
    two = run_config(tmp_path, "two", batch_size=2)
    subprocess.run([sys.executable, str(tmp_path/"script.py"), str(one), str(tmp_path/"one")], env=env, check=True, timeout=300)
    launch = Path(sys.executable).parent/"mlx.launch"
    r = subprocess.run([str(launch), "-n", "2", "--backend", "ring", "--", sys.executable, str(tmp_path/"script.py"), str(two), str(tmp_path/"two")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    h1 = json.loads((tmp_path/"one.0.json").read_text())
    r0, r1 = (json.loads((tmp_path/f"two.{k}.json").read_text()) for k in (0, 1))
    assert (r0["size"], r1["rank"]) == (2, 1)
    l1 = [x["train_loss"] for x in h1["history"]["train"]]
    l2 = [x["train_loss"] for x in r0["history"]["train"]]
    assert len(l1) == len(l2) == 10
    assert max(abs(a - b) for a, b in zip(l1, l2)) < 1e-3, (l1, l2)
    assert [x["train_loss"] for x in r1["history"]["train"]] == l2  # every rank sees the global loss
    assert [x["n_tokens"] for x in h1["history"]["train"]] == [x["n_tokens"] for x in r0["history"]["train"]]
    v1, v2 = [x["val_loss"] for x in h1["history"]["val"]], [x["val_loss"] for x in r0["history"]["val"]]
    assert max(abs(a - b) for a, b in zip(v1, v2)) < 1e-3
    # only rank 0 wrote: one metrics line per step, and the run dir is complete
    recs = [json.loads(x) for x in (tmp_path/"runs"/"two"/"metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs if x["event"] == "train"] == list(range(1, 11))
    assert (tmp_path/"runs"/"two"/"adapters.safetensors").exists()
