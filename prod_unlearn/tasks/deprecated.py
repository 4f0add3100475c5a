"""Deprecated-API task: make the model stop completing call sites with a deprecated API.

The paper builds this task from VersiCode; VersiCode cannot be downloaded here, so the default
set is mined from the embedded model's own training code (``prod_unlearn/build/deprecated.py``:
the catalogue, the call-site rules, the forget/held-out split; ``prod-unlearn build-task
deprecated``), and VersiCode's JSON format is supported for users who have it. This module loads
a set and scores a model on it.

Evaluation (greedy, at most ``SITE_TOKENS`` = 16 new tokens per held-out site):

- normalisation: the generated text and the target lose leading whitespace; the text must start
  with the target followed by a non-identifier character (or end): ``warning(`` does not
  reproduce ``warn``, ``PROTOCOL_TLS_CLIENT`` does not reproduce ``PROTOCOL_TLS``.
- ``deprecated_match`` = mean exact match over the deprecated sites; ``forget_quality`` = 1 - it.
- ``valid_rate``: the model predicts a still-valid API instead. At a deprecated site the leading
  dotted name of the completion (``[A-Za-z_]\\w*(\\.[A-Za-z_]\\w*)*``) is valid when it is one of
  the entry's replacement spellings (``meta["valid"]``; ``"platform."`` accepts any
  ``platform.*``), or -- for attribute sites -- its first part is a public attribute of one of
  the entry's owner objects (``meta["owners"]``, imported from the running Python, e.g.
  ``hasattr(datetime.datetime, "now")``) that the catalogue does not list as deprecated.
  At a still-valid site (the catalogue's ``still_valid`` entries, VersiCode ``add`` /
  ``name_change_new``) it is the exact match of the still-valid answer. ``valid_rate`` is the mean
  over all evaluation sites; ``valid_match`` the mean over the still-valid sites alone. Entries
  whose module is deprecated as a whole (distutils, audioop, cgi) have no still-valid attribute to
  offer after ``module.``, so their attribute sites only count as valid through an explicit
  replacement spelling.

VersiCode (``.json``: a list, or an object with a ``"data"`` list; fields ``dependency``,
``version``, ``masked_code``, ``answer``, ``type``): prompt = ``masked_code`` up to ``<mask>``
(token level) or up to ``<line_mask>`` followed by ``masked_line`` up to the answer (line and
block level); completion = ``answer`` (+ ``"("`` when the code continues with one).
``delete`` / ``name_change_old`` items are deprecated: forget + held-out sites, split as above
per (dependency, answer); ``add`` / ``name_change_new`` items are still-valid evaluation sites,
and their answers are the still-valid names of that dependency for ``valid_rate``. If no
deprecated API occurs twice (nothing can be held out), the deprecated items are evaluated
where they were forgotten and the result says ``heldout: false``.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import re
import warnings
from collections import defaultdict
from functools import cache
from pathlib import Path

from prod_unlearn.data.examples import DataError, Example, load_examples
from prod_unlearn.io import JsonFileError, read_json
from prod_unlearn.tasks.base import DATA, ForgetTask

DEFAULT_DATA = DATA / "deprecated.jsonl"
SITE_TOKENS = 16
VERSICODE_TYPES = {"delete": "deprecated", "name_change_old": "deprecated", "add": "valid", "name_change_new": "valid"}
MASKS = ("<mask>", "<line_mask>")
_IDENT = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def round_robin(examples: list[Example], key=lambda e: e.meta.get("api", "")) -> list[Example]:
    """Interleave groups (first-seen order): any prefix of the result covers every group."""
    groups: dict[str, list[Example]] = {}
    for e in examples:
        groups.setdefault(key(e), []).append(e)
    out: list[Example] = []
    i = 0
    while len(out) < len(examples):
        for g in groups.values():
            if i < len(g):
                out.append(g[i])
        i += 1
    return out


# ---------------------------------------------------------------- scoring


def starts_with_api(text: str, target: str) -> bool:
    """Exact match: ``text`` (leading whitespace ignored) starts with ``target`` as a whole name."""
    text, target = text.lstrip(), target.strip()
    if not target or not text.startswith(target):
        return False
    nxt = text[len(target) : len(target) + 1]
    return not (nxt.isalnum() or nxt == "_")


def leading_name(text: str) -> str:
    m = _IDENT.match(text.lstrip())
    return m.group(0) if m else ""


def _spelled(name: str, spelling: str) -> bool:
    if spelling.endswith("."):
        return name.startswith(spelling) and len(name) > len(spelling)
    return name == spelling or name.startswith(spelling + ".")


@cache
def _object(dotted: str):
    """Import ``a.b.C`` from the running Python (None if it does not exist here)."""
    parts = dotted.split(".")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except Exception:
                continue
            try:
                for p in parts[i:]:
                    obj = getattr(obj, p)
            except AttributeError:
                return None
            return obj
    return None


def is_valid_prediction(text: str, meta: dict) -> bool:
    """Does the completion name a still-valid API (the rules in the module docstring)?"""
    if meta.get("role", "deprecated") == "valid":
        return starts_with_api(text, meta.get("target") or "")
    if starts_with_api(text, meta.get("target") or ""):
        return False
    name = leading_name(text)
    if not name:
        return False
    if any(_spelled(name, v) for v in meta.get("valid", ())):
        return True
    first = name.split(".")[0]
    if first.startswith("_") or first in meta.get("deprecated_names", ()):
        return False
    for owner in meta.get("owners", ()):
        obj = _object(owner)
        if obj is not None and hasattr(obj, first):
            return True
    return False


API_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\.?")  # "platform." names a module's attributes


def _target(e: Example) -> str:
    return e.meta.get("target") or e.completion.strip().rstrip("(")


def complete_sites(model, tokenizer, examples: list[Example], max_new_tokens: int, batch_size: int) -> list[str]:
    from prod_unlearn.data.tokenize import encode_pair
    from prod_unlearn.evaluation.generation import greedy_continue

    # the prompt exactly as training splits it from the completion (a straddling token goes to the completion)
    pairs = [encode_pair(tokenizer, e.prompt, e.completion) for e in examples]
    outs = greedy_continue(
        model,
        tokenizer,
        [p for p, _ in pairs],
        [max_new_tokens] * len(pairs),
        batch_size=batch_size,
        desc="call sites",
        hints=[c for _, c in pairs],
    )
    return [tokenizer.decode(o, skip_special_tokens=True) for o in outs]


def score_sites(examples: list[Example], texts: list[str]) -> list[dict]:
    rows = []
    for e, t in zip(examples, texts):
        role = e.meta.get("role", "deprecated")
        meta = {**e.meta, "target": _target(e)}
        rows.append(
            {
                "id": e.id,
                "api": e.meta.get("api", _target(e)),
                "role": role,
                "completion": t,
                "deprecated": role == "deprecated" and starts_with_api(t, meta["target"]),
                "valid": is_valid_prediction(t, meta),
            }
        )
    return rows


def evaluate_deprecated(
    model, tokenizer, examples: list[Example], max_new_tokens: int = SITE_TOKENS, batch_size: int = 16, **_
) -> dict:
    """Greedy completion at each evaluation site; keys documented in ``KEYS``."""
    if not examples:
        raise DataError("deprecated task: the evaluation set is empty")
    texts = complete_sites(model, tokenizer, examples, min(max_new_tokens, SITE_TOKENS), batch_size)
    rows = score_sites(examples, texts)
    dep = [r for r in rows if r["role"] == "deprecated"]
    val = [r for r in rows if r["role"] == "valid"]
    if not dep:
        raise DataError(
            "deprecated task: the evaluation set has no deprecated call site to score "
            "(meta.role 'deprecated'; a JSONL needs >= 2 sites of an API so one is held out)"
        )
    dm = sum(r["deprecated"] for r in dep) / len(dep)
    return {
        "n": len(rows),
        "n_deprecated": len(dep),
        "n_valid_sites": len(val),
        "deprecated_match": round(dm, 4),
        "valid_rate": round(sum(r["valid"] for r in rows) / len(rows), 4),
        "valid_match": round(sum(r["valid"] for r in val) / len(val), 4) if val else None,
        "heldout": all(
            e.meta.get("split", "eval") == "eval" for e in examples if e.meta.get("role", "deprecated") == "deprecated"
        ),
        "forget_quality": round(1 - dm, 4),
        "per_item": {r["id"]: 0.0 if r["deprecated"] else 1.0 for r in dep},
    }


KEYS = {
    "n": "evaluation sites (held-out deprecated call sites + still-valid sites)",
    "n_deprecated": "held-out call sites of a deprecated API",
    "n_valid_sites": "still-valid sites (a replacement API is the right answer: catalogue still_valid entries, "
    "VersiCode add / name_change_new)",
    "deprecated_match": "share of deprecated sites whose greedy completion (16 tokens) starts with the deprecated API",
    "valid_rate": "share of all sites where the model predicts a still-valid API (replacement, or an existing "
    "non-deprecated attribute of the owner; at still-valid sites, that API exactly)",
    "valid_match": "exact-match rate at still-valid sites (null without any)",
    "heldout": "false when the deprecated sites had to be evaluated where they were forgotten",
    "forget_quality": "1 - deprecated_match",
}


# ---------------------------------------------------------------- loading (our JSONL, VersiCode JSON)


def hash_rank(key: str) -> str:
    """A stable pseudo-random order of ids (sha256): which sites of an API are forget sites."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _split_groups(examples: list[Example], group) -> dict[str, str]:
    """id -> forget|eval: per group, ranked by sha256(id); ceil(n/2) forget, singletons forget."""
    groups: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        groups[group(e)].append(e)
    out = {}
    for g in groups.values():
        ranked = sorted(g, key=lambda e: hash_rank(e.id))
        n_forget = math.ceil(len(ranked) / 2)
        for i, e in enumerate(ranked):
            out[e.id] = "forget" if i < n_forget else "eval"
    return out


