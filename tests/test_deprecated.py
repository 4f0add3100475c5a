"""Deprecated-API task: catalogue, ast mining, split, scoring, VersiCode loading, evaluation."""
from __future__ import annotations

import json
import random
import re
import sys

import pytest

from prod_unlearn.data.corpus import SourceFile, stdlib_root
from prod_unlearn.data.examples import DataError, Example, load_examples, write_jsonl
from prod_unlearn.build import call_sites as cs, deprecated as bdep
from prod_unlearn.tasks import deprecated as dep

PY311 = sys.version_info[:2] == (3, 11)


def _stdlib(*paths: str) -> list[SourceFile]:
    root = stdlib_root()
    return [SourceFile(p, (root / p).read_text(encoding="utf-8")) for p in paths]


def _api(**kw) -> cs.DeprecatedAPI:
    base = {"id": "x.y", "deprecated_in": "3.0", "replacement": "z", "source": "https://docs.python.org/3/"}
    return cs.DeprecatedAPI(**{**base, **kw})


# ---------------------------------------------------------------- catalogue

def test_catalogue_entries_are_documented():
    apis = cs.load_catalogue()
    assert 22 <= len(apis) <= 40
    assert len({a.id for a in apis}) == len(apis)
    for a in apis:
        assert re.fullmatch(r"\d\.\d+", a.deprecated_in), a.id
        assert a.removed_in is None or re.fullmatch(r"\d\.\d+", a.removed_in), a.id
        assert a.replacement.strip(), a.id
        assert a.source.startswith(("https://docs.python.org/", "https://peps.python.org/")), a.id
        assert ("qualified" in a.match) != ("attribute" in a.match), a.id
        for owner in a.owners:  # owners must exist in the running Python (3.11 for distutils/imp)
            assert dep._object(owner) is not None, (a.id, owner)


def test_still_valid_entries_name_real_replacements():
    apis = cs.load_catalogue()
    ids = {a.id for a in apis}
    still = cs.load_still_valid(cs.CATALOGUE, apis)
    assert len(still) >= 10 and len({v.id for v in still}) == len(still)
    assert len({v.replaces for v in still}) >= 10  # spread over the deprecated APIs
    for v in still:
        assert v.replaces in ids and v.id not in ids, v.id
        assert v.source.startswith("https://docs.python.org/"), v.id
        # the replacement exists in the running Python (a protocol method that the ABC does not
        # define, MetaPathFinder.find_spec: its class exists and the documentation names it)
        assert dep._object(v.id) is not None or ("attribute" in v.match and v.source.endswith("#" + v.id)
                                                 and dep._object(v.id.rsplit(".", 1)[0]) is not None), v.id
        assert ("qualified" in v.match) != ("attribute" in v.match), v.id


def test_still_valid_entries_must_replace_a_catalogued_api(tmp_path):
    f = tmp_path / "cat.json"
    api = {"id": "a.old", "deprecated_in": "3.1", "replacement": "a.new", "source": "https://x",
           "match": {"qualified": ["a.old"]}}
    f.write_text(json.dumps({"apis": [api], "still_valid": [
        {"id": "a.new", "replaces": "a.gone", "source": "https://x", "match": {"qualified": ["a.new"]}}]}))
    with pytest.raises(DataError, match=r"cat\.json: still_valid\[0\] \(a\.new\): replaces 'a\.gone'"):
        cs.load_still_valid(f)


def test_catalogue_rejects_incomplete_entries(tmp_path):
    f = tmp_path / "cat.json"
    f.write_text(json.dumps({"apis": [{"id": "a.b", "deprecated_in": "3.1", "source": "https://x", "match": {}}]}))
    with pytest.raises(DataError, match=r"cat\.json: apis\[0\] lacks replacement"):
        cs.load_catalogue(f)


# ---------------------------------------------------------------- mining

SRC = '''import tempfile as tf
from tempfile import mktemp as mk
import warnings


def f(finder, name):
    path = tf.mktemp()
    other = mk(".py")
    loader = finder.find_module(name)
    obj.find_module(name)
    ref = tf.mktemp
    return path


def g(mk):
    return mk()
'''


