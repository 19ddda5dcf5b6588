"""The package's layout: stage packages at the top, imports only from earlier stages, no import loop anywhere, and
every module named in the README's "Where is what"."""

import ast
import re
from pathlib import Path

import pytest

from ese_trainer import STAGES

from .conftest import REPO

PACKAGE = REPO / "ese_trainer"
LEAF_MODULES = {"errors", "paths", "hub_models"}  # the top-level modules: no stage, import no stage
REMOTE_CODE = ("configuration_moe_bert.py", "modeling_moe_bert.py")  # copied into released MoE folders
TREES = ("ese_trainer", "recipes", "bench", "tests")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for tree in TREES for path in (REPO / tree).rglob("*.py")}


def imported_modules(path: Path, known: dict[str, Path]) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (function bodies too), resolved to known modules:
    ``from a.b import c`` is ``a.b.c`` when that is a module, else ``a.b``."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if name in known}


def stage_of(module: str) -> int | None:
    """The stage's position in :data:`ese_trainer.STAGES`; -1 for the leaf modules; None outside a stage."""
    parts = module.split(".")
    if parts[0] != "ese_trainer" or len(parts) < 2:
        return None
    if parts[1] in LEAF_MODULES:
        return -1
    return STAGES.index(parts[1])


def test_top_level_holds_only_stage_packages_and_at_most_three_modules():
    packages = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").is_file()}
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert packages == set(STAGES)
    assert modules == LEAF_MODULES and len(modules) <= 3
    stray = [path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name not in STAGES
             and path.name != "__pycache__"]
    assert not stray


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_says_what_it_offers_in_one_docstring_line(stage):
    docstring = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
    assert docstring and "\n" not in docstring and docstring.lower().startswith(stage.lower())


def test_no_module_imports_a_later_stage():
    known = all_modules()
    late = []
    for name, path in known.items():
        own = stage_of(name)
        if own is None:
            continue
        for imported in imported_modules(path, known):
            theirs = stage_of(imported)
            if theirs is not None and theirs > own:
                late.append(f"{name} ({STAGES[own] if own >= 0 else 'leaf'}) imports {imported}")
    assert not late, "\n".join(late)


def test_no_import_loop_anywhere_in_the_tree():
    known = all_modules()
    graph = {name: imported_modules(path, known) - {name} for name, path in known.items()}
    index, low, stack, on_stack, loops, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not loops, loops


def test_remote_code_files_are_self_contained():
    """Released MoE folders carry these two files for ``trust_remote_code``: they import nothing of this package."""
    for name in REMOTE_CODE:
        tree = ast.parse((PACKAGE / "modeling" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0 or node.module in {Path(n).stem for n in REMOTE_CODE}, (name, node.module)
                assert not (node.module or "").startswith("ese_trainer"), (name, node.module)
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("ese_trainer") for alias in node.names), name


def readme_module_table() -> set[str]:
    """The modules the README's "Where is what" table names, as paths under ``ese_trainer/``: each row's files are
    in the stage of its first cell (a blank first cell continues the stage above; ``ese_trainer/`` = the top)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Where is what\n", 1)[1].split("\n## ", 1)[0]
    listed, stage = set(), None
    for line in section.splitlines():
        if not line.startswith("|") or re.fullmatch(r"[-| ]+", line):  # prose, or the header's rule
            continue
        cells = [cell.strip() for cell in line.strip()[1:-1].split("|")]
        if cells[0] == "stage":
            continue
        if cells[0]:
            stage = cells[0].strip("`").removeprefix("ese_trainer/").strip("/")
        assert stage is not None, f"a row before any stage: {line}"
        for name in re.findall(r"`([\w/]+\.py)`", cells[-1]):
            listed.add(f"{stage}/{name}" if stage else name)
    return listed


def test_readme_where_is_what_names_every_module():
    """A newcomer finds every module from the README, and the README names no module that is gone."""
    modules = {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py") if path.name != "__init__.py"}
    listed = readme_module_table()
    assert sorted(modules - listed) == [], "modules the README's 'Where is what' leaves out"
    assert sorted(listed - modules) == [], "files the README's 'Where is what' names that do not exist"