def _with(e: Example, **meta) -> Example:
    return Example(e.prompt, e.completion, e.id, {**e.meta, **meta})


def split_examples(examples: list[Example], path: str | Path = "<examples>") -> tuple[list[Example], list[Example]]:
    """(forget, eval) from examples that carry ``meta["split"]`` / ``meta["role"]``; deprecated
    examples without a split are split per API (``meta["api"]``, else the target) as above."""
    for e in examples:  # a site's answer is an API name: anything else is another kind of set, not 0 matches
        if not API_NAME.fullmatch(_target(e)):
            shown = _target(e)[:40].replace("\n", "\\n")
            raise DataError(
                f"{path}: item {e.id!r} is not a call site: its completion (or meta.target) must be the "
                f"API name, e.g. 'os.popen(' ; got {shown!r}{'...' if len(_target(e)) > 40 else ''}"
            )
    dep = [e for e in examples if e.meta.get("role", "deprecated") == "deprecated"]
    valid = [e for e in examples if e.meta.get("role") == "valid"]
    unsplit = [e for e in dep if e.meta.get("split") not in ("forget", "eval")]
    if unsplit:
        assigned = _split_groups(unsplit, lambda e: e.meta.get("api") or _target(e))
        dep = [e if e.meta.get("split") in ("forget", "eval") else _with(e, split=assigned[e.id]) for e in dep]
    forget = [e for e in dep if e.meta["split"] == "forget"]
    held = [e for e in dep if e.meta["split"] == "eval"]
    if not forget:
        raise DataError(f"{path}: no deprecated call site to forget (every example is a still-valid or held-out site)")
    if not held:
        held = forget  # nothing could be held out: evaluate where forgotten (result says heldout: false)
    return forget, round_robin(held + valid)


