"Data module: every source, format and error; caching; splits; batching and the packing-equivalence check."
import json, shutil
from pathlib import Path
import numpy as np
import pytest
from finetune.config import TrainConfig
from finetune.data import prepare_data, load_source, TokenizedDataset, split_valid
from finetune.batching import iterate_batches, num_batches, make_batch, batch_loss, plan_batches
from finetune.errors import DataError
from finetune.report import inspect_data

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 3?"},
                     {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 4 plus 4?"}, {"role": "assistant", "content": "8"}]}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path/"home"))


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(tiny_model))


def trained_text(tok, ex):
    return tok.decode([t for t, m in zip(ex.tokens, ex.mask) if m])


def cfg(data, **kw):
    return TrainConfig(data=data, valid_fraction=kw.pop("valid_fraction", 0.0), max_seq_length=kw.pop("max_seq_length", 256), **kw)


def rows(n=4):
    return [{"prompt": f"What is {i} plus 1?", "completion": f"{i + 1}"} for i in range(n)]


# ---- sources -----------------------------------------------------------------------------------------------------
def write(path, rs, kind):
    path = Path(path)
    if kind == "jsonl": path.write_text("".join(json.dumps(r) + "\n" for r in rs))
    elif kind == "json": path.write_text(json.dumps(rs))
    elif kind == "json-object": path.write_text(json.dumps({"meta": "x", "rows": rs}))
    elif kind in ("csv", "tsv"):
        import csv
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rs[0]), delimiter="\t" if kind == "tsv" else ",")
            w.writeheader(); w.writerows(rs)
    elif kind == "parquet":
        import datasets
        datasets.Dataset.from_list(rs).to_parquet(str(path))
    return path


@pytest.mark.parametrize("kind,ext", [("jsonl", "jsonl"), ("json", "json"), ("json-object", "json"), ("csv", "csv"),
                                      ("tsv", "tsv"), ("parquet", "parquet")])
def test_file_sources(tmp_path, tok, kind, ext):
    f = write(tmp_path/f"data.{ext}", rows(), kind)
    pd = prepare_data(cfg(str(f)), tok)
    assert (len(pd.train), pd.format, pd.train_on) == (4, "completion", "completion")
    assert trained_text(tok, pd.train[2]) == "3<|im_end|>"


@pytest.mark.parametrize("kind,ext", [("jsonl", "jsonl"), ("json", "json"), ("json-object", "json"), ("csv", "csv"), ("tsv", "tsv")])
def test_utf8_bom_is_accepted(tmp_path, tok, kind, ext):
    "Windows tools (Notepad, Excel's 'CSV UTF-8') start a file with a byte-order mark: it reads like the same file without one."
    f = write(tmp_path/f"data.{ext}", rows(), kind)
    f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    pd = prepare_data(cfg(str(f)), tok)
    assert (len(pd.train), pd.format, pd.train_on) == (4, "completion", "completion")
    assert trained_text(tok, pd.train[2]) == "3<|im_end|>"
    assert "\ufeff" not in tok.decode(pd.train[0].tokens)


def test_utf8_bom_text_and_chat(tmp_path, tok):
    (tmp_path/"corpus.txt").write_bytes(b"\xef\xbb\xbf" + "the first line\nthe second line\n".encode())
    pd = prepare_data(cfg(str(tmp_path/"corpus.txt")), tok)
    assert tok.decode(pd.train[0].tokens).startswith("the first line")
    (tmp_path/"chat.jsonl").write_text("\ufeff" + json.dumps(CHAT) + "\n", encoding="utf-8")
    pd = prepare_data(cfg(str(tmp_path/"chat.jsonl")), tok)
    assert pd.format == "chat" and trained_text(tok, pd.train[0]) == "5<|im_end|>8<|im_end|>"


def test_txt_source(tmp_path, tok):
    (tmp_path/"corpus.txt").write_text("the first line\nthe second line\n")
    pd = prepare_data(cfg(str(tmp_path/"corpus.txt")), tok)
    assert (len(pd.train), pd.format, pd.train_on, pd.template) == (2, "text", "all", "none")
    ex = pd.train[0]
    assert ex.tokens[-1] == 2 and sum(ex.mask) == len(ex.tokens) - 1


