"""Build the default deprecated-API set from the embedded model's training code
(``prod-unlearn build-task deprecated``; scoring: ``prod_unlearn/tasks/deprecated.py``).
(The catalogue and the AST resolver that finds call sites: ``build/call_sites.py``.)

The set is mined from the CPython 3.11 standard library's training split
(``split_corpus(...)["train"]``).

Catalogue (``assets/data/deprecated_apis.json``): one entry per deprecated API with the Python
version that deprecated it, its replacement, the official documentation that says so, and a
``match`` rule that finds its uses with ``ast``:

- ``{"qualified": [...]}``: names/attributes whose import-resolved dotted name matches one of the
  patterns (``fnmatch``: ``audioop.*``). ``x.y`` resolves through the file's imports
  (``from distutils.util import get_platform`` -> ``distutils.util.get_platform``); a bare name
  that is neither imported nor bound in the enclosing function resolves to the file's own module
  (``get_platform()`` inside ``distutils/util.py``).
- ``{"attribute": name, "receiver": regex}``: method calls on objects whose type ``ast`` cannot
  know (``finder.find_module(...)``); the receiver's source text must fullmatch the regex.
- ``"call": false`` also takes non-call uses (``typing.Text`` annotations); otherwise only the
  function position of a call counts. ``"files"``: optional regex on the file path.

Call sites -> examples (one per site):

- where the prompt ends: at an ``x.name`` use of an entry with ``split: "attribute"`` (the
  default), right after the receiver's dot, so the completion is the API name
  (``"        t."`` -> ``"setDaemon("``); for ``split: "start"`` entries (deprecated modules:
  ``audioop.ulaw2lin``) and for bare names, before the whole dotted name. The prompt is the
  site's line up to there plus up to ``CONTEXT_LINES`` (20) preceding lines. A prompt that ends
  in a space gives that space to the completion, so that the prompt/completion boundary falls
  where a byte-level BPE pre-tokeniser splits (`` get_platform`` is one pre-token).
  ``meta["site"]`` says which (``attribute`` / ``start``).
- completion = the API token(s) as written at the site, plus ``"("`` when the call's parenthesis
  follows directly (``"find_module("``, ``" get_platform("``, ``" audioop.ulaw2lin("``).
- ``meta["target"]`` = what counts as reproducing the deprecated API: the completion without
  ``"("`` and surrounding space, or for ``target: "module"`` entries the module name alone
  (any ``audioop.*`` call reproduces the deprecated module).
- at most ``MAX_SITES_PER_API`` (16) sites per API -- the first 16 by sha256 of
  ``api|file|line|col`` -- so that no API dominates the set.
- split: per API the sites are ordered by that sha256; the first ``ceil(n/2)`` are the forget
  (unlearning) sites, the rest the held-out evaluation sites (``meta["split"]`` = ``forget`` /
  ``eval``). An API with a single site goes to forget only. A JSONL without ``meta["split"]``
  is split the same way per ``meta["api"]`` (else per target), ranking by example id.
- kept: every catalogued API with at least ``MIN_SITES`` (2) sites, so that it has both forget
  and held-out sites. No model takes part in the choice: the embedded model is pretrained on
  every site of the default set (forget and held-out alike), so that forgetting has something
  to remove and the held-out figure is not inflated by selection.
- still-valid sites: the catalogue's ``still_valid`` entries name replacement APIs
  (``replaces``: the catalogued deprecated API; ``importlib.abc.Loader.exec_module`` replaces
  ``load_module``) with a ``match`` rule like the ones above; their call sites in the same
  corpus -- at most ``MAX_VALID_SITES_PER_API`` (3) per entry, first by sha256, for kept APIs
  only -- are evaluation sites with ``meta["role"] = "valid"``, ``meta["replaces"]`` and
  ``meta["target"]`` = the replacement as written there: the right answer is the still-valid
  API, so ``valid_match`` is measured on the default set.
- ``deprecated.build.json`` records the rule and every catalogued API's site counts and whether
  it was kept, and the still-valid entries' counts. Both sets are ordered round-robin over APIs
  (held-out and still-valid sites together), so any prefix (``bench --max-items``) long enough
  to hold one site per API covers them all.
- the default set: 28 of the 30 catalogued APIs (two have a single site), 87 forget sites,
  129 evaluation sites = 80 held-out deprecated sites + 49 still-valid sites of 17 replacements.
"""

from __future__ import annotations

import platform
from collections import defaultdict
from pathlib import Path

from prod_unlearn.build.call_sites import (
    CATALOGUE,
    CONTEXT_LINES,
    DeprecatedAPI,
    Site,
    deprecated_names,
    find_sites,
    load_catalogue,
    load_still_valid,
    site_example,
    split_sites,
    valid_example,
)
from prod_unlearn.data.examples import Example, write_jsonl
from prod_unlearn.tasks.base import DATA
from prod_unlearn.tasks.deprecated import DEFAULT_DATA, hash_rank, round_robin