def test_a_start_split_on_a_call_result_is_no_site():
    """``split: start`` on an attribute whose receiver is no dotted name (``get().attr``): there is
    no name to start the prompt before, so the use is not a site (it used to raise TypeError)."""
    api = _api(id="getchildren", match={"attribute": "getchildren"}, split="start")
    src = "y = get().getchildren()\nz = tree.getchildren()\n"
    sites = cs.find_sites([SourceFile("a.py", src)], [api])
    assert [(s.line, s.completion) for s in sites] == [(2, " tree.getchildren(")]   # the space: see the module


def test_mining_resolves_imports_receivers_and_shadowing():
    apis = [_api(id="tempfile.mktemp", match={"qualified": ["tempfile.mktemp"]}, owners=("tempfile",)),
            _api(id="finder.find_module", match={"attribute": "find_module", "receiver": "finder"})]
    sites = cs.find_sites([SourceFile("pkg/mod.py", SRC)], apis, context_lines=3)
    got = [(s.api.id, s.line, s.prompt.splitlines()[-1], s.completion, s.target, s.kind) for s in sites]
    assert got == [
        # tf.mktemp(): attribute site, prompt ends after the dot
        ("tempfile.mktemp", 7, "    path = tf.", "mktemp(", "mktemp", "attribute"),
        # mk(".py") through `from tempfile import mktemp as mk`: bare site, the space moves to the completion
        ("tempfile.mktemp", 8, "    other =", " mk(", "mk", "start"),
        ("finder.find_module", 9, "    loader = finder.", "find_module(", "find_module", "attribute"),
    ]  # not: obj.find_module (receiver), tf.mktemp without a call, g's parameter mk (shadowed)
    assert sites[0].prompt.count("\n") == 3  # three context lines + the line itself


def test_mine_adds_still_valid_sites_of_the_replacement():
    src = "import tempfile\n\ndef f():\n    a = tempfile.mktemp()\n    b = tempfile.mktemp()\n" \
          "    fd, c = tempfile.mkstemp()\n    return a, b, c\n"
    old = _api(id="tempfile.mktemp", match={"qualified": ["tempfile.mktemp"]})
    new = _api(id="tempfile.mkstemp", match={"qualified": ["tempfile.mkstemp"]}, replaces="tempfile.mktemp")
    ex = bdep.mine([old], [SourceFile("m.py", src)], still_valid=[new])
    assert sorted((e.meta["role"], e.meta["split"]) for e in ex[:2]) == [("deprecated", "eval"),
                                                                        ("deprecated", "forget")]
    assert (ex[2].meta["role"], ex[2].meta["split"]) == ("valid", "eval") and len(ex) == 3
    v = ex[-1]
    assert (v.prompt.splitlines()[-1], v.completion, v.meta["target"]) == ("    fd, c = tempfile.", "mkstemp(", "mkstemp")
    assert v.meta["api"] == "tempfile.mkstemp" and v.meta["replaces"] == "tempfile.mktemp"
    assert v.id == "tempfile.mkstemp@m.py:6:21"


def test_module_target_and_non_call_uses():
    src = "import audioop\nimport typing\nfrom typing import Text\n\ndef f(x: Text) -> typing.Text:\n" \
          "    return audioop.ulaw2lin(x, 2)\n"
    apis = [_api(id="audioop", match={"qualified": ["audioop.*"]}, split="start", target="module"),
            _api(id="typing.Text", match={"qualified": ["typing.Text"], "call": False})]
    sites = cs.find_sites([SourceFile("m.py", src)], apis)
    by = {(s.api.id, s.completion): s for s in sites}
    assert by[("audioop", " audioop.ulaw2lin(")].target == "audioop"
    assert by[("audioop", " audioop.ulaw2lin(")].prompt.endswith("\n    return")
    assert by[("typing.Text", " Text")].kind == "start"
    assert by[("typing.Text", "Text")].prompt.endswith("-> typing.")  # attribute form: split after the dot
    assert len(sites) == 3


