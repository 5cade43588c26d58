"""The source's layers (docs/testing.md, "Layout"): each imports only the layers below it, and no module
imports itself back through others at import time."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "_astguard"),
    ("primitives",),
    ("pki",),
    ("gates",),
    ("circuits",),
    ("updates", "scale"),
    ("rules",),
    ("protocol",),
    ("params",),
    ("transport",),
    ("api", "privacy"),
    ("cli_io", "examples"),
    ("deploy",),
    ("train",),
    ("cli",),
    ("flower",),
    ("__init__",),
)
RANK = {name: i for i, group in enumerate(LAYERS) for name in group}


def _module(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """The secrobust modules ``path`` imports (a package's name stands for its __init__)."""
    name, is_pkg = _module(path)
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    tree = ast.parse(path.read_text())
    nodes = _top_level(tree.body) if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = ".".join(here[:len(here) - node.level + 1] + [node.module or ""]).strip(".") if node.level \
                else node.module or ""
            if base.split(".")[0] != "secrobust":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if (SRC / sub.replace(".", "/")).with_suffix(".py").exists()
                        or (SRC / sub.replace(".", "/") / "__init__.py").exists() else base)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "secrobust")
    return out


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements run at import time (try/if blocks included, ``if TYPE_CHECKING`` left out)."""
    out: list[ast.stmt] = []
    for stmt in body:
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
            continue
        out.append(stmt)
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(stmt, field, None)
            if isinstance(stmt, (ast.If, ast.Try)) and inner:
                out.extend(_top_level([s for h in inner for s in (h.body if isinstance(h, ast.ExceptHandler)
                                                                   else [h])]))
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _files() -> list[Path]:
    return [p for p in (SRC / "secrobust").rglob("*.py") if "_pb2" not in p.name]


def test_every_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for path in _files():
        me = _layer(_module(path)[0])
        assert me in RANK, f"{path}: layer {me!r} is not in LAYERS (add it where it belongs)"
        for target in _imports(path, top_level_only=False):
            them = _layer(target)
            if them != me and RANK[them] > RANK[me]:
                wrong.append(f"{_module(path)[0]} imports {target}")
    assert not wrong, "imports against the layers: " + "; ".join(sorted(wrong))


def _with_packages(module: str, targets: set[str]) -> set[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first: the packages of each target that do not
    already hold ``module`` (below the top package, which every module is inside) are imported too."""
    out = set(targets)
    for target in targets:
        parts = target.split(".")
        for k in range(2, len(parts)):
            package = ".".join(parts[:k])
            if package != module and not module.startswith(package + "."):
                out.add(package)
    return out


def test_no_module_imports_itself_back_at_import_time() -> None:
    graph = {}
    for p in _files():
        name = _module(p)[0]
        graph[name] = _with_packages(name, _imports(p, top_level_only=True))
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt])
                                     if nxt in path else f"import cycle through {nxt}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_checks_see_a_back_edge() -> None:
    """The layer map is not vacuous: a lower layer importing a higher one is caught."""
    assert RANK["primitives"] < RANK["gates"] < RANK["rules"] < RANK["deploy"]
    assert _layer("secrobust.gates.dealer") == "gates" and _layer("secrobust") == "__init__"
    ring = SRC / "secrobust" / "primitives" / "ring.py"
    assert "secrobust.primitives.kernel" in _imports(ring, top_level_only=True)
    # a module outside transport.grpc that imports one of its modules runs the package's __init__ first
    assert _with_packages("secrobust.transport.lane", {"secrobust.transport.grpc.wire"}) == {
        "secrobust.transport.grpc.wire", "secrobust.transport.grpc"}
    assert _with_packages("secrobust.transport.grpc.client", {"secrobust.transport.grpc.wire"}) == {
        "secrobust.transport.grpc.wire"}
