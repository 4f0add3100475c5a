"""The repository is self-contained: every file its documentation and code point to exists."""
from __future__ import annotations

import re

from conftest import REPO

# A path is a run of [word . / -] ending in a word character; a reference is such a path that
# starts in one of the repository's top folders, or a module path inside the package.
_PATH = r"[\w./-]*\w"
TOP = re.compile(rf"(?<![\w./-])((?:docs|benchmarks|prod_unlearn|tests|configs)/{_PATH})")
PACKAGE = re.compile(rf"(?<![\w./-])((?:data|models|methods|training|evaluation|tasks|build|sandbox|bench|report|attacks|assets)/{_PATH}\.\w+)")
DESIGN = re.compile(r"\bDESIGN\.md\b")
TEMPLATE = re.compile(r"[<{*\[]")   # pareto_<task>.png, epoch-{n}, *.json: a pattern, not one file


def scanned_files():
    files = [REPO / "README.md", REPO / "pyproject.toml", *sorted((REPO / "docs").glob("*.md"))]
    for top in ("prod_unlearn", "tests", "benchmarks"):
        files += sorted(p for p in (REPO / top).rglob("*.py") if ".venv" not in p.parts)
    return [f for f in files if f.exists()]


def references(text: str):
    """(line number, path as written, path relative to the repository root)."""
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in DESIGN.finditer(line):
            yield lineno, m.group(0), m.group(0)
        for rx, prefix in ((TOP, ""), (PACKAGE, "prod_unlearn/")):
            for m in rx.finditer(line):
                if TEMPLATE.match(line[m.end():m.end() + 1]):
                    continue
                yield lineno, m.group(1), prefix + m.group(1)


def test_every_referenced_repository_file_exists():
    missing = []
    for f in scanned_files():
        for lineno, written, rel in references(f.read_text(encoding="utf-8")):
            if not (REPO / rel).exists():
                missing.append(f"{f.relative_to(REPO)}:{lineno}: {written}")
    assert not missing, "references to files that are not in the repository:\n" + "\n".join(missing)


def test_the_scanner_finds_what_it_should():
    old = "DESIGN" ".md"                      # written in two parts so that this file does not cite it
    text = f"see docs/design.md and `methods/prod.py`, {old}, tests/test_prod.py::test_x, pareto_<t>.png"
    found = [(w, r) for _, w, r in references(text)]
    assert ("docs/design.md", "docs/design.md") in found
    assert ("methods/prod.py", "prod_unlearn/methods/prod.py") in found
    assert (old, old) in found
    assert ("tests/test_prod.py", "tests/test_prod.py") in found
    assert not [w for w, _ in found if "pareto" in w]
    assert not list(references("import prod_unlearn.methods; x = os.path.join(a, b)"))


# The package's layers, lowest first: a module imports from its own layer and the layers before
# it, never from a later one (at module level or inside a function alike).
LAYERS = [
    {"io", "errors", "version", "progress", "plots", "html_report", "tracking", "data"},
    {"models", "runs"},
    {"methods", "evaluation", "sandbox"},
    {"training", "tasks"},
    {"build", "attacks"},
    {"bench", "report"},
    {"cli", "api", "__init__"},   # the package's face: the CLI and the Python API
]


def _layer(module: str) -> int:
    """``prod_unlearn.X...`` -> X's layer; a name that is no module (``prod_unlearn.__version__``) -> 0."""
    top = module.split(".")[1] if "." in module else "__init__"
    return next((i for i, names in enumerate(LAYERS) if top in names), 0)


def test_no_import_runs_back_up_the_layers():
    import ast
    pkg = REPO / "prod_unlearn"
    tops = {p.stem for p in pkg.glob("*.py")} | {p.name for p in pkg.iterdir() if (p / "__init__.py").exists()}
    assert tops <= set().union(*LAYERS), f"modules in no layer: {sorted(tops - set().union(*LAYERS))}"
    up = []
    for f in sorted(pkg.rglob("*.py")):
        rel = f.relative_to(REPO).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        here = _layer(name)
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prod_unlearn"):
                targets = [node.module] + ([f"{node.module}.{a.name}" for a in node.names]
                                           if node.module == "prod_unlearn" else [])
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("prod_unlearn")]
            for t in targets:
                if t != "prod_unlearn" and _layer(t) > here:
                    up.append(f"{f.relative_to(REPO)}:{node.lineno} imports {t}")
    assert not up, "imports that run back up the layers:\n" + "\n".join(up)


def _module_graph() -> dict[str, set[str]]:
    """prod_unlearn module -> the package modules it imports, at module level or inside a function
    (``from prod_unlearn.a import b`` names the module ``a.b`` when there is one, else ``a``)."""
    import ast
    pkg = REPO / "prod_unlearn"
    names = {}
    for f in pkg.rglob("*.py"):
        rel = f.relative_to(REPO).with_suffix("")
        names[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = f
    graph = {}
    for name, f in names.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prod_unlearn"):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    deps.add(sub if sub in names else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in names}
        graph[name] = {d for d in deps if d in names and d != name}
    return graph


def test_no_import_circle():
    """No two modules import each other, directly or around a longer circle (a circle hidden in a
    function-level import is still one: the two modules cannot be understood apart)."""
    graph = _module_graph()
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):   # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, "modules that import each other: " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_circle_check_finds_a_circle(monkeypatch):
    import sys
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    monkeypatch.setattr(sys.modules[__name__], "_module_graph", lambda: g)
    import pytest
    with pytest.raises(AssertionError, match="a <-> b <-> c"):
        test_no_import_circle()


def test_no_private_name_crosses_a_package():
    """``_name`` is a module's own: another top-level package of prod_unlearn imports or calls only
    what it may rely on (``from prod_unlearn.a.b import _x`` or ``api._x(...)`` from outside ``a``)."""
    import ast
    pkg = REPO / "prod_unlearn"
    crossing = []
    for f in sorted(pkg.rglob("*.py")):
        here = f.relative_to(pkg).parts[0].removesuffix(".py")
        tree = ast.parse(f.read_text(encoding="utf-8"))
        aliases = {}  # local name -> the package's top-level module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prod_unlearn"):
                top = (node.module.split(".") + [""])[1]
                for a in node.names:
                    owner = top or a.name
                    if a.name.startswith("_") and not a.name.startswith("__") and owner != here:
                        crossing.append(f"{f.relative_to(REPO)}:{node.lineno} imports {node.module}.{a.name}")
                    aliases[a.asname or a.name] = owner
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and aliases.get(node.value.id, here) != here):
                crossing.append(f"{f.relative_to(REPO)}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not crossing, "private names used from another package:\n" + "\n".join(crossing)