def test_mining_counts_lines_like_ast():
    # a form feed is a line break for str.splitlines but not for ast: prompts must not shift
    src = "import tempfile\n\x0c\ndef f():\n    # \x0c page\n    return tempfile.mktemp()\n"
    api = _api(id="tempfile.mktemp", match={"qualified": ["tempfile.mktemp"]})
    (site,) = cs.find_sites([SourceFile("m.py", src)], [api])
    assert site.line == 5 and site.prompt.endswith("    return tempfile.") and site.completion == "mktemp("


@pytest.mark.skipif(not PY311, reason="line numbers of the CPython 3.11 standard library")
def test_mining_finds_known_stdlib_sites():
    apis = cs.load_catalogue()
    sites = cs.find_sites(_stdlib("http/cookiejar.py", "aifc.py", "locale.py", "importlib/_bootstrap.py"), apis)
    keys = {(s.api.id, s.file, s.line): s for s in sites}
    s = keys[("datetime.datetime.utcnow", "http/cookiejar.py", 107)]
    assert s.prompt.endswith("dt = datetime.datetime.") and s.completion == "utcnow("
    s = keys[("audioop", "aifc.py", 459)]
    assert s.completion == " audioop.alaw2lin(" and s.target == "audioop"
    s = keys[("locale.getdefaultlocale", "locale.py", 645)]  # the module's own name, bare
    assert s.prompt.endswith("loc =") and s.completion == " getdefaultlocale("
    assert ("importlib.abc.Loader.load_module", "importlib/_bootstrap.py", 619) in keys


def test_split_is_deterministic_and_per_api():
    files = _stdlib("http/cookiejar.py", "aifc.py", "sunau.py", "email/utils.py", "datetime.py")
    apis = cs.load_catalogue()
    a = bdep.mine(apis, files)
    shuffled = list(files)
    random.Random(1).shuffle(shuffled)
    b = bdep.mine(apis, shuffled)
    assert [(e.id, e.prompt, e.completion, e.meta["split"]) for e in a] == \
           [(e.id, e.prompt, e.completion, e.meta["split"]) for e in b]
    per_api: dict[str, list[str]] = {}
    for e in a:
        per_api.setdefault(e.meta["api"], []).append(e.meta["split"])
    assert per_api["audioop"].count("forget") == 5 and per_api["audioop"].count("eval") == 5
    assert sorted(per_api["datetime.datetime.utcnow"]) == ["eval", "forget"]
    one = cs.split_sites([cs.Site(apis[0], "f.py", 1, 0, "p.", "x(", "x")])
    assert one[0].split == "forget"  # a single site goes to forget only


def test_default_set_matches_its_catalogue_and_build_record():
    forget, evalset = dep.load_deprecated(dep.DEFAULT_DATA)
    record = json.loads(bdep.BUILD_RECORD.read_text())
    assert len(forget) == record["forget_sites"] and len(evalset) == record["eval_sites"]
    assert all(e.meta["split"] == "forget" for e in forget) and all(e.meta["split"] == "eval" for e in evalset)
    held = [e for e in evalset if e.meta["role"] == "deprecated"]
    valid = [e for e in evalset if e.meta["role"] == "valid"]
    assert len(held) + len(valid) == len(evalset)
    assert (len(held), len(valid)) == (record["deprecated_eval_sites"], record["valid_sites"])
    # the keep rule: every API with >= 2 sites, so each kept API has forget and held-out sites
    kept = {k for k, a in record["per_api"].items() if a["kept"]}
    assert kept == {k for k, a in record["per_api"].items() if a["forget"] + a["eval"] >= 2}
    assert {e.meta["api"] for e in forget} == {e.meta["api"] for e in held} == kept
    catalogue = {a.id: a for a in cs.load_catalogue()}
    assert set(record["per_api"]) <= set(catalogue) and record["catalogue"] == len(catalogue)
    for e in forget + held:
        a = catalogue[e.meta["api"]]
        assert e.meta["deprecated_in"] == a.deprecated_in and e.meta["replacement"] == a.replacement
        assert dep.starts_with_api(e.completion, e.meta["target"])
    still = {v.id: v for v in cs.load_still_valid()}
    for e in valid:
        assert still[e.meta["api"]].replaces == e.meta["replaces"] and e.meta["replaces"] in kept
        assert dep.starts_with_api(e.completion, e.meta["target"]) and e.meta["target"] not in catalogue
        assert dep.is_valid_prediction(e.completion, e.meta)  # the answer as written counts as valid
    # issue 8: >= 20 APIs with forget and held-out sites, >= 40 held-out sites, still-valid sites spread out
    assert len(kept) >= 20 and len(held) >= 40
    assert len(valid) >= 20 and len({e.meta["replaces"] for e in valid}) >= 10
    # any prefix holding one site per API covers every API (held-out and still-valid)
    groups = {e.meta["api"] for e in evalset}
    assert {e.meta["api"] for e in evalset[:len(groups)]} == groups


