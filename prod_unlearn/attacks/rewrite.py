"""Meaning-preserving rewrites of Python source for the transform attack (attacks/transform.py):
identifiers renamed consistently (scope-aware, builtins and attributes kept), comments and
docstrings stripped, layout reformatted; each one leaves the program's behaviour unchanged.
"""

from __future__ import annotations

import ast
import builtins
import io
import keyword
import tokenize

_BUILTINS = set(dir(builtins)) | set(keyword.kwlist) | set(getattr(keyword, "softkwlist", []))


_KEEP = {"self", "cls"}


_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


_COMPS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


class TransformError(ValueError):
    """The rewrite cannot be applied to this source while keeping its meaning."""


class _Scan(ast.NodeVisitor):
    """Which names the file binds outside class bodies (candidates, in first-seen order) and which
    names must never be renamed."""

    def __init__(self) -> None:
        self.candidates: dict[str, str] = {}
        self.excluded: set[str] = set()
        self.params: set[str] = set()
        self.keywords: set[str] = set()
        self.scope = ["module"]

    def _bind(self, name: str | None, kind: str) -> None:
        if not name:
            return
        if self.scope[-1] == "class":
            self.excluded.add(name)
        else:
            self.candidates.setdefault(name, kind)

    def _args(self, args: ast.arguments) -> None:
        for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
            if a is not None:
                self.candidates.setdefault(a.arg, "arg")
                self.params.add(a.arg)

    def _in(self, scope: str, nodes) -> None:
        self.scope.append(scope)
        for n in nodes:
            self.visit(n)
        self.scope.pop()

    def visit_FunctionDef(self, node):
        self._bind(node.name, "fn")
        for d in node.decorator_list:
            self.visit(d)
        self.visit(node.args)  # defaults and annotations live in the enclosing scope
        if node.returns:
            self.visit(node.returns)
        self._args(node.args)
        self._in("function", node.body)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node):
        self.visit(node.args)
        self._args(node.args)
        self._in("function", [node.body])

    def visit_arguments(self, node):
        for d in node.defaults + [d for d in node.kw_defaults if d is not None]:
            self.visit(d)
        for a in node.posonlyargs + node.args + node.kwonlyargs + [node.vararg, node.kwarg]:
            if a is not None and a.annotation is not None:
                self.visit(a.annotation)

    def visit_ClassDef(self, node):
        self._bind(node.name, "cls")
        for n in node.decorator_list + node.bases + node.keywords:
            self.visit(n)
        self._in("class", node.body)

    def _comp(self, node):
        self._in(
            "function",
            [g for g in node.generators] + [getattr(node, f) for f in ("elt", "key", "value") if hasattr(node, f)],
        )

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comp

    def visit_Name(self, node):
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            self._bind(node.id, "var")

    def visit_ExceptHandler(self, node):
        self._bind(node.name, "var")
        self.generic_visit(node)

    def visit_alias(self, node):
        self.excluded.add(node.asname or node.name.split(".")[0])

    def visit_keyword(self, node):
        if node.arg:
            self.keywords.add(node.arg)
        self.visit(node.value)

    def visit_Global(self, node):
        self.excluded.update(node.names)

    visit_Nonlocal = visit_Global

    def visit_MatchAs(self, node):
        self.excluded.add(node.name or "")
        self.generic_visit(node)

    def visit_MatchStar(self, node):
        self.excluded.add(node.name or "")

    def visit_MatchMapping(self, node):
        self.excluded.add(node.rest or "")
        self.generic_visit(node)

    def visit_Assign(self, node):
        for t in node.targets:
            if isinstance(t, ast.Name) and t.id == "__all__" and isinstance(node.value, (ast.List, ast.Tuple)):
                self.excluded.update(
                    e.value for e in node.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)
                )
        self.generic_visit(node)


