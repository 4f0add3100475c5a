"""Forget/retain set loading (JSONL and folders), strict validation, and encoding."""
from __future__ import annotations

import json

import pytest

from prod_unlearn.data.batching import IGNORE, collate, encode
from prod_unlearn.data.examples import DataError, Example, examples_hash, load_examples, write_jsonl

GOOD = {"prompt": "# p\n", "completion": "x = 1\n"}


def _jsonl(tmp_path, lines, name="set.jsonl"):
    f = tmp_path / name
    f.write_bytes(b"\n".join(l if isinstance(l, bytes) else l.encode() for l in lines) + b"\n")
    return f


def test_jsonl_loads_all_fields(tmp_path):
    f = _jsonl(tmp_path, [json.dumps({"id": "a", "prompt": "# p\n", "completion": "x = 1\n", "meta": {"k": 1}}),
                          "",  # blank lines are allowed
                          json.dumps({"completion": "y = 2\n"})])
    ex = load_examples(f)
    assert ex[0] == Example("# p\n", "x = 1\n", "a")
    assert ex[0].meta == {"k": 1}
    # prompt defaults to "", id to "<stem>:<line>" (line numbers count blank lines)
    assert ex[1] == Example("", "y = 2\n", "set:3")


def test_folder_loads_source_files_only(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("a = 1\n")
    (tmp_path / "pkg" / "sub" / "b.js").write_text("let b = 2;\n")
    (tmp_path / "pkg" / "README.md").write_text("not code\n")
    (tmp_path / "pkg" / ".hidden").mkdir()
    (tmp_path / "pkg" / ".hidden" / "c.py").write_text("c = 3\n")
    ex = load_examples(tmp_path / "pkg")
    assert [e.id for e in ex] == ["a.py", "sub/b.js"]
    assert all(e.prompt == "" for e in ex)
    assert ex[1].completion == "let b = 2;\n" and ex[1].meta == {"path": "sub/b.js"}


@pytest.mark.parametrize("line, needle", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    (json.dumps({"prompt": "x"}), "missing field 'completion'"),
    (json.dumps({"prompt": 3, "completion": "x"}), "field 'prompt' must be a string, got int"),
    (json.dumps({"completion": ["x"]}), "field 'completion' must be a string, got list"),
    (json.dumps({"completion": "  \n"}), "field 'completion' is empty"),
    (json.dumps({"completion": "x", "answer": "y"}), "unknown field(s) ['answer']"),
    (json.dumps({"completion": "x", "meta": "m"}), "field 'meta' must be an object"),
    (b'{"completion": "caf\xe9"}', "not valid UTF-8"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, line, needle):
    f = _jsonl(tmp_path, [json.dumps(GOOD), "", line, json.dumps(GOOD)])
    with pytest.raises(DataError) as e:
        load_examples(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}:3: "), msg
    assert needle in msg
    assert "\n" not in msg


def test_folder_undecodable_file_names_the_file(tmp_path):
    (tmp_path / "a.py").write_text("a = 1\n")
    (tmp_path / "bad.py").write_bytes(b"x = '\xff\xfe'\n")
    with pytest.raises(DataError, match=r"bad\.py: not valid UTF-8"):
        load_examples(tmp_path)


def test_folder_empty_file(tmp_path):
    (tmp_path / "a.py").write_text("   \n")
    with pytest.raises(DataError, match=r"a\.py: file is empty"):
        load_examples(tmp_path)


def test_folder_without_source_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(DataError, match="holds no source files"):
        load_examples(tmp_path)


def test_empty_jsonl(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: the set is empty"):
        load_examples(f)


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file or folder"):
        load_examples(tmp_path / "nope.jsonl")


def test_duplicate_ids(tmp_path):
    f = _jsonl(tmp_path, [json.dumps({"id": "a", "completion": "x"}), json.dumps({"id": "b", "completion": "y"}),
                          json.dumps({"id": "a", "completion": "z"})])
    with pytest.raises(DataError, match=r"set\.jsonl: duplicate id 'a'"):
        load_examples(f)


def test_write_jsonl_round_trip_and_hash(tmp_path):
    ex = [Example("p", "c\n", "1", {"m": [1]}), Example("", "d√\n", "2")]
    write_jsonl(ex, tmp_path / "o.jsonl")
    back = load_examples(tmp_path / "o.jsonl")
    assert back == ex and back[0].meta == {"m": [1]}
    assert examples_hash(back) == examples_hash(ex)
    assert examples_hash(ex[::-1]) != examples_hash(ex)
    assert examples_hash([Example("p", "c\n!", "1"), ex[1]]) != examples_hash(ex)


# ------------------------------------------------------------------ encode / collate

def test_loss_mask_covers_exactly_the_completion(tokenizer):
    ex = [Example("# add two numbers\n", "def add(a, b):\n    return a + b\n", "a"),
          Example("", "print(1)\n", "b")]
    enc = encode(ex, tokenizer, max_length=64)
    for e, x in zip(enc, ex):
        p = tokenizer(x.prompt, add_special_tokens=False)["input_ids"] if x.prompt else []
        c = tokenizer(x.completion, add_special_tokens=False)["input_ids"]
        assert e.input_ids == [tokenizer.bos_token_id] + p + c
        assert e.prompt_len == 1 + len(p)
        assert tokenizer.decode(e.input_ids[e.prompt_len:]) == x.completion
    b = collate(enc, tokenizer.pad_token_id)
    for r, e in enumerate(enc):
        n = len(e.input_ids)
        labels = b["labels"][r]
        assert (labels[:e.prompt_len] == IGNORE).all()              # BOS + prompt: no loss
        assert labels[e.prompt_len:n].tolist() == e.input_ids[e.prompt_len:]  # every completion token
        assert (labels[n:] == IGNORE).all()                          # padding: no loss
        assert b["attention_mask"][r].tolist() == [1] * n + [0] * (b["input_ids"].size(1) - n)
        assert (b["input_ids"][r, n:] == tokenizer.pad_token_id).all()


def test_long_prompt_is_left_truncated(tokenizer):
    prompt = "".join(f"# line {i}\n" for i in range(40))
    completion = "def add(a, b):\n    return a + b\n"
    (e,) = encode([Example(prompt, completion, "x")], tokenizer, max_length=32)
    full_prompt = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert e.prompt_len == 16 and e.input_ids[:16] == full_prompt[-16:]   # the prompt's END survives
    assert e.input_ids[16:] == c[:16] and len(e.input_ids) == 32


def test_short_prompt_keeps_everything_and_completion_is_cut(tokenizer):
    completion = "".join(f"x{i} = {i}\n" for i in range(30))
    (e,) = encode([Example("# p\n", completion, "x")], tokenizer, max_length=24)
    p = tokenizer("# p\n", add_special_tokens=False)["input_ids"]
    assert e.input_ids[:e.prompt_len] == [tokenizer.bos_token_id] + p
    assert len(e.input_ids) == 24


# ------------------------------------------------------------------ tables and datasets folders

def _formats(rows: list[dict], tmp_path) -> dict:
    """The same rows as a datasets folder, Parquet and CSV (the ways users hold their data)."""
    import csv as csv_mod

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    paths = {"datasets": tmp_path / "ds", "parquet": tmp_path / "set.parquet", "csv": tmp_path / "set.csv"}
    datasets.Dataset.from_list(rows).save_to_disk(str(paths["datasets"]))
    pq.write_table(pa.Table.from_pylist(rows), paths["parquet"])
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        w = csv_mod.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()} for r in rows)
    return paths


def test_tables_and_datasets_folders_give_the_jsonl_set(tmp_path):
    """Every format of the shipped copyright set has the JSONL's hash (ids, prompts, completions)
    and its meta; a completion longer than csv's 128 KiB field limit survives."""
    from prod_unlearn.tasks import default_forget_sets
    src = default_forget_sets()["copyright"]
    want = load_examples(src)
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    rows.append({"id": "big.py", "prompt": "", "completion": "x = 1  # ,\"\n" * 20_000, "meta": {}})
    want = want + [Example("", rows[-1]["completion"], "big.py")]
    for name, path in _formats(rows, tmp_path).items():
        got = load_examples(path)
        assert examples_hash(got) == examples_hash(want), name
        assert [e.meta for e in got] == [e.meta for e in want], name


def test_column_mapping_and_table_errors(tmp_path):
    """Other column names are mapped; a wrong mapping is one error naming the columns; a bad row names
    the file and row; the shipped sets keep the standard schema whatever the mapping."""
    from prod_unlearn.data.examples import use_columns
    from prod_unlearn.tasks import default_forget_sets
    rows = [{"instruction": "# add\n", "code": "def add(a, b):\n    return a + b\n", "licence": "MIT"},
            {"instruction": "", "code": "x = 2\n", "licence": "MIT"}]
    paths = _formats(rows, tmp_path)
    for path in paths.values():
        with pytest.raises(DataError, match=r"no column 'completion' \(columns: instruction, code, licence; map"):
            load_examples(path)
    try:
        use_columns("instruction", "code")
        for path in paths.values():
            got = load_examples(path)
            assert [(e.prompt, e.completion) for e in got] == [("# add\n", rows[0]["code"]), ("", "x = 2\n")]
            assert got[1].id.endswith(":2")
        assert len(load_examples(default_forget_sets()["copyright"])) == 50
        with pytest.raises(DataError, match="two different, non-empty column names"):
            use_columns("code", "code")
    finally:
        use_columns()
    bad = _formats([{"completion": "ok\n"}, {"completion": "  "}], tmp_path / "b")
    for path in bad.values():
        with pytest.raises(DataError, match=r": row 2: column 'completion' is empty$"):
            load_examples(path)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_examples(tmp_path / "broken.parquet")
    (tmp_path / "latin.csv").write_bytes(b"completion\ncaf\xe9\n")
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_examples(tmp_path / "latin.csv")