@pytest.mark.skipif(not PY311, reason="the default set is mined from the CPython 3.11 standard library")
def test_default_set_prompts_regenerate_from_the_stdlib():
    examples = load_examples(dep.DEFAULT_DATA)
    files = sorted({e.meta["file"] for e in examples})
    apis = cs.load_catalogue()
    sites = {(s.api.id, s.file, s.line, s.col): s
             for s in cs.find_sites(_stdlib(*files), apis + cs.load_still_valid(cs.CATALOGUE, apis))}
    for e in examples:
        api, loc = e.id.split("@")
        path, line, col = loc.rsplit(":", 2)
        s = sites[(api, path, int(line), int(col))]
        assert (s.prompt, s.completion, s.target) == (e.prompt, e.completion, e.meta["target"])


# ---------------------------------------------------------------- scoring

def test_exact_match_normalisation():
    assert dep.starts_with_api("warn('x')", "warn")
    assert not dep.starts_with_api("warning('x')", "warn")
    assert dep.starts_with_api("  audioop.ulaw2lin(d)", "audioop")
    assert dep.starts_with_api(" Text) -> str", " Text")
    assert not dep.starts_with_api("PROTOCOL_TLS_CLIENT", "PROTOCOL_TLS")
    assert dep.starts_with_api("PROTOCOL_TLS", "PROTOCOL_TLS")  # end of text is a boundary
    assert not dep.starts_with_api("", "x") and not dep.starts_with_api("x", "")


def test_valid_prediction_rules():
    utc = {"role": "deprecated", "target": "utcnow", "valid": ["now"], "owners": ["datetime.datetime"],
           "deprecated_names": ["utcfromtimestamp", "utcnow"]}
    assert dep.is_valid_prediction("now(datetime.timezone.utc)", utc)       # the replacement
    assert dep.is_valid_prediction("fromisoformat(s)", utc)                 # another real attribute
    assert not dep.is_valid_prediction("utcnow()", utc)                     # the deprecated API itself
    assert not dep.is_valid_prediction("utcfromtimestamp(t)", utc)         # deprecated too
    assert not dep.is_valid_prediction("_fromtimestamp(t)", utc)           # private
    assert not dep.is_valid_prediction("nowhere()", utc)                   # does not exist
    assert not dep.is_valid_prediction("\n\n", utc)
    start = {"role": "deprecated", "target": "get_platform", "valid": ["sysconfig.get_platform", "platform."]}
    assert dep.is_valid_prediction(" sysconfig.get_platform()", start)
    assert dep.is_valid_prediction(" platform.machine()", start)
    assert not dep.is_valid_prediction(" platform()", start)
    assert not dep.is_valid_prediction(" get_platform()", start)
    assert dep.is_valid_prediction("release_memory(a)", {"role": "valid", "target": "release_memory"})


def test_score_sites_on_hand_made_completions():
    ex = [Example("dt = datetime.datetime.", "utcnow(", "a",
                  {"api": "utc", "target": "utcnow", "valid": ["now"], "owners": ["datetime.datetime"]}),
          Example("dt = datetime.datetime.", "utcnow(", "b",
                  {"api": "utc", "target": "utcnow", "valid": ["now"], "owners": ["datetime.datetime"]}),
          Example("x = ", "foo(", "c", {})]  # no meta: target from the completion
    rows = dep.score_sites(ex, ["utcnow()\n", "now(tz)\n", "foo(1)"])
    assert [(r["deprecated"], r["valid"]) for r in rows] == [(True, False), (False, True), (True, False)]


# ---------------------------------------------------------------- VersiCode

