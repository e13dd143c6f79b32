"""Turn what a model wrote into the program the sandbox runs.

Two kinds of text come in. A base model's *completion* continues the task prompt, so the
program is usually prompt + completion; a chat model's (or the teacher's) *answer* holds
a fenced code block among prose. Either may re-state the whole function (header and all,
perhaps with its imports), give only the body, or indent with tabs. In every case the
program keeps what the task's prompt defines before the function (imports, helpers,
constants) unless the model's code defines it again, and never holds the header twice.
"""
from __future__ import annotations

import ast
import re
import warnings

from persd.engine.tasks import Task

_FENCE = re.compile(r"```[ \t]*([\w.+-]*)[^\n]*\n(.*?)(?:\n?[ \t]*```|\Z)", re.S)
_CODE_LANGS = {"", "python", "py", "python3", "py3", "python2"}
_TOP_DEF = r"^(?:async[ \t]+)?def[ \t]+{name}[ \t]*\("


def extract_program(task: Task, completion: str, chat: bool) -> str:
    """The whole program `completion` stands for (setup code and tests are added by `Task.program`)."""
    text = completion.replace("\r\n", "\n")
    if chat:
        code = sanitize(fenced_code(text, task.entry_point))
    else:
        code = text
    code = expand_leading_tabs(code)
    if defines(code, task.entry_point):
        return join_code(prelude(task.prompt, code, task.entry_point), code)
    if chat and not task.header.strip() and not task.entry_point:
        return code.strip("\n") + "\n"  # a free-form task: the answer is the program
    if chat:
        code = code.strip("\n") + "\n"
    return continue_prompt(task.prompt, code)


# ------------------------------------------------------------ fenced answers


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block, an unterminated last block included."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


def fenced_code(text: str, entry_point: str | None) -> str:
    """The code of a chat answer: the last Python block that defines the entry point, else the
    first Python block, else (no fence at all) the text itself."""
    blocks = [code for lang, code in fenced_blocks(text) if lang in _CODE_LANGS]
    if not blocks:
        blocks = [code for _, code in fenced_blocks(text)]
    if not blocks:
        return text
    defining = [b for b in blocks if defines(b, entry_point)]
    return defining[-1] if defining else blocks[0]


def sanitize(code: str) -> str:
    """Drop a chat answer's demo code at top level: `if __name__ == "__main__":` blocks,
    bare asserts and print calls. They are not the solution, and a wrong example assert or
    an `input()` would fail a correct solution. Code that does not parse is left alone."""
    try:
        tree = _parse(code)
    except SyntaxError:
        return code
    lines = code.split("\n")
    drop: set[int] = set()
    for node in tree.body:
        if _is_demo(node):
            drop.update(range(node.lineno - 1, (node.end_lineno or node.lineno)))
    if not drop:
        return code
    return "\n".join(line for i, line in enumerate(lines) if i not in drop).strip("\n") + "\n"


def _is_demo(node: ast.stmt) -> bool:
    if isinstance(node, ast.Assert):
        return True
    if isinstance(node, ast.If):
        test = node.test
        return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
                and test.left.id == "__name__")
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        func = node.value.func
        return isinstance(func, ast.Name) and func.id == "print"
    return False


# ------------------------------------------------------------ assembling programs


def defines(code: str, name: str | None) -> bool:
    """Whether `code` defines function `name` at top level (a regex: the code may not parse)."""
    if not name:
        return False
    return re.search(_TOP_DEF.format(name=re.escape(name)), code, re.M) is not None


def expand_leading_tabs(code: str) -> str:
    """Tabs in indentation become four spaces, so a tab-indented body fits a space-indented prompt."""
    if "\t" not in code:
        return code
    out = []
    for line in code.split("\n"):
        stripped = line.lstrip(" \t")
        indent = line[: len(line) - len(stripped)]
        out.append(indent.replace("\t", "    ") + stripped)
    return "\n".join(out)


def prelude(prompt: str, code: str, entry_point: str | None) -> list[str]:
    """What the prompt defines before the entry point's header that `code` does not define
    again: imports, helper functions and classes, constants. Docstrings are dropped."""
    head = prompt
    if entry_point:
        found = list(re.finditer(_TOP_DEF.format(name=re.escape(entry_point)), prompt, re.M))
        if found:
            head = prompt[: found[-1].start()]
    if not head.strip():
        return []
    code_lines = {line.strip() for line in code.split("\n")}
    try:
        tree = _parse(head)
    except SyntaxError:  # keep at least the imports
        return [ln for ln in head.split("\n") if re.match(r"^(import|from)\s+\w", ln) and ln.strip() not in code_lines]
    lines = head.split("\n")
    kept: list[str] = []
    for node in tree.body:
        segment = "\n".join(lines[node.lineno - 1 : node.end_lineno])
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # a docstring (MBPP / generic prompts carry the task in one)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if segment.strip() not in code_lines:
                kept.append(segment)
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if defines(code, node.name) or re.search(rf"^class[ \t]+{re.escape(node.name)}\b", code, re.M):
                continue
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            kept.append("\n".join(lines[start - 1 : node.end_lineno]))
            continue
        kept.append(segment)
    return kept


def join_code(prelude_parts: list[str], code: str) -> str:
    parts = [p.strip("\n") for p in prelude_parts if p.strip()]
    body = code.strip("\n")
    return "\n\n".join(parts + [body]) + "\n"


def continue_prompt(prompt: str, completion: str) -> str:
    """prompt + completion, repaired when the body lost its indentation.

    A body that does not parse after the prompt but does once indented one level is indented.
    Otherwise prompt + completion is returned as is: its syntax error is useful feedback.
    """
    program = prompt + completion
    if _parses(program) or not completion.strip():
        return program
    indented = "\n".join(("    " + ln) if ln.strip() else ln for ln in completion.split("\n"))
    candidate = prompt + indented
    return candidate if _parses(candidate) else program


def _parse(code: str) -> ast.Module:
    with warnings.catch_warnings():  # model code is full of invalid escapes; not our warning to give
        warnings.simplefilter("ignore")
        return ast.parse(code)


def _parses(code: str) -> bool:
    try:
        _parse(code)
    except (SyntaxError, ValueError):
        return False
    return True
