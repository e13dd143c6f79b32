"""The import graph reads as layers, with no import running back up and no cycle.

    cli  ->  rounds  ->  evaluation  ->  collect  ->  engine's shared modules  ->  config  ->  runtime
    rounds  ->  trainers  ->  collect.layout, config, runtime      (the loop reads the trainer's checkpoints)
Every import counts, also those inside functions (lazy imports are still dependencies); imports
under `if TYPE_CHECKING:` do not.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP = ("engine", "runtime", "trainers", "bench")
SHARED = {"tasks", "task_layouts", "task_sources", "prompts", "extract", "lessons", "aio", "timelimits", "runlock",
          "ownership"}
RUN_DIR_GUARDS = {"persd.engine.runlock", "persd.engine.ownership"}  # one run per directory, every command


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["persd", *parts])


def _imports(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m.startswith("persd.")}


def _graph() -> dict[str, set[str]]:
    files = [p for top in TOP for p in (REPO / top).rglob("*.py")] + [REPO / "config.py"]
    mods = {_module_name(p): p for p in files}
    graph = {}
    for name, path in mods.items():
        # keep only real modules (drop `from pkg import name` where name is an attribute)
        graph[name] = {m for m in _imports(path, name) if m in mods and m != name}
    return graph


def _layer(mod: str) -> str:
    parts = mod.split(".")
    if mod == "persd.config":  # the configuration pattern every command (and the trainers) use
        return "config"
    if parts[1] != "engine" or len(parts) < 3:
        return parts[1]
    if parts[2] in SHARED:
        return "engine-shared"
    return "engine." + parts[2]


ALLOWED = {  # layer -> the layers it may import (besides its own)
    "runtime": set(),
    "config": {"runtime"},
    "engine-shared": {"config", "runtime"},
    # paper mode is a variant of the collect and eval pipelines: collect's runner picks its flow, which
    # extends collect's; eval calls its prompts and checker
    "engine.collect": {"engine.paper", "engine-shared", "config", "runtime"},
    "engine.paper": {"engine.collect", "engine-shared", "config", "runtime"},
    "engine.evaluation": {"engine.collect", "engine.paper", "engine-shared", "config", "runtime"},
    "engine.rounds": {"engine.evaluation", "engine.collect", "engine.paper", "engine-shared", "config", "runtime",
                      "trainers"},
    "trainers": {"config", "runtime"},  # and engine.collect.layout, below
    "engine.cli": {"engine.report", "engine.rounds", "engine.evaluation", "engine.collect", "engine.paper",
                   "engine.export", "engine.export_card", "engine-shared", "config", "runtime", "trainers"},
    # `persd export`: reads collect directories through their layout module
    "engine.export": {"engine.export_card", "engine.collect", "engine-shared", "config", "runtime"},
    "engine.export_card": set(),
    "engine.report": {"engine.collect", "engine.evaluation", "engine.paper", "engine-shared", "config", "runtime"},
    "engine": {"engine.cli"},  # persd/engine/__init__.py
    "bench": {"engine.cli", "engine.report", "engine.rounds", "engine.evaluation", "engine.collect", "engine.paper",
              "engine-shared", "config", "runtime", "trainers"},
}


def test_no_import_runs_back_up_a_layer():
    wrong = []
    for mod, deps in _graph().items():
        layer = _layer(mod)
        for dep in deps:
            if layer == "trainers" and (dep == "persd.engine.collect.layout" or dep in RUN_DIR_GUARDS):
                continue  # the trainers read shards through the layout module alone, and lock their directory
            if dep in ("persd.engine", "persd.engine.collect"):  # package __init__s: docstrings only
                continue
            if dep == "persd.engine.report":  # its __init__ holds `hint` alone: the line every command prints
                continue
            dl = _layer(dep)
            if dl != layer and dl not in ALLOWED[layer]:
                wrong.append(f"{mod} ({layer}) imports {dep} ({dl})")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_layout_module_needs_nothing_of_persd():
    assert _graph()["persd.engine.collect.layout"] == set()


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    assert not cycles, "\n".join(cycles)
