"""Deprecated-API task: make the model stop completing call sites with a deprecated API.

The paper builds this task from VersiCode; VersiCode cannot be downloaded here, so the default
set is mined from the embedded model's own training code (the CPython 3.11 standard library,
``split_corpus(...)["train"]``), and VersiCode's JSON format is supported for users who have it.

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
  ``name_change_new``) it is the exact match of the still-valid answer. ``valid_rate`` is the mean over all evaluation sites; ``valid_match``
  the mean over the still-valid sites alone. Entries whose module is deprecated as a whole
  (distutils, audioop, cgi) have no still-valid attribute to offer after ``module.``, so their
  attribute sites only count as valid through an explicit replacement spelling.

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

import ast
import fnmatch
import hashlib
import importlib
import json
import math
import platform
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from prod_unlearn.data.examples import DataError, Example, load_examples, write_jsonl
from prod_unlearn.models.loading import ASSETS

DATA = ASSETS / "data"
CATALOGUE = DATA / "deprecated_apis.json"
DEFAULT_DATA = DATA / "deprecated.jsonl"
BUILD_RECORD = DATA / "deprecated.build.json"
CONTEXT_LINES = 20
SITE_TOKENS = 16
VERSICODE_TYPES = {"delete": "deprecated", "name_change_old": "deprecated",
                   "add": "valid", "name_change_new": "valid"}
MASKS = ("<mask>", "<line_mask>")
_IDENT = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


# ---------------------------------------------------------------- catalogue

@dataclass(frozen=True)
class DeprecatedAPI:
    id: str                      # dotted name of the API (or module)
    deprecated_in: str           # Python version that deprecated it
    replacement: str             # what to use instead (prose)
    source: str                  # official documentation URL that states the deprecation
    match: dict                  # how to find its uses (see the module docstring)
    removed_in: str | None = None
    valid: tuple[str, ...] = ()  # replacement spellings valid at the site's position
    owners: tuple[str, ...] = () # objects whose other public attributes are still-valid APIs
    split: str = "attribute"     # where the prompt ends: "attribute" | "start"
    target: str = "name"         # what reproduces the API: "name" | "module"
    also_deprecated: tuple[str, ...] = ()  # other deprecated attributes of the owners
    note: str = ""
    replaces: str = ""           # still-valid entries only: the catalogued deprecated API it replaces

    @property
    def name(self) -> str:
        """The deprecated attribute's name (an attribute match, else the id's last part)."""
        attr = self.match.get("attribute")
        return attr if isinstance(attr, str) else self.id.rsplit(".", 1)[-1]


REQUIRED = ("id", "deprecated_in", "replacement", "source", "match")


def load_catalogue(path: str | Path = CATALOGUE) -> list[DeprecatedAPI]:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read the catalogue ({e})") from None
    out = []
    for i, item in enumerate(raw.get("apis", []) if isinstance(raw, dict) else []):
        missing = [k for k in REQUIRED if not item.get(k)]
        if missing:
            raise DataError(f"{path}: apis[{i}] lacks {', '.join(missing)}")
        fields = {k: v for k, v in item.items() if k in DeprecatedAPI.__dataclass_fields__}
        for k in ("valid", "owners", "also_deprecated"):
            fields[k] = tuple(item.get(k) or ())
        if fields.get("split", "attribute") not in ("attribute", "start") or \
                fields.get("target", "name") not in ("name", "module"):
            raise DataError(f"{path}: apis[{i}] ({item['id']}): split must be attribute|start, target name|module")
        if not ("qualified" in item["match"]) ^ ("attribute" in item["match"]):
            raise DataError(f"{path}: apis[{i}] ({item['id']}): match needs exactly one of 'qualified', 'attribute'")
        out.append(DeprecatedAPI(**fields))
    if not out:
        raise DataError(f"{path}: no 'apis' entries")
    return out


def load_still_valid(path: str | Path = CATALOGUE, apis: list[DeprecatedAPI] | None = None) -> list[DeprecatedAPI]:
    """The catalogue's ``still_valid`` entries (replacement APIs whose call sites are still-valid
    evaluation sites): ``id``, ``replaces`` (a catalogued deprecated API), ``source``, ``match``."""
    path = Path(path)
    raw = json.loads(path.read_text(encoding="utf-8"))
    apis = apis if apis is not None else load_catalogue(path)
    by_id = {a.id: a for a in apis}
    out = []
    for i, item in enumerate(raw.get("still_valid", []) if isinstance(raw, dict) else []):
        missing = [k for k in ("id", "replaces", "source", "match") if not item.get(k)]
        if missing:
            raise DataError(f"{path}: still_valid[{i}] lacks {', '.join(missing)}")
        if item["replaces"] not in by_id:
            raise DataError(f"{path}: still_valid[{i}] ({item['id']}): replaces {item['replaces']!r}, "
                            "which is not a catalogued API")
        if not ("qualified" in item["match"]) ^ ("attribute" in item["match"]):
            raise DataError(f"{path}: still_valid[{i}] ({item['id']}): match needs exactly one of 'qualified', 'attribute'")
        old = by_id[item["replaces"]]
        out.append(DeprecatedAPI(id=item["id"], deprecated_in=old.deprecated_in, replacement=old.replacement,
                                 source=item["source"], match=item["match"], replaces=old.id,
                                 split=item.get("split", "attribute"), note=item.get("note", "")))
    return out


# ---------------------------------------------------------------- mining call sites

@dataclass
class Site:
    api: DeprecatedAPI
    file: str
    line: int                    # 1-based line of the completion's first character
    col: int                     # 0-based character column of it
    prompt: str
    completion: str
    target: str
    kind: str = "attribute"      # attribute: prompt ends after "receiver."; start: before the name
    split: str = ""              # forget | eval (set by split_sites)

    @property
    def key(self) -> str:
        return f"{self.api.id}|{self.file}|{self.line}|{self.col}"


def _module_name(path: str) -> str:
    mod = path[:-3] if path.endswith(".py") else path
    mod = mod.replace("/", ".")
    return mod[:-len(".__init__")] if mod.endswith(".__init__") else mod


def _import_map(tree: ast.AST, module: str, is_pkg: bool) -> dict[str, str]:
    """alias -> dotted name for every import in the file (any scope; later ones win)."""
    imap: dict[str, str] = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names:
                imap[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                parts = module.split(".")
                parts = parts if is_pkg else parts[:-1]
                parts = parts[:len(parts) - (n.level - 1)] if n.level > 1 else parts
                base = ".".join(parts + ([base] if base else []))
            for a in n.names:
                if a.name != "*":
                    imap[a.asname or a.name] = f"{base}.{a.name}" if base else a.name
    return imap


def _dotted(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id] + parts[::-1]
    return None


def _local_names(func: ast.AST) -> set[str]:
    names = {a.arg for a in ast.walk(func.args) if isinstance(a, ast.arg)} if hasattr(func, "args") else set()
    for n in ast.walk(func):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            names.add(n.id)
    return names


class _Parents(ast.NodeVisitor):
    def __init__(self):
        self.parent: dict[int, ast.AST] = {}

    def generic_visit(self, node):
        for child in ast.iter_child_nodes(node):
            self.parent[id(child)] = node
        super().generic_visit(node)


def _source_lines(text: str) -> list[str]:
    """Lines as ``ast`` numbers them (only \\n, \\r\\n, \\r end a line; str.splitlines also
    splits on form feeds and other separators), with their line ends."""
    return re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", text)


def _char_col(line: str, byte_col: int) -> int:
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


def find_sites(files, apis: list[DeprecatedAPI], context_lines: int = CONTEXT_LINES) -> list[Site]:
    """Every use of a catalogued API in ``files`` (SourceFile-like: .path, .text), in catalogue
    order, then file, line, column."""
    per_api: dict[str, list[Site]] = {a.id: [] for a in apis}
    for f in sorted(files, key=lambda f: f.path):
        try:
            tree = ast.parse(f.text)
        except SyntaxError:
            continue
        module = _module_name(f.path)
        imap = _import_map(tree, module, f.path.endswith("__init__.py"))
        parents = _Parents()
        parents.visit(tree)
        ctx = _FileContext(f, module, imap, parents, _source_lines(f.text))
        seen: set[tuple[str, int, int]] = set()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Name, ast.Attribute)) or not isinstance(node.ctx, ast.Load):
                continue
            for api in apis:
                site = _match(api, node, ctx, context_lines)
                if site is not None and (api.id, site.line, site.col) not in seen:
                    seen.add((api.id, site.line, site.col))
                    per_api[api.id].append(site)
    out = []
    for api in apis:
        out += sorted(per_api[api.id], key=lambda s: (s.file, s.line, s.col))
    return out


class _FileContext:
    """One parsed file with per-node caches (resolution, call position, locals per function)."""

    def __init__(self, f, module: str, imap: dict[str, str], parents: _Parents, lines: list[str]):
        self.f, self.module, self.imap, self.parents, self.lines = f, module, imap, parents, lines
        self._resolved: dict[int, str | None] = {}
        self._locals: dict[int, set[str]] = {}

    def is_call(self, node) -> bool:
        p = self.parents.parent.get(id(node))
        return isinstance(p, ast.Call) and p.func is node

    def is_dotted_root(self, node) -> bool:
        return isinstance(node, ast.Name) and isinstance(self.parents.parent.get(id(node)), ast.Attribute)

    def resolve(self, node, own_module: bool = True) -> str | None:
        """Dotted name of ``node`` through the file's imports; a bare name that is neither
        imported nor bound in its function resolves to the file's own module (own_module)."""
        key = id(node)
        if key not in self._resolved:
            self._resolved[key] = self._resolve(node)
        q = self._resolved[key]
        if q is not None and q.startswith("\0"):
            return q[1:] if own_module else None
        return q

    def _resolve(self, node) -> str | None:
        parts = _dotted(node)
        if parts is None:
            return None
        root = parts[0]
        # a name bound in the enclosing function (parameter, assignment) is a local, whatever
        # the module imports under that name
        p = self.parents.parent.get(id(node))
        while p is not None and not isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            p = self.parents.parent.get(id(p))
        if p is not None:
            if id(p) not in self._locals:
                self._locals[id(p)] = _local_names(p)
            if root in self._locals[id(p)]:
                return None
        if root in self.imap:
            return ".".join([self.imap[root]] + parts[1:])
        if not isinstance(node, ast.Name):
            return None
        return f"\0{self.module}.{root}"


