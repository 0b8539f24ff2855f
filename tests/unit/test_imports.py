"""The project's modules import alone, no two of them import each other (not even inside a function), and
reading or validating settings imports no torch."""

import ast
import glob
import json
import os
import subprocess
import sys

from tests.conftest import ROOT

PACKAGES = ("formats", "data_prep", "pretrain", "finetune", "launch")
SETTINGS_MODULES = ("formats.settings", "pretrain.config", "finetune.config")  # imported before anything else


def project_modules() -> dict[str, str]:
    """Every Python module of the packages, by dotted name, with its path."""
    modules = {}
    for package in PACKAGES:
        for path in sorted(glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True)):
            name = os.path.relpath(path, ROOT)[: -len(".py")].replace(os.sep, ".")
            modules[name.removesuffix(".__init__")] = path
    return modules


def imported_modules(name: str, path: str, modules: dict[str, str]) -> set[str]:
    """The project modules `name` imports anywhere in its source, at the top or inside a function."""
    package = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # `from formats import settings` imports the module formats.settings
                found.update({f"{source}.{alias.name}"} & modules.keys() or {source} & modules.keys())
    return found - {name}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycles.append(path[path.index(imported):] + [module, imported])
            elif imported not in state:
                visit(imported, path + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    return cycles


def test_no_project_module_imports_a_module_that_imports_it_back_even_inside_a_function():
    """A lazy import (inside a function) hides a cycle from an import-alone check until it runs, as the run
    config's check of `optimizer.implementation` reading `pretrain.optim` did."""
    modules = project_modules()
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert {"pretrain.config", "finetune.config", "formats.settings"} <= graph.keys()
    assert "formats.settings" in graph["pretrain.config"]  # the reading of imports sees `from x import y`
    cycles = import_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


# Runs in a fresh interpreter. Between two imports the project's modules are forgotten, so each is imported
# alone: a cycle whose second module is imported first fails there (a partially initialised module). Third-party
# modules stay loaded (torch cannot be imported twice in one process); the settings modules are imported, and
# the shipped configs validated, before anything else has imported torch.
IMPORT_EACH_ALONE = """
import importlib, json, sys, traceback
modules, packages, settings_modules, root = json.loads(sys.argv[1])
sys.path.insert(0, root)
report = {"torch": {}, "failed": {}}

def forget_project():
    for name in [name for name in sys.modules if name.split(".")[0] in packages]:
        del sys.modules[name]

for name in settings_modules:
    forget_project()
    importlib.import_module(name)
    report["torch"]["import " + name] = "torch" in sys.modules
forget_project()
from pretrain.config import load_config
for path in ("configs/tiny.toml", "configs/squeezebert-paper.toml"):
    load_config(f"{root}/{path}")
    report["torch"]["pretrain.config.load_config " + path] = "torch" in sys.modules
from finetune.config import build_config, read_toml
build_config(("", read_toml(f"{root}/configs/finetune/glue-rte.toml")))
report["torch"]["finetune.config.build_config configs/finetune/glue-rte.toml"] = "torch" in sys.modules
for name in modules:
    forget_project()
    try:
        importlib.import_module(name)
    except Exception:
        report["failed"][name] = traceback.format_exc(limit=-2)
print(json.dumps(report))
"""


def test_each_module_imports_alone_and_reading_or_validating_settings_imports_no_torch():
    arguments = json.dumps([sorted(project_modules()), PACKAGES, SETTINGS_MODULES, ROOT])
    result = subprocess.run([sys.executable, "-c", IMPORT_EACH_ALONE, arguments], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert not report["failed"], "\n".join(f"{name}:\n{error}" for name, error in report["failed"].items())
    assert len(report["torch"]) == len(SETTINGS_MODULES) + 3
    importing_torch = [step for step, imported in report["torch"].items() if imported]
    assert not importing_torch, f"torch was imported by {importing_torch[0]}"  # and stays for the later steps
