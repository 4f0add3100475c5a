"""The catalogue of deprecated APIs and the AST resolver that finds their call sites in source files
(the rules: build/deprecated.py's docstring); a site becomes a forget / held-out / still-valid example.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from prod_unlearn.data.examples import DataError, Example
from prod_unlearn.tasks.base import DATA

CATALOGUE = DATA / "deprecated_apis.json"
CONTEXT_LINES = 20


@dataclass(frozen=True)
class DeprecatedAPI:
    id: str  # dotted name of the API (or module)
    deprecated_in: str  # Python version that deprecated it
    replacement: str  # what to use instead (prose)
    source: str  # official documentation URL that states the deprecation
    match: dict  # how to find its uses (see the module docstring)
    removed_in: str | None = None
    valid: tuple[str, ...] = ()  # replacement spellings valid at the site's position
    owners: tuple[str, ...] = ()  # objects whose other public attributes are still-valid APIs
    split: str = "attribute"  # where the prompt ends: "attribute" | "start"
    target: str = "name"  # what reproduces the API: "name" | "module"
    also_deprecated: tuple[str, ...] = ()  # other deprecated attributes of the owners
    note: str = ""
    replaces: str = ""  # still-valid entries only: the catalogued deprecated API it replaces

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
        if fields.get("split", "attribute") not in ("attribute", "start") or fields.get("target", "name") not in (
            "name",
            "module",
        ):
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
            raise DataError(
                f"{path}: still_valid[{i}] ({item['id']}): replaces {item['replaces']!r}, which is not a catalogued API"
            )
        if not ("qualified" in item["match"]) ^ ("attribute" in item["match"]):
            raise DataError(
                f"{path}: still_valid[{i}] ({item['id']}): match needs exactly one of 'qualified', 'attribute'"
            )
        old = by_id[item["replaces"]]
        out.append(
            DeprecatedAPI(
                id=item["id"],
                deprecated_in=old.deprecated_in,
                replacement=old.replacement,
                source=item["source"],
                match=item["match"],
                replaces=old.id,
                split=item.get("split", "attribute"),
                note=item.get("note", ""),
            )
        )
    return out


@dataclass
class Site:
    api: DeprecatedAPI
    file: str
    line: int  # 1-based line of the completion's first character
    col: int  # 0-based character column of it
    prompt: str
    completion: str
    target: str
    kind: str = "attribute"  # attribute: prompt ends after "receiver."; start: before the name
    split: str = ""  # forget | eval (set by split_sites)

    @property
    def key(self) -> str:
        return f"{self.api.id}|{self.file}|{self.line}|{self.col}"


def _module_name(path: str) -> str:
    mod = path[:-3] if path.endswith(".py") else path
    mod = mod.replace("/", ".")
    return mod[: -len(".__init__")] if mod.endswith(".__init__") else mod


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
                parts = parts[: len(parts) - (n.level - 1)] if n.level > 1 else parts
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
    def __init__(self) -> None:
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
    else:
        parts = _dotted(node)  # None: the receiver is no dotted name (``get().attr``), nothing to start before
        if parts is None or line[start:end] != ".".join(parts):
            return None  # "mod . attr" spacing (or a position ast and the text disagree on)
    completion = line[start:end]
    if is_call and line[end : end + 1] == "(":
        completion += "("
    prompt = "".join(lines[max(0, node.lineno - 1 - context_lines) : node.lineno - 1]) + line[:start]
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


def deprecated_names(apis: list[DeprecatedAPI]) -> dict[str, list[str]]:
    """owner -> attribute names the catalogue lists as deprecated on it."""
    out: dict[str, set[str]] = defaultdict(set)
    for a in apis:
        for o in a.owners:
            out[o].add(a.name)
            out[o].update(a.also_deprecated)
    return {o: sorted(v) for o, v in out.items()}


def site_example(s: Site, dep_names: dict[str, list[str]]) -> Example:
    owners = list(s.api.owners) if s.kind == "attribute" else []
    meta = {
        "api": s.api.id,
        "deprecated_in": s.api.deprecated_in,
        "replacement": s.api.replacement,
        "file": s.file,
        "line": s.line,
        "split": s.split,
        "role": "deprecated",
        "site": s.kind,
        "target": s.target,
        "valid": list(s.api.valid),
        "owners": owners,
        "deprecated_names": sorted({n for o in owners for n in dep_names.get(o, [])}),
    }
    return Example(s.prompt, s.completion, f"{s.api.id}@{s.file}:{s.line}:{s.col}", meta)


def valid_example(s: Site) -> Example:
    """A still-valid site: the replacement API is the right answer (``valid_match``)."""
    meta = {
        "api": s.api.id,
        "replaces": s.api.replaces,
        "file": s.file,
        "line": s.line,
        "split": "eval",
        "role": "valid",
        "site": s.kind,
        "target": s.target,
        "valid": [],
        "owners": [],
        "deprecated_names": [],
    }
    return Example(s.prompt, s.completion, f"{s.api.id}@{s.file}:{s.line}:{s.col}", meta)
