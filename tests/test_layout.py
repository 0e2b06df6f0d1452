"""The shape of the source tree: no import circle, and the four floors import only downwards."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
#: The floors of ../shared/design.md, lowest first; a module may import from its own floor and the ones below.
FLOORS = {
    "knnmix.math": 1,  # the method's math: pure tensor functions
    "knnmix.data": 2, "knnmix.noise": 2, "knnmix.models": 2, "knnmix.methods": 2,  # parts
    "knnmix.engine": 3,  # the training engine
    "knnmix.scale": 4, "knnmix.spaces": 4, "knnmix.sweep_folder": 4, "knnmix.tracking": 4,  # Ray, Tune, MLflow
    "knnmix.cli": 4,  # the command line
}


def modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """``module -> modules of src/ it imports`` (any import, lazy ones included; ``if TYPE_CHECKING:`` blocks and
    the parent packages that ``from package import submodule`` passes through are not edges)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()

        def visit(node: ast.AST) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue
                if isinstance(child, ast.Import):
                    found.update(a.name for a in child.names)
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                        base = ".".join([*parts, *([child.module] if child.module else [])])
                    subs = [f"{base}.{a.name}" for a in child.names if f"{base}.{a.name}" in mods]
                    found.update(subs)
                    if len(subs) < len(child.names):
                        found.add(base)
                visit(child)

        visit(ast.parse(path.read_text()))
        edges = set()
        for target in found:
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def floor(module: str) -> int | None:
    for prefix, level in FLOORS.items():
        if module == prefix or module.startswith(prefix + "."):
            return level
    return None


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_floors_import_only_downwards():
    upward = [
        f"{m} (floor {floor(m)}) imports {t} (floor {floor(t)})"
        for m, targets in import_graph().items() for t in targets
        if floor(m) is not None and floor(t) is not None and floor(t) > floor(m)
    ]
    assert upward == []


def test_the_math_floor_imports_no_config_ray_or_mlflow():
    for name, path in modules().items():
        if floor(name) == 1:
            text = path.read_text()
            for banned in ("knnmix.config", "import ray", "mlflow", "knnmix.engine"):
                assert banned not in text, f"{name} uses {banned}"


def test_only_the_scale_layer_imports_ray():
    """Ray, Tune and Ray Train are scale/'s: the engine, the sweep folder's files and results, MLflow logging and the
    CLI import and run without Ray (the CLI reaches Ray only through knnmix.scale)."""
    for name, path in modules().items():
        if not name.startswith("knnmix.scale"):
            tree = ast.parse(path.read_text())
            imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names] + [
                n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            assert not [m for m in imported if m == "ray" or m.startswith("ray.")], f"{name} imports Ray"


def test_the_engine_and_ray_trains_workers_import_neither_torchvision_nor_scikit_learn():
    """Every Ray Train worker, sweep trial and Ray Train controller imports the engine: torchvision (with torch's
    dynamo, through torchvision.ops) and scikit-learn cost it seconds each on 2 cores (knnmix.scale.train took
    about 12 s to import, 4 s without them). They are imported where used: a file data set's transforms,
    ResNet-50, the mixture fit."""
    import subprocess
    import sys

    code = ("import sys, knnmix.scale.train, knnmix.engine.train, knnmix.cli; "
            "print(sorted(m for m in ('torchvision', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_image_endings_copy_torchvisions():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from knnmix.data.files import TORCHVISION_IMG_EXTENSIONS

    assert TORCHVISION_IMG_EXTENSIONS == IMG_EXTENSIONS