def test_list_source(tok):
    pd = prepare_data(cfg([CHAT] * 3), tok)
    assert (len(pd.train), pd.format) == (3, "chat")


def test_directory_source(tmp_path, tok):
    write(tmp_path/"train.jsonl", rows(6), "jsonl")
    write(tmp_path/"valid.jsonl", rows(2), "jsonl")
    write(tmp_path/"test.csv", rows(3), "csv")
    pd = prepare_data(cfg(str(tmp_path), valid_fraction=0.5), tok)
    assert (len(pd.train), len(pd.valid), len(pd.test)) == (6, 2, 3)


def test_saved_to_disk_source(tmp_path, tok):
    import datasets
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows(5)), "validation": datasets.Dataset.from_list(rows(2))}).save_to_disk(str(tmp_path/"saved"))
    pd = prepare_data(cfg(str(tmp_path/"saved"), hf_split="train"), tok)
    assert len(pd.train) == 5
    assert len(load_source(str(tmp_path/"saved"), split="validation")) == 2


def prefill_hub_cache(cache, repo, rs, config="default"):
    "Put `repo` into a datasets cache as if it had been downloaded before (what offline mode then serves)."
    import datasets
    src = cache.parent/"src.jsonl"; write(src, rs, "jsonl")
    b = datasets.load_dataset_builder("json", data_files={"train": str(src)}, cache_dir=str(cache.parent/"build"))
    b.download_and_prepare()
    dst = cache/repo.replace("/", "___")/config/"0.0.0"/Path(b.cache_dir).name
    shutil.copytree(b.cache_dir, dst)
    for f in dst.glob("json-*.arrow"): f.rename(f.with_name(f.name.replace("json-", repo.split("/")[-1] + "-")))


def test_hub_id_from_prefilled_cache(tmp_path, tok, monkeypatch):
    cache = tmp_path/"hfcache"
    prefill_hub_cache(cache, "someone/toy-set", rows(5))
    monkeypatch.setenv("FINETUNE_HF_DATASETS_CACHE", str(cache))
    pd = prepare_data(cfg("someone/toy-set", hf_split="train"), tok)
    assert (len(pd.train), pd.format) == (5, "completion")
    with pytest.raises(DataError, match="split 'nope'"):
        prepare_data(cfg("someone/toy-set", hf_split="nope"), tok)


def test_hub_id_missing_is_data_error(tok):
    with pytest.raises(DataError, match="(?s)Could not load 'nobody/nothing'.*hf_subset"):
        prepare_data(cfg("nobody/nothing"), tok)


# ---- formats ------------------------------------------------------------------------------------------------------
def test_chat_trains_every_assistant_turn(tok):
    pd = prepare_data(cfg([CHAT]), tok)
    assert trained_text(tok, pd.train[0]) == "5<|im_end|>8<|im_end|>"
    pd = prepare_data(cfg([CHAT], train_on="completion"), tok)
    assert trained_text(tok, pd.train[0]) == "8<|im_end|>"
    pd = prepare_data(cfg([CHAT], train_on="all"), tok)
    assert sum(pd.train[0].mask) == len(pd.train[0].tokens) - 1


def test_chat_with_tools(tok):
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    row = {"messages": [{"role": "user", "content": "Weather?"},
                        {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}]},
                        {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}], "tools": tools}
    ex = prepare_data(cfg([row]), tok).train[0]
    full = tok.decode(ex.tokens)
    assert "You can call these tools" in full and '"weather"' in full
    t = trained_text(tok, ex)
    assert t.startswith("<tool_call>") and "Oslo" in t and t.endswith("Sunny.<|im_end|>") and "You can call" not in t


def test_sharegpt(tok):
    row = {"system": "Be kind.", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                                                   {"from": "human", "value": "bye"}, {"from": "gpt", "value": "goodbye"}]}
    pd = prepare_data(cfg([row]), tok)
    assert pd.format == "sharegpt"
    assert trained_text(tok, pd.train[0]) == "hello<|im_end|>goodbye<|im_end|>"
    assert tok.decode(pd.train[0].tokens).startswith("<|im_start|>system\nBe kind.")