def _match(api: DeprecatedAPI, node, ctx: _FileContext, context_lines: int) -> Site | None:
    m = api.match
    is_call = ctx.is_call(node)
    if m.get("call", True) and not is_call:
        return None
    if m.get("files") and not re.search(m["files"], ctx.f.path):
        return None
    if "attribute" in m:
        names = [m["attribute"]] if isinstance(m["attribute"], str) else m["attribute"]
        if not isinstance(node, ast.Attribute) or node.attr not in names:
            return None
        if m.get("receiver") and not re.fullmatch(m["receiver"], ast.unparse(node.value)):
            return None
    else:
        if ctx.is_dotted_root(node):
            return None  # the root of a dotted name: the Attribute node is the use
        if m.get("bare_only") and not isinstance(node, ast.Name):
            return None
        # a deprecated module is used through its name: x.y, never a bare name of its own code
        q = ctx.resolve(node, own_module=api.target != "module")
        if q is None or not any(fnmatch.fnmatchcase(q, pat) for pat in m["qualified"]):
            return None
    return _make_site(api, node, is_call, ctx.f, ctx.lines, context_lines)


def _make_site(api: DeprecatedAPI, node, is_call: bool, f, lines: list[str], context_lines: int) -> Site | None:
    if node.lineno != node.end_lineno:
        return None  # a dotted name broken over lines: not a natural completion point
    line = lines[node.lineno - 1]
    start, end = _char_col(line, node.col_offset), _char_col(line, node.end_col_offset)
    kind = "attribute" if isinstance(node, ast.Attribute) and api.split == "attribute" else "start"
    if kind == "attribute":
        start = end - len(node.attr)
        if line[start:end] != node.attr or line[start - 1] != ".":
            return None  # "obj . attr" spacing
    elif line[start:end] != ".".join(_dotted(node)):
        return None  # "mod . attr" spacing (or a position ast and the text disagree on)
    completion = line[start:end]
    if is_call and line[end:end + 1] == "(":
        completion += "("
    prompt = "".join(lines[max(0, node.lineno - 1 - context_lines):node.lineno - 1]) + line[:start]
    if prompt.endswith(" "):
        prompt, completion = prompt[:-1], " " + completion
    name = completion.strip().rstrip("(")
    target = name.split(".")[0] if api.target == "module" else name
    return Site(api, f.path, node.lineno, start, prompt, completion, target, kind)