def _versicode(tmp_path, items, wrap=True, name="vc.json"):
    f = tmp_path / name
    f.write_text(json.dumps({"count": len(items), "data": items} if wrap else items))
    return f


VC = [
    {"dependency": "lib", "version": "==1.0", "masked_code": "import lib\nx = lib.<mask>(1)\n",
     "answer": "old_api", "type": "delete", "id": "d1"},
    {"dependency": "lib", "version": "==1.1", "masked_code": "import lib\ny = lib.<mask>(2)\n",
     "answer": "old_api", "type": "delete", "id": "d2"},
    {"dependency": "lib", "version": "==2.0", "masked_code": "from lib import x\nz = <mask>(3)\n",
     "answer": "renamed_old", "type": "name_change_old", "id": "n1"},
    {"dependency": "lib", "version": "==2.0", "masked_code": "import lib\n<line_mask>\nprint(v)\n",
     "masked_line": "v = lib.new_api(4)", "answer": "new_api", "type": "add", "id": "a1"},
    {"dependency": "lib", "version": "==2.1", "masked_code": "import lib\nw = lib.<mask>\n",
     "answer": "renamed_new", "type": "name_change_new", "id": "n2"},
]


def test_versicode_mapping(tmp_path):
    f = _versicode(tmp_path, VC)
    ex = {e.id: e for e in dep.load_versicode(f)}
    assert (ex["d1"].prompt, ex["d1"].completion) == ("import lib\nx = lib.", "old_api(")
    assert (ex["n1"].prompt, ex["n1"].completion) == ("from lib import x\nz =", " renamed_old(")
    assert (ex["a1"].prompt, ex["a1"].completion) == ("import lib\nv = lib.", "new_api(")
    assert ex["n2"].completion == "renamed_new"
    assert [ex[i].meta["role"] for i in ("d1", "d2", "n1", "a1", "n2")] == ["deprecated"] * 3 + ["valid"] * 2
    assert ex["d1"].meta["valid"] == ["new_api", "renamed_new"] and ex["a1"].meta["valid"] == []
    assert ex["d1"].meta["version"] == "==1.0" and ex["d1"].meta["index"] == 0
    forget, evalset = dep.load_deprecated(f)
    assert {e.id for e in forget} == {"n1", sorted(["d1", "d2"], key=dep.hash_rank)[0]}
    assert [e.meta["role"] for e in evalset] == ["deprecated", "valid", "valid"]
    assert dep.load_deprecated(f) == (forget, evalset)  # deterministic
    assert len(dep.load_deprecated(_versicode(tmp_path, VC, wrap=False, name="list.json"))[0]) == 2


def test_versicode_without_repeated_api_evaluates_where_forgotten(tmp_path):
    forget, evalset = dep.load_deprecated(_versicode(tmp_path, [VC[0], VC[2], VC[3]]))
    assert {e.id for e in forget} == {"d1", "n1"}
    assert [e.id for e in evalset if e.meta["role"] == "deprecated"] == [e.id for e in forget]


@pytest.mark.parametrize("item, message", [
    ({k: v for k, v in VC[0].items() if k != "answer"}, "missing field 'answer'"),
    ({**VC[0], "type": "rename"}, "unknown type 'rename'"),
    ({**VC[0], "masked_code": "x = 1\n"}, "no <mask> or <line_mask> token"),
    ({**VC[3], "masked_line": "v = other(4)"}, "does not occur in masked_line"),
    ({**VC[3], "masked_line": None}, "needs a string field 'masked_line'"),
    ({**VC[0], "version": 1}, "field 'version' must be a string"),
    ("not an object", "expected a JSON object"),
])
def test_versicode_malformed_items_name_file_and_index(tmp_path, item, message):
    f = _versicode(tmp_path, [VC[0], VC[1], item])
    with pytest.raises(DataError, match=rf"vc\.json: item 2: .*{re.escape(message)}"):
        dep.load_deprecated(f)


