"""The package's layers (docs/architecture.md): every module of diva_tf, parsed with `ast`, imports
only from its own layer or from layers below it; imports inside functions count too."""

from __future__ import annotations

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "diva_tf")

# Subpackage -> rank. A module may import from its own subpackage and from lower ranks only; two
# subpackages of the same rank (data, model) may not import each other.
LAYERS = {"core": 0, "data": 1, "model": 1, "objectives": 2, "evaluation": 3, "training": 4,
          "serving": 5, "config": 6, "runs": 7}
# The top: the package's public API (diva_tf/__init__.py) and the command-line entry points.
TOP = "top"
TOP_MODULES = {"__init__", "train", "evaluate", "export", "index", "serve"}
RANK = {**LAYERS, TOP: len(LAYERS)}


def module_files() -> dict:
    """{dotted module name: path} of every module of the package."""
    out = {}
    for root, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, name), os.path.dirname(PACKAGE))
                dotted = rel[:-3].replace(os.sep, ".")
                out[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = \
                    os.path.join(root, name)
    return out


MODULES = module_files()


def layer(module: str) -> str:
    """The layer of a diva_tf module: its subpackage, or the top."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else TOP


def imported_modules(source: str, module: str, is_package: bool = False) -> list:
    """(line, dotted module) of every diva_tf module imported anywhere in source; `from X import
    y` counts as X.y when that is a module of the package, else as X."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found += [(node.lineno, f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
                      for a in node.names]
    return sorted({(line, m) for line, m in found if m == "diva_tf" or m.startswith("diva_tf.")})


def violations(module: str, source: str, is_package: bool = False) -> list:
    """'module:line imports target (layer a above layer b)' for every import from a layer above
    the module's own, or from a sibling layer of the same rank."""
    own = layer(module)
    out = []
    for line, target in imported_modules(source, module, is_package):
        other = layer(target)
        if other != own and RANK[other] >= RANK[own]:
            out.append(f"{module}:{line} imports {target} ({other} is not below {own})")
    return out


def test_every_subpackage_and_top_module_has_a_layer():
    names = os.listdir(PACKAGE)
    packages = {n for n in names if os.path.isfile(os.path.join(PACKAGE, n, "__init__.py"))}
    assert packages == set(LAYERS)
    assert {n[:-3] for n in names if n.endswith(".py")} == TOP_MODULES


def test_no_module_imports_from_a_layer_above_its_own():
    found = []
    for module, path in sorted(MODULES.items()):
        with open(path) as f:
            found += violations(module, f.read(), path.endswith("__init__.py"))
    assert found == []


@pytest.mark.parametrize("module, source", [
    ("diva_tf.data.pipeline", "from diva_tf.training.trainer import DiVATrainer"),
    ("diva_tf.model.network", "def f():\n    from diva_tf.config import Config\n"),
    ("diva_tf.objectives.objective", "import diva_tf.evaluation.suite"),
    ("diva_tf.data.sampler", "from diva_tf.model import network"),  # sibling of the same rank
    ("diva_tf.serving.export", "import diva_tf"),  # the package's top
    ("diva_tf.training.trainer", "from ..serving import export"),
])
def test_an_upward_import_is_reported(module, source):
    assert len(violations(module, source)) == 1


def test_downward_and_same_layer_imports_pass():
    source = ("from diva_tf.core.errors import ConfigError\nfrom diva_tf.data import load_splits\n"
              "from . import callbacks\nfrom diva_tf.training.optimizers import OPTIMIZERS\n")
    assert imported_modules(source, "diva_tf.training.run")[2] == (3, "diva_tf.training.callbacks")
    assert violations("diva_tf.training.run", source) == []