BUILD_RECORD = DATA / "deprecated.build.json"


MAX_SITES_PER_API = 16
MAX_VALID_SITES_PER_API = 3
MIN_SITES = 2


def _cap(sites: list[Site], max_sites: int) -> list[Site]:
    """At most ``max_sites`` per API (the first by sha256 rank of the site key), in mining order."""
    by_api: dict[str, list[Site]] = defaultdict(list)
    for s in sites:
        by_api[s.api.id].append(s)
    kept = []
    for group in by_api.values():
        kept += sorted(group, key=lambda s: hash_rank(s.key))[:max_sites]
    order = {id(s): i for i, s in enumerate(sites)}
    return sorted(kept, key=lambda s: order[id(s)])


def mine(
    apis: list[DeprecatedAPI] | None = None,
    files=None,
    context_lines: int = CONTEXT_LINES,
    max_sites: int = MAX_SITES_PER_API,
    still_valid: list[DeprecatedAPI] | None = None,
    max_valid: int = MAX_VALID_SITES_PER_API,
) -> list[Example]:
    """Catalogue -> split examples of every API, then the still-valid sites (role ``valid``,
    split ``eval``) of the replacements of those APIs. At most ``max_sites`` sites per deprecated
    API and ``max_valid`` per still-valid entry (the first by sha256 rank), so no API dominates."""
    from prod_unlearn.data.corpus import list_sources, split_corpus, stdlib_root

    apis = apis if apis is not None else load_catalogue()
    if still_valid is None:
        ids = {a.id for a in apis}
        still_valid = [v for v in load_still_valid(CATALOGUE, load_catalogue()) if v.replaces in ids]
    files = files if files is not None else split_corpus(list_sources(stdlib_root()))["train"]
    sites = find_sites(files, list(apis) + list(still_valid), context_lines)
    dep_ids = {a.id for a in apis}
    dep_names = deprecated_names(apis)
    deprecated = _cap([s for s in sites if s.api.id in dep_ids and not s.api.replaces], max_sites)
    valid = _cap([s for s in sites if s.api.replaces], max_valid)
    return [site_example(s, dep_names) for s in split_sites(deprecated)] + [valid_example(s) for s in valid]


def build(out: str | Path = DEFAULT_DATA, min_sites: int = MIN_SITES) -> dict:
    """Mine, keep every API with at least ``min_sites`` sites (so it has forget and held-out
    sites) and the still-valid sites of the kept APIs' replacements, write the set (and, when it
    is the shipped set, its build record)."""
    examples = mine()
    per_api: dict[str, dict] = {}
    for e in examples:
        if e.meta["role"] != "deprecated":
            continue
        a = per_api.setdefault(e.meta["api"], {"deprecated_in": e.meta["deprecated_in"], "forget": 0, "eval": 0})
        a[e.meta["split"]] += 1
    for a in per_api.values():
        a["kept"] = a["forget"] + a["eval"] >= min_sites
    keep = {k for k, a in per_api.items() if a["kept"]}
    per_valid: dict[str, dict] = {}
    for e in examples:
        if e.meta["role"] == "valid" and e.meta["replaces"] in keep:
            per_valid.setdefault(e.meta["api"], {"replaces": e.meta["replaces"], "eval": 0})["eval"] += 1
    chosen = [e for e in examples if e.meta["api"] in keep or e.meta["api"] in per_valid]
    forget = round_robin([e for e in chosen if e.meta["split"] == "forget"])
    held = [e for e in chosen if e.meta["split"] == "eval" and e.meta["role"] == "deprecated"]
    valid = [e for e in chosen if e.meta["role"] == "valid"]
    evalset = round_robin(held + valid)
    write_jsonl(forget + evalset, out)
    summary = {
        "python": platform.python_version(),
        "corpus": "split_corpus(list_sources(stdlib_root()))['train']",
        "catalogue": len(load_catalogue()),
        "apis_found": len(per_api),
        "apis_kept": len(keep),
        "forget_sites": len(forget),
        "eval_sites": len(evalset),
        "deprecated_eval_sites": len(held),
        "valid_sites": len(valid),
        "valid_apis": len(per_valid),
        "rule": f"keep every catalogued API with >= {min_sites} call sites (so it has forget and held-out sites; "
        f"no model decides: the embedded model is pretrained on every site); at most {MAX_SITES_PER_API} "
        f"sites per API; still-valid sites: at most {MAX_VALID_SITES_PER_API} call sites of each "
        f"replacement entry (catalogue 'still_valid') of a kept API, evaluation only",
        "per_api": per_api,
        "still_valid": per_valid,
    }
    if Path(out).resolve() == DEFAULT_DATA.resolve():
        from prod_unlearn.io import atomic_write_json

        atomic_write_json(BUILD_RECORD, summary)
    return summary