def test_instruction(tok):
    pd = prepare_data(cfg([{"instruction": "Add the numbers.", "input": "2 3", "output": "5"}]), tok)
    assert (pd.format, pd.train_on) == ("instruction", "completion")
    assert trained_text(tok, pd.train[0]) == "5<|im_end|>"
    assert "Add the numbers.\n\n2 3" in tok.decode(pd.train[0].tokens)


def test_column_mapping_and_override(tok):
    data = [{"question": "2 plus 2?", "answer": "4", "text": "unused"}]
    pd = prepare_data(cfg(data, columns={"prompt": "question", "completion": "answer"}, data_format="completion"), tok)
    assert trained_text(tok, pd.train[0]) == "4<|im_end|>"
    pd = prepare_data(cfg(data, data_format="text"), tok)
    assert pd.format == "text"


class NoTemplateTok:
    "A plain HF tokenizer with its chat template removed."
    def __init__(self, tok):
        import copy
        self.t = copy.deepcopy(tok); self.t.chat_template = None
    def __getattr__(self, k): return getattr(self.t, k)
    def __call__(self, *a, **kw): return self.t(*a, **kw)
    def __len__(self): return len(self.t)


@pytest.mark.parametrize("template,expect", [("auto", "alpaca"), ("chatml", "chatml"), ("plain", "plain")])
def test_fallback_templates(tok, capsys, template, expect):
    nt = NoTemplateTok(tok)
    pd = prepare_data(cfg([{"instruction": "Say yes.", "output": "yes"}], template=template), nt)
    assert pd.template == expect
    assert f"using the '{expect}' template" in capsys.readouterr().err
    t = trained_text(tok, pd.train[0])
    assert t == "yes<|im_end|>", t


def test_model_template_wins_and_profile(tmp_path, tok):
    from finetune.config import load_config
    f = write(tmp_path/"i.json", [{"instruction": "Say yes.", "output": "yes"}], "json")
    c = load_config(profile="instruction", data=str(f), valid_fraction=0.0)
    pd = prepare_data(c, tok)
    assert (pd.template, pd.train_on) == ("model", "completion")


def test_mlx_tokenizer_wrapper_matches_hf(tiny_model, tok):
    import mlx_lm
    _, wrapper = mlx_lm.load(str(tiny_model))
    a = prepare_data(cfg([CHAT]), wrapper).train[0]
    b = prepare_data(cfg([CHAT]), tok).train[0]
    assert a.tokens == b.tokens and a.mask == b.mask


# ---- truncation, cache, splits ------------------------------------------------------------------------------------
def test_truncation_counted_and_dropped(tok):
    long = {"prompt": " ".join(["word"] * 60), "completion": " yes"}
    long_answer = {"prompt": "Count.", "completion": " ".join(["one two three"] * 20)}
    pd = prepare_data(cfg([long, long_answer, *rows(2)], max_seq_length=24), tok)
    assert len(pd.train) == 3 and max(pd.train.lengths) == 24
    assert (pd.train.stats["truncated"], pd.train.stats["dropped_truncated"]) == (1, 1)
    rep = pd.report
    assert rep.splits["train"]["dropped_truncated"] == 1 and "cut away by truncation" in str(rep)


def test_cache_second_call_does_not_tokenize(tmp_path, tok, monkeypatch):
    import finetune.data as fd
    f = write(tmp_path/"d.jsonl", rows(6), "jsonl")
    first = prepare_data(cfg(str(f)), tok)
    assert list((tmp_path/"home"/"cache"/"data").iterdir())
    def boom(*a, **k): raise AssertionError("tokenized again")
    monkeypatch.setattr(fd, "tokenize_rows", boom)
    second = prepare_data(cfg(str(f)), tok)
    assert [second.train[i].tokens for i in range(6)] == [first.train[i].tokens for i in range(6)]
    with pytest.raises(AssertionError, match="tokenized again"):  # a different setting is a different key
        prepare_data(cfg(str(f), max_seq_length=100), tok)
    f.write_text(f.read_text() + json.dumps({"prompt": "new", "completion": "row"}) + "\n")
    with pytest.raises(AssertionError, match="tokenized again"):  # so are changed contents
        prepare_data(cfg(str(f)), tok)


