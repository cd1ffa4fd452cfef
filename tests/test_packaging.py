"""The package declares what it imports, and ships its typing marker and licence."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions, requires
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "target_cbx1"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_level_modules() -> dict[str, set[str]]:
    """Every absolute import in target_cbx1/ (sandbox included) outside `if TYPE_CHECKING:` blocks,
    by top-level module, with the files importing it.
    """
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        type_checking_only = {
            id(node)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for statement in block.body
            for node in ast.walk(statement)
        }
        for node in ast.walk(tree):
            if id(node) in type_checking_only:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.partition(".")[0], set()).add(str(path.relative_to(PACKAGE.parent)))
    return found


def test_every_third_party_import_is_a_declared_dependency():
    declared = {
        canonical(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0])
        for requirement in requires("target-cbx1") or []
        if "extra ==" not in requirement
    }
    providers = packages_distributions()
    undeclared = {}
    for module, files in imported_top_level_modules().items():
        if module in sys.stdlib_module_names or module == "target_cbx1":
            continue
        distributions = {canonical(name) for name in providers.get(module, [module])}
        if not distributions & declared:
            undeclared[module] = sorted(files)
    assert not undeclared, (
        f"imported but not in [project] dependencies of pyproject.toml: {undeclared} "
        "(after adding them, reinstall: make install)"
    )


def test_the_package_ships_py_typed_and_the_repository_its_licence():
    assert (PACKAGE / "py.typed").is_file()
    licence = (PACKAGE.parent / "LICENSE").read_text()
    assert "Apache License" in licence
    assert "Version 2.0, January 2004" in licence