def test_versicode_malformed_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json:\d+:\d+: not valid JSON"):
        dep.load_deprecated(bad)
    with pytest.raises(DataError, match=r"obj\.json: expected a VersiCode list"):
        dep.load_deprecated(_versicode(tmp_path, {"rows": []}, wrap=False, name="obj.json"))
    with pytest.raises(DataError, match=r"only_valid\.json: no deprecated call site to forget"):
        dep.load_deprecated(_versicode(tmp_path, [VC[3]], name="only_valid.json"))
    with pytest.raises(DataError, match="duplicate id 'd1'"):
        dep.load_deprecated(_versicode(tmp_path, [VC[0], {**VC[1], "id": "d1"}], name="dup.json"))


def test_plain_jsonl_is_split_per_api(tmp_path):
    f = tmp_path / "mine.jsonl"
    write_jsonl([Example(f"a{i} = t.", "warn(", f"w{i}", {}) for i in range(4)] +
                [Example("b = t.", "once(", "o", {})], f)
    forget, evalset = dep.load_deprecated(f)
    assert len(forget) == 3 and len(evalset) == 2
    assert {e.completion for e in evalset} == {"warn("} and {e.meta["split"] for e in evalset} == {"eval"}


# ---------------------------------------------------------------- evaluation and registration

def test_task_is_registered():
    from prod_unlearn.tasks import FORGET_TASKS
    task = FORGET_TASKS["deprecated"]
    assert task.default_data == dep.DEFAULT_DATA and task.load is dep.load_deprecated
    assert {"n", "forget_quality", "deprecated_match", "valid_rate"} <= set(task.keys)


def test_evaluate_end_to_end_with_micro_model(micro_dir, tmp_path):
    from prod_unlearn.tasks import evaluate
    from prod_unlearn.models.loading import load_model
    model, tok = load_model(str(micro_dir), "cpu", "fp32")
    forget, evalset = dep.load_deprecated(dep.DEFAULT_DATA)
    data = tmp_path / "small.jsonl"
    held = [e for e in evalset if e.meta["role"] == "deprecated"]
    valid = [e for e in evalset if e.meta["role"] == "valid"]
    write_jsonl(forget[:4] + held[:6], data)
    res = evaluate(model, tok, task="deprecated", data=data, with_ppl=False, max_new_tokens=512, batch_size=4)
    assert set(res) == {"task", "n", "n_deprecated", "n_valid_sites", "deprecated_match", "valid_rate",
                        "valid_match", "heldout", "forget_quality", "seconds"}
    assert res["task"] == "deprecated" and res["n"] == res["n_deprecated"] == 6 and res["n_valid_sites"] == 0
    assert res["heldout"] is True and res["valid_match"] is None
    # the default set's still-valid sites are read as such
    write_jsonl(forget[:4] + held[:3] + valid[:3], data)
    r1 = evaluate(model, tok, task="deprecated", data=data, with_ppl=False, max_new_tokens=512, batch_size=4)
    assert (r1["n"], r1["n_deprecated"], r1["n_valid_sites"]) == (6, 3, 3) and 0 <= r1["valid_match"] <= 1
    assert 0 <= res["deprecated_match"] <= 1 and 0 <= res["valid_rate"] <= 1
    assert res["forget_quality"] == pytest.approx(1 - res["deprecated_match"])
    json.dumps(res)
    # VersiCode: still-valid sites count in valid_rate and valid_match
    vc = dep.load_deprecated(_versicode(tmp_path, VC))[1]
    r2 = dep.evaluate_deprecated(model, tok, vc, batch_size=4)
    assert (r2["n"], r2["n_deprecated"], r2["n_valid_sites"]) == (3, 1, 2) and 0 <= r2["valid_match"] <= 1


@pytest.mark.skipif(not PY311, reason="the default set is mined from the CPython 3.11 standard library")
def test_build_task_cli_rebuilds_the_shipped_set(tmp_path):
    """`prod-unlearn build-task deprecated --out F` writes exactly the shipped set (and no record)."""
    from typer.testing import CliRunner
    from prod_unlearn.cli import app
    out = tmp_path / "deprecated.jsonl"
    r = CliRunner().invoke(app, ["build-task", "deprecated", "--out", str(out)], prog_name="prod-unlearn")
    assert r.exit_code == 0, r.output
    assert out.read_text() == dep.DEFAULT_DATA.read_text()
    assert not (tmp_path / "deprecated.build.json").exists()