def test_valid_split_deterministic(tok):
    data = rows(20)
    a = prepare_data(cfg(data, valid_fraction=0.25, seed=3), tok)
    b = prepare_data(cfg(data, valid_fraction=0.25, seed=3), tok)
    c = prepare_data(cfg(data, valid_fraction=0.25, seed=4), tok)
    assert (len(a.train), len(a.valid)) == (15, 5)
    va = [a.valid[i].tokens for i in range(5)]
    assert va == [b.valid[i].tokens for i in range(5)] and va != [c.valid[i].tokens for i in range(5)]
    assert not {tuple(t) for t in va} & {tuple(a.train[i].tokens) for i in range(15)}


# ---- bad input ----------------------------------------------------------------------------------------------------
def test_malformed_json_line(tmp_path, tok):
    (tmp_path/"bad.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad.jsonl' line 3: invalid JSON"):
        prepare_data(cfg(str(tmp_path/"bad.jsonl")), tok)
    (tmp_path/"bad.json").write_text('[\n {"text": "a"},\n {"text": }\n]')
    with pytest.raises(DataError, match=r"bad.json' line 3"):
        prepare_data(cfg(str(tmp_path/"bad.json")), tok)


def test_missing_columns_lists_found_and_expected(tok):
    with pytest.raises(DataError) as e:
        prepare_data(cfg([{"ask": "q", "reply": "a"}]), tok)
    assert "found columns ask, reply" in str(e.value) and "instruction: instruction, output" in str(e.value)
    assert "question/answer" in e.value.hint
    with pytest.raises(DataError, match="lacks column"):
        prepare_data(cfg([{"text": "t"}], data_format="chat"), tok)


def test_common_layouts_train_as_the_named_columns(tok):
    "Hub datasets' usual names (GSM8K, MetaMathQA, Dolly, OpenOrca) give the tokens of the same rows with the columns named."
    layouts = [({"question": "What is 2+2?", "answer": "4"}, {"prompt": "question", "completion": "answer"}),
               ({"query": "What is 2+2?", "response": "4", "type": "GSM"}, {"prompt": "query", "completion": "response"}),
               ({"instruction": "Summarize.", "context": "A long text.", "response": "Short.", "category": "summary"},
                {"output": "response", "input": "context"}),
               ({"id": "1", "system_prompt": "Be brief.", "question": "Capital of France?", "response": "Paris."},
                {"prompt": "question", "completion": "response", "system": "system_prompt"})]
    for row, columns in layouts:
        auto, named = (prepare_data(cfg([row] * 4, valid_fraction=0.25, **kw), tok, quiet=True) for kw in ({}, {"columns": columns}))
        assert auto.report.columns == columns and named.report.columns == {}, (row, auto.report.columns)
        assert [auto.train[i] for i in range(len(auto.train))] == [named.train[i] for i in range(len(named.train))], row
    orca = prepare_data(cfg([layouts[-1][0]] * 4, valid_fraction=0.25), tok, quiet=True).train[0]
    assert "Be brief." in tok.decode(orca.tokens)  # the system prompt is kept


def test_empty_dataset(tmp_path, tok):
    (tmp_path/"empty.jsonl").write_text("")
    with pytest.raises(DataError, match="is empty"):
        prepare_data(cfg(str(tmp_path/"empty.jsonl")), tok)
    with pytest.raises(DataError, match="no example is left"):
        prepare_data(cfg([{"text": "  "}, {"text": ""}]), tok)


