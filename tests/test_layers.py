"""The import graph reads as layers, with no import running back up and no cycle.

    cli -> rounds -> evaluation -> paper -> collect -> engine's shared modules -> rundirs -> config -> runtime
    rounds  ->  trainers  ->  rundirs, config, runtime
    report  ->  evaluation, paper, collect, engine's shared modules, rundirs, config, runtime

`rundirs` is every run directory's owner: persd/engine/rundirs/ (eval, train and loop layouts, atomic
writes, the settings check, which command made a directory), the collect layout
(persd/engine/collect/layout.py), the run lock and ownership. It is the one part of the engine the
trainers may import: they read shards through the collect layout and keep their own directory through
the train layout. `persd train`'s command line (persd/trainers/cli.py) is part of the cli layer, so the
loop, which runs train as a stage, imports no command-line module.

Every import counts, also those inside functions (lazy imports are still dependencies); imports under
`if TYPE_CHECKING:` do not. `from pkg import mod` depends on pkg.mod (as `import pkg.mod` does); a
package's `__init__` counts as a dependency of everything imported from the package once it imports
anything itself (it runs first).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP = ("engine", "runtime", "trainers", "bench")
SHARED = {"tasks", "prompts", "extract", "lessons", "aio", "timelimits", "failures", "context_fit",
          "task_layouts", "task_sources"}
BY_NAME = {  # modules whose layer is not their folder's
    "persd.config": "config",  # the configuration pattern every command (and the trainers) use
    "persd.engine.collect.layout": "rundirs",  # the collect directory's owner; needs nothing of persd
    "persd.engine.runlock": "rundirs",  # one run per directory, every command
    "persd.engine.ownership": "rundirs",  # one command per directory
    "persd.trainers.cli": "engine.cli",  # `persd train`
}

ALLOWED = {  # layer -> the layers it may import (besides its own)
    "runtime": set(),
    "config": {"runtime"},
    "rundirs": {"config", "runtime"},
    "engine-shared": {"rundirs", "config", "runtime"},
    "engine.collect": {"engine-shared", "rundirs", "config", "runtime"},
    # paper mode is a variant of the collect and eval pipelines: its flow extends collect's
    "engine.paper": {"engine.collect", "engine-shared", "rundirs", "config", "runtime"},
    "engine.evaluation": {"engine.paper", "engine.collect", "engine-shared", "rundirs", "config", "runtime"},
    "trainers": {"rundirs", "config", "runtime"},
    "engine.rounds": {"engine.evaluation", "engine.paper", "engine.collect", "trainers", "engine-shared", "rundirs",
                      "config", "runtime"},
    "engine.report": {"engine.evaluation", "engine.paper", "engine.collect", "engine-shared", "rundirs", "config",
                      "runtime"},
    "engine.cli": {"engine.report", "engine.rounds", "engine.evaluation", "engine.paper", "engine.collect",
                   "engine.export", "engine.export_card", "engine-shared", "rundirs", "config", "runtime", "trainers"},
    # `persd export`: reads collect directories through their layout module
    "engine.export": {"engine.export_card", "engine.collect", "engine-shared", "rundirs", "config", "runtime"},
    "engine.export_card": set(),
    "engine": set(),  # persd/engine/__init__.py: a docstring
    "bench": {"engine.cli", "engine.report", "engine.rounds", "engine.evaluation", "engine.paper", "engine.collect",
              "engine.export", "engine.export_card", "engine-shared", "rundirs", "config", "runtime", "trainers"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["persd", *parts])


def _imports(path: Path, name: str, mods: set[str]) -> set[str]:
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
            for a in node.names:  # a submodule, else an attribute of `base` itself
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base)
    return {m for m in out if m in mods and m != name}


def _graph() -> dict[str, set[str]]:
    files = [p for top in TOP for p in (REPO / top).rglob("*.py")] + [REPO / "config.py"]
    mods = {_module_name(p): p for p in files}
    direct = {name: _imports(path, name, set(mods)) for name, path in mods.items()}
    graph = {}
    for name, deps in direct.items():
        inits = set()
        for dep in deps:  # importing a.b.c runs a.b's __init__ first: it counts once it imports anything
            parts = dep.split(".")
            inits.update(p for p in (".".join(parts[:i]) for i in range(2, len(parts))) if direct.get(p))
        graph[name] = deps | {p for p in inits if p != name and not name.startswith(p + ".")}
    return graph


def _layer(mod: str) -> str:
    if mod in BY_NAME:
        return BY_NAME[mod]
    parts = mod.split(".")
    if parts[1] != "engine" or len(parts) < 3:
        return parts[1]
    if parts[2] == "rundirs":
        return "rundirs"
    if parts[2] in SHARED:
        return "engine-shared"
    return "engine." + parts[2]


def _wrong_edges() -> list[str]:
    wrong = []
    for mod, deps in _graph().items():
        layer = _layer(mod)
        for dep in deps:
            dl = _layer(dep)
            if dl != layer and dl not in ALLOWED[layer]:
                wrong.append(f"{mod} ({layer}) imports {dep} ({dl})")
    return sorted(wrong)


def test_no_import_runs_back_up_a_layer():
    wrong = _wrong_edges()
    assert not wrong, "\n".join(wrong)


def test_every_module_has_a_layer():
    assert {_layer(m) for m in _graph()} <= set(ALLOWED)


def test_the_layout_module_needs_nothing_of_persd():
    assert _graph()["persd.engine.collect.layout"] == set()


def test_the_trainers_import_no_engine_module_but_the_run_directories():
    engine = {dep for mod, deps in _graph().items() if _layer(mod) == "trainers" for dep in deps
              if dep.startswith("persd.engine")}
    assert all(_layer(dep) == "rundirs" for dep in engine), engine


def test_nothing_imports_the_loop_and_the_loop_imports_no_command_line():
    graph = _graph()
    users = {mod for mod, deps in graph.items() if "persd.engine.rounds" in deps}
    assert {_layer(m) for m in users} <= {"engine.cli", "bench"}, users
    assert not {d for d in graph["persd.engine.rounds"] if _layer(d) == "engine.cli"}


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


# ------------------------------------------------------------------ runtime knows nothing of flags

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:[-.][a-z0-9]+)*")


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string the module could say (f-strings' literal parts too), but docstrings and the arguments
    of an argparse parser (the local servers' own `python -m` command lines)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skip.add(id(first.value))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
            fname = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            if fname in ("add_argument", "ArgumentParser", "add_argument_group"):
                skip.update(id(n) for n in ast.walk(node))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip]


def test_runtime_messages_never_name_a_flag():
    """The runtime names the config FIELD (`teacher.base_url`); the command line renames it to its flag.
    A `--flag` anywhere in a runtime string (not only at its start) is a flag the runtime should not know."""
    offenders = []
    for path in sorted((REPO / "runtime").rglob("*.py")):
        for line, text in _strings(ast.parse(path.read_text())):
            for flag in FLAG.findall(text):
                offenders.append(f"{path.relative_to(REPO)}:{line}: {flag} in {text[:80]!r}")
    assert not offenders, "\n".join(offenders)


def test_the_flag_check_sees_a_flag_inside_a_message():
    tree = ast.parse('def f(x):\n    """--doc is fine"""\n    raise ValueError(f"x {x}: pass --student-model")\n')
    assert [f for _, t in _strings(tree) for f in FLAG.findall(t)] == ["--student-model"]