def split_sites(sites: list[Site]) -> list[Site]:
    """Per API: order by sha256 of the site key; first ceil(n/2) forget, the rest eval."""
    by_api: dict[str, list[Site]] = defaultdict(list)
    for s in sites:
        by_api[s.api.id].append(s)
    for group in by_api.values():
        ranked = sorted(group, key=lambda s: hashlib.sha256(s.key.encode()).hexdigest())
        n_forget = len(ranked) if len(ranked) == 1 else math.ceil(len(ranked) / 2)
        for i, s in enumerate(ranked):
            s.split = "forget" if i < n_forget else "eval"
    return sites


def _deprecated_names(apis: list[DeprecatedAPI]) -> dict[str, list[str]]:
    """owner -> attribute names the catalogue lists as deprecated on it."""
    out: dict[str, set[str]] = defaultdict(set)
    for a in apis:
        for o in a.owners:
            out[o].add(a.name)
            out[o].update(a.also_deprecated)
    return {o: sorted(v) for o, v in out.items()}


def site_example(s: Site, dep_names: dict[str, list[str]]) -> Example:
    owners = list(s.api.owners) if s.kind == "attribute" else []
    meta = {"api": s.api.id, "deprecated_in": s.api.deprecated_in, "replacement": s.api.replacement,
            "file": s.file, "line": s.line, "split": s.split, "role": "deprecated", "site": s.kind, "target": s.target,
            "valid": list(s.api.valid), "owners": owners,
            "deprecated_names": sorted({n for o in owners for n in dep_names.get(o, [])})}
    return Example(s.prompt, s.completion, f"{s.api.id}@{s.file}:{s.line}:{s.col}", meta)