def test_unknown_role_and_no_assistant(tok):
    with pytest.raises(DataError, match=r"row 2: unknown role 'bot'"):
        prepare_data(cfg([CHAT, {"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]}]), tok)
    with pytest.raises(DataError, match="no assistant turn"):
        prepare_data(cfg([{"messages": [{"role": "user", "content": "x"}]}]), tok)


def test_bad_encoding(tmp_path, tok):
    (tmp_path/"latin.csv").write_bytes("prompt,completion\ncaf\xe9,ok\n".encode("latin1"))
    with pytest.raises(DataError, match="not valid UTF-8 .*line 2"):
        prepare_data(cfg(str(tmp_path/"latin.csv")), tok)


def test_missing_path_and_bad_directory(tmp_path, tok):
    (tmp_path/"notes.md").write_text("x")
    with pytest.raises(DataError, match="has no train file"):
        prepare_data(cfg(str(tmp_path)), tok)


# ---- batches ------------------------------------------------------------------------------------------------------
def toy(n=23, seed=0):
    rng = np.random.default_rng(seed)
    return TokenizedDataset.from_lists([(rng.integers(3, 400, k).tolist(), [0] + [1] * (k - 1)) for k in rng.integers(2, 30, n)])


def test_bucketing_pads_to_batch_max():
    ds = toy()
    for b in iterate_batches(ds, 4, 64, seed=1):
        L = b.inputs.shape[1]
        assert int(np.asarray(b.weights).sum(1).max()) == L  # the longest row fills the batch exactly
        assert b.n_padded == b.inputs.shape[0] * L and b.n_real <= b.n_padded


def test_resume_and_ranks_and_counts():
    ds = toy()
    full = list(iterate_batches(ds, 4, 64, seed=5, epoch=2))
    assert len(full) == num_batches(ds, 4, 64)
    rest = list(iterate_batches(ds, 4, 64, seed=5, epoch=2, start=3))
    assert [b.inputs.tolist() for b in rest] == [b.inputs.tolist() for b in full[3:]]
    r = [list(iterate_batches(ds, 2, 64, seed=5, rank=k, world_size=2)) for k in range(2)]
    assert len(r[0]) == len(r[1]) == num_batches(ds, 2, 64, world_size=2)
    plan = plan_batches(ds, 2, 64, seed=5, world_size=2)
    seen = [i for gb in plan for row in gb for i in row]
    assert len(seen) == len(set(seen))
    assert sum(b.n_tokens for rr in r for b in rr) == sum(int(ds.lengths[i]) - 1 for i in seen) and all(b.n_tokens > 0 for rr in r for b in rr)
    packed = list(iterate_batches(ds, 2, 64, pack=True, seed=1))
    assert len(packed) == num_batches(ds, 2, 64, pack=True)
    assert sum(b.n_tokens for b in packed) == int((ds.lengths - 1).sum())


def test_packed_loss_equals_token_weighted_mean(tiny_model):
    import mlx_lm
    model, _ = mlx_lm.load(str(tiny_model))
    rng = np.random.default_rng(1)
    exs = [(rng.integers(3, 400, n).tolist(), [0] + rng.integers(0, 2, n - 1).tolist()) for n in (7, 12, 4, 9, 15)]
    ds = TokenizedDataset.from_lists(exs)
    one = [batch_loss(model, make_batch(ds, [[i]], 64)) for i in range(len(ds))]
    ref = sum(loss.item() * n.item() for loss, n in one) / sum(n.item() for _, n in one)
    for b in iterate_batches(ds, 2, 32, pack=True, shuffle=False):
        assert b.segments is not None and b.inputs.shape[1] <= 32
    packed = make_batch(ds, [[0, 1, 2], [3, 4]], 64, pack=True)
    loss, n = batch_loss(model, packed)
    assert n.item() == sum(x.item() for _, x in one)
    assert abs(loss.item() - ref) < 1e-4


def test_report_on_sample_data(tok):
    rep = inspect_data(TrainConfig(data=str(ROOT/"examples/datasets/sample_instruction.json"), max_seq_length=256), tok)
    s = rep.splits
    assert rep.format == "instruction" and s["train"]["rows"] + s["valid"]["rows"] == 30
    assert 0 < s["train"]["trained_share"] < 0.5
    counts, _ = rep.histogram()
    assert counts.sum() == s["train"]["examples"]
    text = str(rep)
    assert "share trained" in text and "padding waste" in text and "token lengths (train)" in text
    assert "<table>" in rep._repr_html_()
    chats = [json.loads(line) for line in (ROOT/"examples/datasets/sample_chat.jsonl").read_text().splitlines()]
    assert len(chats) >= 25 and any(c["messages"][0]["role"] == "system" for c in chats)
    assert all(sum(m["role"] == "assistant" for m in c["messages"]) >= 2 for c in chats)


def test_split_valid_zero():
    tr, va = split_valid(toy(5), 0.0)
    assert (len(tr), len(va)) == (5, 0)
