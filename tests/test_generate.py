"Generation: prompts tokenized exactly as training data, stop strings, seeds, streaming, batches."
import json
import shutil

import pytest

import finetune  # noqa: F401  (fast BLAS before mlx)
from finetune.config import TrainConfig
from finetune.data import prepare_data
from finetune.errors import DataError
from finetune.generate import generate, generate_batch, prompt_tokens, stream
from finetune.models import load_model
from finetune.tiny import make_tiny_model


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    tiny = make_tiny_model(root / "tiny")
    nt = shutil.copytree(tiny, root / "nt")
    tc = json.loads((nt / "tokenizer_config.json").read_text())
    tc.pop("chat_template")
    (nt / "tokenizer_config.json").write_text(json.dumps(tc))
    return root, tiny, nt


@pytest.mark.parametrize("which,fmt,rows", [
    ("tiny", "chat", [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"},
                                    {"role": "assistant", "content": "hi"}]}]),
    ("nt", "chat", [{"messages": [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"}]}]),
    ("nt", "instruction", [{"instruction": "Sort the words", "input": "b a", "output": "a b"}]),
    ("nt", "completion", [{"prompt": "2 plus 3 is", "completion": " 5"}]),
])
def test_prompt_is_training_prefix(dirs, monkeypatch, which, fmt, rows):
    root, tiny, nt = dirs
    monkeypatch.setenv("FINETUNE_HOME", str(root / "home"))
    model_dir = tiny if which == "tiny" else nt
    _, tok = load_model(str(model_dir))
    cfg = TrainConfig(model=str(model_dir), data=rows * 4, valid_fraction=0.25, train_on="completion")
    pd = prepare_data(cfg, tok, quiet=True)
    ex = pd.train[0]
    ex_row = rows[0]
    if fmt == "chat": prompt = ex_row["messages"][:-1]
    elif fmt == "instruction": prompt = ex_row["instruction"] + "\n\n" + ex_row["input"]
    else: prompt = ex_row["prompt"]
    ids = prompt_tokens(tok, prompt, template=cfg.template, fmt=pd.format)
    assert ids == list(ex.tokens[:list(ex.mask).index(1)])


def test_generation_controls(dirs):
    _, tiny, _ = dirs
    model, tok = load_model(str(tiny))
    full = generate(model, tok, "hello", max_tokens=20)
    assert full == "".join(c.text for c in stream(model, tok, "hello", max_tokens=20))
    stop = full[5:8]
    assert generate(model, tok, "hello", max_tokens=20, stop=stop) == full[:full.index(stop)]
    a = generate(model, tok, "hello", max_tokens=12, temperature=0.8, top_p=0.95, seed=11)
    assert a == generate(model, tok, "hello", max_tokens=12, temperature=0.8, top_p=0.95, seed=11)
    outs = generate_batch(model, tok, ["hello", "What is 2 plus 3?", "a b c"], max_tokens=10, stop=["zzz"])
    assert outs == [generate(model, tok, p, max_tokens=10) for p in ["hello", "What is 2 plus 3?", "a b c"]]
    with pytest.raises(DataError, match="nothing to answer"):
        generate(model, tok, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    with pytest.raises(DataError, match="stop string is empty"):
        generate(model, tok, "hello", stop=[""])
