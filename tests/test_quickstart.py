"The README's main job: the offline quickstart learns its task (held-out exact match from ~0 to >= 80%)."
from finetune.quickstart import run_quickstart


def test_quickstart_learns_the_task(tmp_path, capsys):
    r = run_quickstart(output_dir=str(tmp_path), limit=100)
    out = capsys.readouterr().out
    assert r["em_before"] <= 0.05, r
    assert r["em_after"] >= 0.80, r
    assert r["loss_after"] < r["loss_before"] / 4, r
    assert "before:" in out and "after:" in out and "Held-out exact match" in out
