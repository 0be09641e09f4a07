"The README's main job: the offline quickstart fine-tunes SmolLM2-135M-Instruct to answer in strict JSON (held-out: ~0% -> >= 90%)."
from finetune.quickstart import run_quickstart


def test_quickstart_learns_the_task(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FINETUNE_QUICKSTART_ITERS", raising=False)  # the full run a person gets
    r = run_quickstart(output_dir=str(tmp_path), limit=30)
    out = capsys.readouterr().out
    assert r["steps"] == 30, r
    assert r["json_before"] <= 0.05, r
    assert r["json_after"] >= 0.90, r
    assert r["loss_after"] < r["loss_before"] / 4, r
    assert "before:" in out and "after:" in out and "Held-out strict-JSON match" in out