def valid_example(s: Site) -> Example:
    """A still-valid site: the replacement API is the right answer (``valid_match``)."""
    meta = {"api": s.api.id, "replaces": s.api.replaces, "file": s.file, "line": s.line, "split": "eval",
            "role": "valid", "site": s.kind, "target": s.target, "valid": [], "owners": [], "deprecated_names": []}
    return Example(s.prompt, s.completion, f"{s.api.id}@{s.file}:{s.line}:{s.col}", meta)


def round_robin(examples: list[Example], key=lambda e: e.meta.get("api", "")) -> list[Example]:
    """Interleave groups (first-seen order): any prefix of the result covers every group."""
    groups: dict[str, list[Example]] = {}
    for e in examples:
        groups.setdefault(key(e), []).append(e)
    out, i = [], 0
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
    nxt = text[len(target):len(target) + 1]
    return not (nxt.isalnum() or nxt == "_")


def leading_name(text: str) -> str:
    m = _IDENT.match(text.lstrip())
    return m.group(0) if m else ""


def _spelled(name: str, spelling: str) -> bool:
    if spelling.endswith("."):
        return name.startswith(spelling) and len(name) > len(spelling)
    return name == spelling or name.startswith(spelling + ".")


@lru_cache(maxsize=None)
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


def _target(e: Example) -> str:
    return e.meta.get("target") or e.completion.strip().rstrip("(")


