"""The package layout: no import circle, and no helper importing back up to an estimator.

The imports are read from the source (every ``import`` statement, those
inside functions included), so a lazy import that closes a circle counts.
"""

import ast
from pathlib import Path

import pytest

import skpatch

ROOT = Path(skpatch.__file__).parent

# modules that define public estimators, and the subpackages re-exporting them
ESTIMATOR_MODULES = {
    "skpatch.extraction",
    "skpatch.embedding", "skpatch.embedding._embedding",
    "skpatch.classifiers", "skpatch.classifiers._bagnet", "skpatch.classifiers._patch_cnn",
    "skpatch.classifiers._dictionary",
    "skpatch.ordering", "skpatch.ordering._orderer",
    "skpatch.bounds", "skpatch.bounds._predictor",
}
# the helpers under them: utilities, torch modules and each family's private engine
LOWER_PREFIXES = ("skpatch.utils", "skpatch.nn")
LOWER_MODULES = {
    "skpatch.embedding._encoder", "skpatch.embedding._encodings",
    "skpatch.embedding._whitening", "skpatch.embedding._pooling",
    "skpatch.classifiers._base",
    "skpatch.ordering._measures",
    "skpatch.bounds._formula", "skpatch.bounds._calibration", "skpatch.bounds._published",
}


def _module_name(path):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imported(name, path):
    """The skpatch modules a module imports (a package's ``__init__`` runs too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("skpatch")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("skpatch"):
                target = node.module
            else:
                continue
            found.add(target)
            # ``from pkg import module`` imports that module
            found |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES}
    edges = set()
    for target in found:
        parts = target.split(".")
        # the target and each enclosing package that is not also the importer's own
        for depth in range(2, len(parts) + 1):
            ancestor = ".".join(parts[:depth])
            if ancestor in MODULES and not (name + ".").startswith(ancestor + "."):
                edges.add(ancestor)
    edges.discard(name)
    return edges


GRAPH = {name: _imported(name, path) for name, path in MODULES.items()}


def test_the_walk_sees_the_package():
    # guards the tests below against reading nothing
    assert "skpatch.embedding._encoder" in GRAPH["skpatch.embedding._embedding"]
    assert "skpatch.utils._grid" in GRAPH["skpatch.extraction"]
    assert {"skpatch.embedding", "skpatch.classifiers", "skpatch.bounds",
            "skpatch.ordering"} <= set(MODULES)


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize("name", sorted(
    n for n in MODULES if n.startswith(LOWER_PREFIXES) or n in LOWER_MODULES
))
def test_helpers_never_import_an_estimator_module(name):
    assert not GRAPH[name] & ESTIMATOR_MODULES, (
        f"{name} imports {sorted(GRAPH[name] & ESTIMATOR_MODULES)}"
    )


def test_the_old_flat_modules_are_gone():
    # one home per module: the families are subpackages
    for old in ("_encoder", "_encodings", "_whitening", "_pooling", "_base_classifier",
                "dictionary_classifier", "_measures", "_bound_formula",
                "_bound_calibration", "_patch_size_results", "_dask", "_thread_limits"):
        assert f"skpatch.{old}" not in MODULES
