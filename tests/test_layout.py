"""The package's layout rules (CONTRIBUTING.md): the layers import one way,
files stay small, functions stay short."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sklearn_nlica"

# Lowest first: a module may import from its own layer and the layers below.
LAYERS = {
    "numerics": [
        "_validation",
        "_densities",
        "_integrand",
        "_marginal",
        "_whitening",
        "integrators",
        "metrics",
        "datasets",
    ],
    "models": ["_nn", "_conditional_prior", "_likelihood", "_models"],
    "training": ["_training", "_schedules", "_em"],
    "estimators": [
        "_fitting",
        "_base",
        "_aux",
        "_vae",
        "_mle",
        "_ivae",
        "_cli_output",
        "_cli",
        "__init__",
    ],
}
RANK = {name: rank for rank, names in enumerate(LAYERS.values()) for name in names}
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60

SOURCES = sorted(PACKAGE.rglob("*.py"))


def top_module(path):
    """The package-level module (or subpackage) a file belongs to."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def package_imports(path):
    """The package-level modules a file imports."""
    tree = ast.parse(path.read_text())
    depth = len(path.relative_to(PACKAGE).parts) - 1
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").startswith("sklearn_nlica"):
                rest = node.module.split(".")[1:]
            elif node.level > depth:
                rest = (node.module or "").split(".") if node.module else []
                rest = rest or [alias.name for alias in node.names]
            else:
                continue
            yield from rest[:1]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sklearn_nlica."):
                    yield alias.name.split(".")[1]


def code_lines(node, source_lines):
    """Lines of a function that are neither blank, comments nor its docstring."""
    body = node.body
    start = body[0].end_lineno if ast.get_docstring(node) and len(body) > 1 else 0
    lines = source_lines[node.lineno - 1 : node.end_lineno]
    count = 0
    for number, line in enumerate(lines, start=node.lineno):
        if number <= start and number >= body[0].lineno:
            continue
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            count += 1
    return count


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    own = top_module(path)
    if own == "__main__":
        return
    for imported in package_imports(path):
        assert imported in RANK, f"{imported} is in no layer"
        assert RANK[imported] <= RANK[own], f"{own} imports {imported}, a higher layer"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_files_and_functions_are_small(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_FILE_LINES
    lines = text.splitlines()
    for node in ast.walk(ast.parse(text)):
        # An estimator's __init__ is its parameter list, one line each.
        if isinstance(node, ast.FunctionDef) and node.name != "__init__":
            assert code_lines(node, lines) <= MAX_FUNCTION_LINES, node.name