def complete_sites(model, tokenizer, examples: list[Example], max_new_tokens: int = SITE_TOKENS,
                   batch_size: int = 16, desc: str = "call sites") -> list[str]:
    from prod_unlearn.evaluation.generation import greedy_continue
    from prod_unlearn.data.tokenize import encode_pair
    # the prompt exactly as training splits it from the completion (a straddling token goes to the completion)
    prompts = [encode_pair(tokenizer, e.prompt, e.completion)[0] for e in examples]
    outs = greedy_continue(model, tokenizer, prompts, [max_new_tokens] * len(prompts), batch_size=batch_size, desc=desc)
    return [tokenizer.decode(o, skip_special_tokens=True) for o in outs]


def score_sites(examples: list[Example], texts: list[str]) -> list[dict]:
    rows = []
    for e, t in zip(examples, texts):
        role = e.meta.get("role", "deprecated")
        meta = {**e.meta, "target": _target(e)}
        rows.append({"id": e.id, "api": e.meta.get("api", _target(e)), "role": role, "completion": t,
                     "deprecated": role == "deprecated" and starts_with_api(t, meta["target"]),
                     "valid": is_valid_prediction(t, meta)})
    return rows


def evaluate_deprecated(model, tokenizer, examples: list[Example], max_new_tokens: int = SITE_TOKENS,
                        batch_size: int = 16, site_tokens: int = SITE_TOKENS, **_) -> dict:
    """Greedy completion at each evaluation site; keys documented in ``KEYS``."""
    if not examples:
        raise DataError("deprecated task: the evaluation set is empty")
    texts = complete_sites(model, tokenizer, examples, min(max_new_tokens, site_tokens), batch_size)
    rows = score_sites(examples, texts)
    dep = [r for r in rows if r["role"] == "deprecated"]
    val = [r for r in rows if r["role"] == "valid"]
    if not dep:
        raise DataError("deprecated task: the evaluation set has no deprecated call site to score "
                        "(meta.role 'deprecated'; a JSONL needs >= 2 sites of an API so one is held out)")
    dm = sum(r["deprecated"] for r in dep) / len(dep)
    return {"n": len(rows), "n_deprecated": len(dep), "n_valid_sites": len(val),
            "deprecated_match": round(dm, 4),
            "valid_rate": round(sum(r["valid"] for r in rows) / len(rows), 4),
            "valid_match": round(sum(r["valid"] for r in val) / len(val), 4) if val else None,
            "heldout": all(e.meta.get("split", "eval") == "eval" for e in examples
                           if e.meta.get("role", "deprecated") == "deprecated"),
            "forget_quality": round(1 - dm, 4),
            "per_item": {r["id"]: 0.0 if r["deprecated"] else 1.0 for r in dep}}


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

