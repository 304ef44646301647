"""The package's layering, read from the import statements of every module: ``layers``
imports nothing above it; shared code (everything outside ``methods``) imports no method;
a method imports no other method."""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "updetr_d2")
ABOVE_LAYERS = ("modeling", "methods", "data", "engine", "config", "checkpoint", "solver")


def imported_subpackages(path):
    """The top-level ``updetr_d2`` subpackage of every import in ``path`` (relative or
    absolute), e.g. ``{"layers", "modeling"}``."""
    module = os.path.relpath(path, os.path.dirname(PACKAGE))[: -len(".py")].split(os.sep)
    if module[-1] == "__init__":
        module = module[:-1]
        package = module
    else:
        package = module[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
                if not node.module:  # from . import x, y
                    targets = [target + [alias.name] for alias in node.names]
                else:
                    targets = [target]
            else:
                targets = [node.module.split(".")]
        elif isinstance(node, ast.Import):
            targets = [alias.name.split(".") for alias in node.names]
        else:
            continue
        for t in targets:
            if t[0] == "updetr_d2" and len(t) > 1:
                found.add(tuple(t[1:3]))
    return found


def modules(subdir):
    for root, _, files in os.walk(os.path.join(PACKAGE, subdir)):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(root, name)


def test_the_scanner_sees_relative_and_absolute_imports():
    assert ("layers", "mlp") in imported_subpackages(os.path.join(PACKAGE, "modeling", "heads.py"))
    assert ("methods", "codetr") in imported_subpackages(os.path.join(PACKAGE, "methods", "__init__.py"))


@pytest.mark.parametrize("path", sorted(modules("layers")), ids=os.path.basename)
def test_layers_import_nothing_above_them(path):
    above = {m for m in imported_subpackages(path) if m[0] in ABOVE_LAYERS}
    assert not above, f"{path} imports {sorted(above)}"


SHARED = ["layers", "modeling", "data", "engine", "config", "checkpoint", "export"]
SHARED_FILES = [os.path.join(PACKAGE, name) for name in ("compat.py", "solver.py")]


@pytest.mark.parametrize("path", sorted([p for d in SHARED for p in modules(d)] + SHARED_FILES),
                         ids=lambda p: os.path.relpath(p, PACKAGE))
def test_shared_code_imports_no_method(path):
    methods = {m for m in imported_subpackages(path) if m[0] == "methods"}
    assert not methods, f"{path} imports {sorted(methods)}"


@pytest.mark.parametrize("method", sorted(d for d in os.listdir(os.path.join(PACKAGE, "methods"))
                                          if os.path.isdir(os.path.join(PACKAGE, "methods", d))
                                          and not d.startswith("__")))
def test_a_method_imports_no_other_method(method):
    for path in modules(os.path.join("methods", method)):
        others = {m for m in imported_subpackages(path) if m[0] == "methods" and len(m) > 1 and m[1] != method}
        assert not others, f"{path} imports {sorted(others)}"
