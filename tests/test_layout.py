"""The package's floors: imports run one way (no circles), and nothing reaches up into the package's own API."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "petclf"
MODULES = sorted(p.stem for p in PKG.glob("*.py"))


def petclf_imports(module: str) -> set[str]:
    """The petclf modules `module` imports, at the top or inside functions (ast, not a run)."""
    found = set()
    for node in ast.walk(ast.parse((PKG / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "petclf":  # `from petclf import x`: x must be a submodule, not the package's API
                found |= {a.name if a.name in MODULES else "__init__" for a in node.names}
            elif node.module.startswith("petclf."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("petclf.")}
    return found - {module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in `graph` as a list of modules, or None."""
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [m, n] if n in path else [m, n]
            if n not in state and (c := visit(n, path + [m])):
                return c
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m, [])):
            return c
    return None


def test_no_import_circles_and_no_upward_imports():
    graph = {m: petclf_imports(m) for m in MODULES}
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"
    up = sorted(m for m, deps in graph.items() if "__init__" in deps and m not in ("__init__", "__main__"))
    assert not up, f"modules importing from the package's __init__ (take it from its own module): {up}"


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("module", ["report", "app"])
def test_report_and_app_take_small_helpers_from_the_ground_floor(module):
    assert not petclf_imports(module) & {"train", "run", "callbacks", "probe"}


@pytest.mark.parametrize("module", MODULES)
def test_modules_stay_short(module):
    assert len((PKG / f"{module}.py").read_text().splitlines()) <= 450  # split by job past this


def test_long_lines_stay_rare():
    """Lines over 110 characters under 2 % of the package: code goes into the right module, not sideways."""
    lines = [line for m in MODULES for line in (PKG / f"{m}.py").read_text().splitlines()]
    long = [line for line in lines if len(line) > 110]
    assert len(long) < 0.02 * len(lines), f"{len(long)} of {len(lines)} lines run past 110 characters"


RECIPE_MODULES = {"recipe", "finetune", "probe", "probefit"}  # where a recipe may be told apart by name


def names_a_recipe(node: ast.AST) -> bool:
    """True when the expression reads a recipe's name: `recipe`, `x.recipe`, `x["recipe"]`, `"probe"`."""
    for n in ast.walk(node):
        if (isinstance(n, ast.Name) and "recipe" in n.id) or (isinstance(n, ast.Attribute) and "recipe" in n.attr):
            return True
        if isinstance(n, ast.Constant) and n.value in ("recipe", "probe", "fastbook"):
            return True
    return False


def recipe_comparisons(source: str) -> list[int]:
    """Lines of `source` that compare a recipe's name (==, !=, in, is): a branch that belongs in a recipe."""
    return [node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Compare)
            and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn, ast.Is, ast.IsNot)) for op in node.ops)
            and any(names_a_recipe(x) for x in [node.left, *node.comparators])]


@pytest.mark.parametrize("module", sorted(set(MODULES) - RECIPE_MODULES))
def test_recipes_are_told_apart_only_in_the_recipe_modules(module):
    assert recipe_comparisons((PKG / f"{module}.py").read_text()) == [], f"{module}.py compares a recipe's name"


def test_the_recipe_comparison_finder_finds_them():
    assert recipe_comparisons('if state.recipe == "probe":\n    pass') == [1]
    assert recipe_comparisons('x = 1 if m["recipe"]["name"] != "probe" else 2') == [1]
    assert recipe_comparisons('ok = recipe in ("probe",)') == [1]
    assert recipe_comparisons('ok = size == 224') == []


def test_the_onnx_prediction_path_never_imports_torch():
    code = ("import sys, petclf.cli, petclf.predict, petclf.onnx, petclf.preprocess, petclf.bundle; "
            "print(sorted(m for m in ('torch', 'fastai', 'timm', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