def _rank(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _split_groups(examples: list[Example], group) -> dict[str, str]:
    """id -> forget|eval: per group, ranked by sha256(id); ceil(n/2) forget, singletons forget."""
    groups: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        groups[group(e)].append(e)
    out = {}
    for g in groups.values():
        ranked = sorted(g, key=lambda e: _rank(e.id))
        n_forget = math.ceil(len(ranked) / 2)
        for i, e in enumerate(ranked):
            out[e.id] = "forget" if i < n_forget else "eval"
    return out


def _with(e: Example, **meta) -> Example:
    return Example(e.prompt, e.completion, e.id, {**e.meta, **meta})


def split_examples(examples: list[Example], path: str | Path = "<examples>") -> tuple[list[Example], list[Example]]:
    """(forget, eval) from examples that carry ``meta["split"]`` / ``meta["role"]``; deprecated
    examples without a split are split per API (``meta["api"]``, else the target) as above."""
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
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
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
        meta = {"api": f"{p['dependency']}:{p['answer']}", "dependency": p["dependency"], "version": p["version"],
                "type": p["type"], "role": p["role"], "target": p["answer"], "index": p["index"],
                "source": "versicode",
                "valid": sorted(valid_names[p["dependency"]]) if p["role"] == "deprecated" else []}
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
        prompt, after = code[:at], code[at + len(mask):]
    else:
        line = item.get("masked_line")
        if not isinstance(line, str):
            raise DataError(f"{where}: '<line_mask>' needs a string field 'masked_line'")
        m = re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", line)
        if m is None:
            raise DataError(f"{where}: answer {answer!r} does not occur in masked_line")
        prompt, after = code[:at] + line[:m.start()], line[m.end():]
    completion = answer + ("(" if after.startswith("(") else "")
    if prompt.endswith(" "):
        prompt, completion = prompt[:-1], " " + completion
    item_id = item.get("id")
    if item_id is not None and not isinstance(item_id, (str, int)):
        raise DataError(f"{where}: field 'id' must be a string")
    return {"id": str(item_id) if item_id is not None else f"{path.stem}:{i}", "index": i, "prompt": prompt,
            "completion": completion, "answer": answer, "dependency": item["dependency"],
            "version": item["version"], "type": item["type"], "role": VERSICODE_TYPES[item["type"]]}


# ---------------------------------------------------------------- building the default set

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
        kept += sorted(group, key=lambda s: _rank(s.key))[:max_sites]
    order = {id(s): i for i, s in enumerate(sites)}
    return sorted(kept, key=lambda s: order[id(s)])


def mine(apis: list[DeprecatedAPI] | None = None, files=None, context_lines: int = CONTEXT_LINES,
         max_sites: int = MAX_SITES_PER_API, still_valid: list[DeprecatedAPI] | None = None,
         max_valid: int = MAX_VALID_SITES_PER_API) -> list[Example]:
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
    dep_names = _deprecated_names(apis)
    deprecated = _cap([s for s in sites if s.api.id in dep_ids and not s.api.replaces], max_sites)
    valid = _cap([s for s in sites if s.api.replaces], max_valid)
    return [site_example(s, dep_names) for s in split_sites(deprecated)] + [valid_example(s) for s in valid]


def build(out: str | Path = DEFAULT_DATA, record: str | Path | None = BUILD_RECORD,
          min_sites: int = MIN_SITES) -> dict:
    """Mine, keep every API with at least ``min_sites`` sites (so it has forget and held-out
    sites) and the still-valid sites of the kept APIs' replacements, write the set."""
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
        "catalogue": len(load_catalogue()), "apis_found": len(per_api),
        "apis_kept": len(keep), "forget_sites": len(forget), "eval_sites": len(evalset),
        "deprecated_eval_sites": len(held), "valid_sites": len(valid), "valid_apis": len(per_valid),
        "rule": f"keep every catalogued API with >= {min_sites} call sites (so it has forget and held-out sites; "
                f"no model decides: the embedded model is pretrained on every site); at most {MAX_SITES_PER_API} "
                f"sites per API; still-valid sites: at most {MAX_VALID_SITES_PER_API} call sites of each "
                f"replacement entry (catalogue 'still_valid') of a kept API, evaluation only",
        "per_api": per_api,
        "still_valid": per_valid,
    }
    if record:
        from prod_unlearn.io import atomic_write_json
        atomic_write_json(record, summary)
    return summary


# ---------------------------------------------------------------- the task (listed in suite.FORGET_TASKS)

def _task():
    from prod_unlearn.evaluation.suite import ForgetTask
    return ForgetTask("deprecated", DEFAULT_DATA, load_deprecated, evaluate_deprecated, KEYS)


TASK = _task()


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m prod_unlearn.evaluation.deprecated",
                                 description="Build the default deprecated-API set from the embedded model's corpus.")
    ap.add_argument("--build", action="store_true", help="mine and write the default set")
    ap.add_argument("--out", default=str(DEFAULT_DATA))
    ap.add_argument("--record", default=str(BUILD_RECORD))
    args = ap.parse_args(argv)
    if not args.build:
        ap.print_help()
        return 2
    summary = build(args.out, args.record)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("per_api", "still_valid")}, indent=2))
    for api, a in summary["per_api"].items():
        print(f"{'kept' if a['kept'] else 'drop'}  {api:45s} forget {a['forget']}  eval {a['eval']}")
    for api, a in summary["still_valid"].items():
        print(f"valid {api:45s} eval {a['eval']}  (replaces {a['replaces']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