class _RenameAst(ast.NodeTransformer):
    """The same renaming done on the tree: what the rewritten source must parse to."""

    def __init__(self, mapping: dict[str, str]):
        self.m = mapping

    def visit_Name(self, node):
        node.id = self.m.get(node.id, node.id)
        return node

    def visit_arg(self, node):
        node.arg = self.m.get(node.arg, node.arg)
        self.generic_visit(node)
        return node

    def _named(self, node):
        node.name = self.m.get(node.name, node.name) if node.name else node.name
        self.generic_visit(node)
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_ExceptHandler = _named


def _tokens(src: str) -> list[tokenize.TokenInfo]:
    try:
        return list(tokenize.generate_tokens(io.StringIO(src).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError) as e:
        raise TransformError(f"cannot tokenize: {e}") from None


def _parse(src: str) -> ast.Module:
    try:
        return ast.parse(src)
    except (SyntaxError, ValueError) as e:
        raise TransformError(f"not parseable Python: {e}") from None


def _char_col(line: str, byte_col: int) -> int:
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


def rename_map(src: str, tree: ast.Module | None = None) -> dict[str, str]:
    """old name -> fresh name for every identifier the file binds and may be renamed."""
    tree = tree or _parse(src)
    scan = _Scan()
    scan.visit(tree)
    excluded = scan.excluded | _BUILTINS | _KEEP | (scan.params & scan.keywords)
    taken = {t.string for t in _tokens(src) if t.type == tokenize.NAME} | _BUILTINS
    taken |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    prefix = {"fn": "fn", "cls": "Cls", "arg": "a", "var": "v"}
    counters = dict.fromkeys(prefix.values(), 0)
    out = {}
    for name, kind in scan.candidates.items():
        if name in excluded or (name.startswith("__")):
            continue
        p = prefix[kind]
        while True:
            counters[p] += 1
            new = f"{p}{counters[p]}"
            if new not in taken:
                break
        taken.add(new)
        out[name] = new
    return out


def _occurrences(src: str, tree: ast.Module, mapping: dict[str, str]) -> list[tuple[int, int, str]]:
    """(row, char col, old name) of every place the renaming edits."""
    lines = src.splitlines(keepends=True)
    toks = [t for t in _tokens(src) if t.type == tokenize.NAME]
    occ = []

    def after(row: int, col: int, words: tuple[str, ...]):
        """The NAME token following the first of ``words`` at or after (row, col)."""
        for i, t in enumerate(toks):
            if t.start >= (row, col) and t.string in words and i + 1 < len(toks):
                return toks[i + 1]
        return None

    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and n.id in mapping:
            occ.append((n.lineno, _char_col(lines[n.lineno - 1], n.col_offset), n.id))
        elif isinstance(n, ast.arg) and n.arg in mapping:
            occ.append((n.lineno, _char_col(lines[n.lineno - 1], n.col_offset), n.arg))
        elif isinstance(n, _FUNCS + (ast.ClassDef, ast.ExceptHandler)) and n.name in mapping:
            words = ("as",) if isinstance(n, ast.ExceptHandler) else ("def", "class")
            t = after(n.lineno, _char_col(lines[n.lineno - 1], n.col_offset), words)
            if t is None or t.string != n.name:
                raise TransformError(f"cannot locate the definition of {n.name!r}")
            occ.append((t.start[0], t.start[1], n.name))
    return occ


def rename_identifiers(src: str) -> tuple[str, dict[str, str]]:
    """(rewritten source, mapping). Layout and comments are kept; only identifier tokens change."""
    tree = _parse(src)
    mapping = rename_map(src, tree)
    for _ in range(3):
        lines = src.splitlines(keepends=True)
        occ = _occurrences(src, tree, mapping)
        bad = {old for row, col, old in occ if lines[row - 1][col : col + len(old)] != old}
        if not bad:
            break
        mapping = {k: v for k, v in mapping.items() if k not in bad}  # positions we cannot trust: keep the name
    else:
        raise TransformError("identifier positions do not match the source")
    edits: dict[int, list[tuple[int, str, str]]] = {}
    for row, col, old in set(occ):
        edits.setdefault(row, []).append((col, old, mapping[old]))
    for row, es in edits.items():
        line = lines[row - 1]
        for col, old, new in sorted(es, reverse=True):
            line = line[:col] + new + line[col + len(old) :]
        lines[row - 1] = line
    out = "".join(lines)
    expected = ast.dump(_RenameAst(mapping).visit(_parse(src)))
    if ast.dump(_parse(out)) != expected:
        raise TransformError("renaming changed the program")
    return out, mapping


def _docstring_nodes(
    tree: ast.AST,
) -> list[tuple[ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef, ast.Expr]]:
    out: list[tuple[ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef, ast.Expr]] = []
    for n in ast.walk(tree):
        if isinstance(n, (ast.Module, ast.ClassDef) + _FUNCS) and n.body:
            first = n.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                out.append((n, first))
    return out


def drop_docstrings(tree: ast.AST) -> ast.AST:
    """The tree without docstrings (an emptied body gets ``pass``): what ``strip`` must parse to."""
    for owner, _doc in _docstring_nodes(tree):
        owner.body = owner.body[1:] or [ast.Pass()]
    return tree


def strip_comments(src: str, docstrings: bool = True) -> str:
    """Remove every comment (comment-only lines disappear) and, with ``docstrings``, every docstring
    that stands alone on its lines. The AST is unchanged (without docstrings: minus docstrings)."""
    tree = _parse(src)
    lines = src.splitlines(keepends=True)
    delete: set[int] = set()
    cut_at: dict[int, int] = {}
    for t in _tokens(src):
        if t.type == tokenize.COMMENT:
            row, col = t.start
            if lines[row - 1][:col].strip():
                cut_at[row] = col
            else:
                delete.add(row)
    replace: dict[int, str] = {}
    if docstrings:
        for owner, doc in _docstring_nodes(tree):
            assert doc.end_lineno is not None and doc.end_col_offset is not None  # set by ast.parse
            first, last = lines[doc.lineno - 1], lines[doc.end_lineno - 1]
            col = _char_col(first, doc.col_offset)
            end = _char_col(last, doc.end_col_offset)
            tail = last[end:].strip()
            if first[:col].strip() or (tail and not tail.startswith("#")):
                continue  # shares a line with code: leave it
            rows = set(range(doc.lineno, doc.end_lineno + 1))
            if len(owner.body) == 1:
                replace[doc.lineno] = first[:col] + "pass\n"
                rows.discard(doc.lineno)
            delete |= rows
    out = []
    for row, line in enumerate(lines, 1):
        if row in replace:
            out.append(replace[row])
        elif row in delete:
            continue
        elif row in cut_at:
            out.append(line[: cut_at[row]].rstrip() + "\n")
        else:
            out.append(line)
    text = "".join(out).lstrip("\n")
    want = ast.dump(drop_docstrings(_parse(src)) if docstrings else _parse(src))
    got = ast.dump(drop_docstrings(_parse(text)) if docstrings else _parse(text))
    if want != got:
        raise TransformError("stripping changed the program")
    return text


def reformat(src: str) -> str:
    """The layout of ``ast.unparse`` (comments cannot survive it; docstrings do)."""
    tree = _parse(src)
    out = ast.unparse(tree) + "\n"
    if ast.dump(_parse(out)) != ast.dump(tree):
        raise TransformError("reformatting changed the program")
    return out


def transform_all(src: str) -> str:
    return reformat(strip_comments(rename_identifiers(src)[0]))


TRANSFORMS = {
    "identity": lambda s: s,
    "rename": lambda s: rename_identifiers(s)[0],
    "strip": strip_comments,
    "reformat": reformat,
    "all": transform_all,
}