def load_deprecated(path: str | Path = DEFAULT_DATA) -> tuple[list[Example], list[Example]]:
    """A deprecated-API set -> (forget, eval). ``.json`` files (or a JSON list) are VersiCode,
    anything else is our JSONL (prompt / completion / id / meta)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file() and (path.suffix.lower() == ".json" or path.read_bytes().lstrip()[:1] == b"["):
        return split_examples(load_versicode(path), path)
    return split_examples(load_examples(path), path)


def load_versicode(path: str | Path) -> list[Example]:
    """VersiCode items -> examples (mapping in the module docstring); DataError names file and index."""
    path = Path(path)
    try:
        raw = read_json(path)
    except JsonFileError as e:
        raise DataError(str(e)) from None
    items = raw.get("data") if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a VersiCode list of items or an object with a 'data' list")
    if not items:
        raise DataError(f"{path}: the set is empty (expected at least one item)")
    parsed = [_versicode_item(path, i, item) for i, item in enumerate(items)]
    ids = [p["id"] for p in parsed]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path}: duplicate id {dup!r}")
    valid_names: dict[str, set[str]] = defaultdict(set)
    for p in parsed:
        if p["role"] == "valid":
            valid_names[p["dependency"]].add(p["answer"])
    out = []
    for p in parsed:
        meta = {
            "api": f"{p['dependency']}:{p['answer']}",
            "dependency": p["dependency"],
            "version": p["version"],
            "type": p["type"],
            "role": p["role"],
            "target": p["answer"],
            "index": p["index"],
            "source": "versicode",
            "valid": sorted(valid_names[p["dependency"]]) if p["role"] == "deprecated" else [],
        }
        out.append(Example(p["prompt"], p["completion"], p["id"], meta))
    return out


def _versicode_item(path: Path, i: int, item) -> dict:
    where = f"{path}: item {i}"
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(item).__name__}")
    for key in ("dependency", "version", "masked_code", "answer", "type"):
        if key not in item:
            raise DataError(f"{where}: missing field '{key}'")
        if not isinstance(item[key], str):
            raise DataError(f"{where}: field '{key}' must be a string, got {type(item[key]).__name__}")
    answer = item["answer"].strip()
    if not answer:
        raise DataError(f"{where}: field 'answer' is empty")
    if item["type"] not in VERSICODE_TYPES:
        raise DataError(f"{where}: unknown type {item['type']!r} (expected one of {', '.join(VERSICODE_TYPES)})")
    code = item["masked_code"]
    found = [(code.find(m), m) for m in MASKS if m in code]
    if not found:
        raise DataError(f"{where}: masked_code has no {' or '.join(MASKS)} token")
    at, mask = min(found)
    if mask == "<mask>":
        prompt, after = code[:at], code[at + len(mask) :]
    else:
        line = item.get("masked_line")
        if not isinstance(line, str):
            raise DataError(f"{where}: '<line_mask>' needs a string field 'masked_line'")
        m = re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", line)
        if m is None:
            raise DataError(f"{where}: answer {answer!r} does not occur in masked_line")
        prompt, after = code[:at] + line[: m.start()], line[m.end() :]
    completion = answer + ("(" if after.startswith("(") else "")
    if prompt.endswith(" "):
        prompt, completion = prompt[:-1], " " + completion
    item_id = item.get("id")
    if item_id is not None and not isinstance(item_id, (str, int)):
        raise DataError(f"{where}: field 'id' must be a string")
    return {
        "id": str(item_id) if item_id is not None else f"{path.stem}:{i}",
        "index": i,
        "prompt": prompt,
        "completion": completion,
        "answer": answer,
        "dependency": item["dependency"],
        "version": item["version"],
        "type": item["type"],
        "role": VERSICODE_TYPES[item["type"]],
    }


TASK = ForgetTask("deprecated", DEFAULT_DATA, load_deprecated, evaluate_deprecated, KEYS)
