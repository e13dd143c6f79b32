"""The judge of pytest-style tasks, INSIDE the sandbox: programs.py embeds it after judge.py (whose names it
uses), so a stdin/stdout program does not compile it.

`run_pytest(solution, tests)`: the solution becomes the module `solution`; the test module runs without
pytest, against a small stand-in for it (raises, approx, mark.parametrize, skip/skipif/xfail, fixtures,
tmp_path, capsys, monkeypatch). Standard library only.
"""
import builtins
import os
import sys

if "JudgeFailure" not in globals():  # imported as a module (tests, linters), not embedded
    from persd.runtime.sandbox.judge import JudgeFailure, _error_text, clip_block


def _assert_detail(line, frame):
    """For `assert f(x) == y` in a test: INPUT / OUTPUT / EXPECTED, re-evaluated in the failing frame."""
    import ast

    try:
        node = ast.parse(line.strip()).body[0]
    except (SyntaxError, IndexError, ValueError):
        return None
    if not (isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1
            and isinstance(node.test.ops[0], (ast.Eq, ast.Is))):
        return None
    left, right = node.test.left, node.test.comparators[0]
    env_g, env_l = frame.f_globals, dict(frame.f_locals)
    try:
        actual = eval(compile(ast.Expression(left), "<feedback>", "eval"), env_g, env_l)
        expected = eval(compile(ast.Expression(right), "<feedback>", "eval"), env_g, env_l)
    except BaseException as exc:
        return f"{type(exc).__name__} while computing the output"
    if isinstance(left, ast.Call):
        inp = ", ".join([ast.unparse(a) for a in left.args] + [ast.unparse(k) for k in left.keywords])
    else:
        inp = ast.unparse(left)
    return f"INPUT: {clip_block(inp)}\nOUTPUT: {_safe_repr(actual)}\nEXPECTED: {_safe_repr(expected)}"


def _safe_repr(value):
    try:
        return clip_block(repr(value))
    except BaseException as exc:
        return f"<unprintable {type(value).__name__}: {type(exc).__name__}>"


def _test_failure(name, exc, test_lines):
    import traceback

    frame, lineno = None, None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<tests>":
            frame, lineno = tb.tb_frame, tb.tb_lineno
        tb = tb.tb_next
    line = test_lines[lineno - 1].strip() if lineno and 0 < lineno <= len(test_lines) else ""
    head = f"{name} failed"
    if isinstance(exc, AssertionError) and line.startswith("assert"):
        text = f"{head}: AssertionError: {line}"
        if exc.args and str(exc.args[0]):
            text += f" ({clip_block(str(exc.args[0]), 200)})"
        detail = _assert_detail(line, frame) if frame is not None else None
        return text + (f"\n{detail}" if detail else "")
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return f"{head}: {last}" + (f"\n  at line {lineno}: {line}" if line else "")


def run_pytest(solution, tests, fast=True):
    """Run a pytest-style test module against `solution` (importable as `solution`); raise JudgeFailure at the
    first failing test. Returns only when every collected test ran and passed (no test collected: failure)."""
    import types

    module = types.ModuleType("solution")
    module.__file__ = "solution.py"
    sys.modules["solution"] = module
    try:
        exec(compile(solution, "<solution>", "exec"), module.__dict__)
    except BaseException as exc:  # noqa: B036 - even SystemExit: the solution must import to be tested
        raise JudgeFailure("the solution failed to import: " + _error_text(exc, solution.split("\n"))) from None
    shim = _PytestShim()
    if fast or not _has_real_pytest():
        sys.modules["pytest"] = shim.module
    test_lines = tests.split("\n")
    namespace = {"__name__": "test_solution", "__builtins__": builtins}
    try:
        exec(compile(tests, "<tests>", "exec"), namespace)
    except BaseException as exc:  # noqa: B036
        raise JudgeFailure(_test_failure("the test module", exc, test_lines)) from None
    collected = shim.collect(namespace)
    if not collected:
        raise JudgeFailure("the test module defines no test functions (test_...): nothing to pass")
    for name, fn, kwargs in collected:
        try:
            shim.call(fn, kwargs)
        except _Skip:
            continue
        except BaseException as exc:  # noqa: B036
            raise JudgeFailure(_test_failure(name, exc, test_lines)) from None


def _has_real_pytest():
    import importlib.util

    return importlib.util.find_spec("pytest") is not None


class _Skip(Exception):
    pass


class _PytestShim:
    """The parts of pytest that test modules of code data sets use, in a few dozen lines."""

    def __init__(self):
        import types

        self.fixtures = {}
        shim = self
        mod = types.ModuleType("pytest")

        class RaisesContext:
            def __init__(self, expected, match=None):
                self.expected, self.match, self.value = expected, match, None

            def __enter__(self):
                return self

            def __exit__(self, et, ev, tb):
                if et is None:
                    raise AssertionError(f"DID NOT RAISE {self.expected}")
                if not issubclass(et, self.expected):
                    return False
                if self.match is not None:
                    import re

                    if not re.search(self.match, str(ev)):
                        raise AssertionError(f"Regex pattern {self.match!r} does not match {str(ev)!r}")
                self.value = ev
                return True

        def raises(expected, *args, match=None, **kwargs):
            ctx = RaisesContext(expected, match)
            if args:
                with ctx:
                    args[0](*args[1:], **kwargs)
                return ctx
            return ctx

        class Approx:
            def __init__(self, expected, rel=None, abs=None):
                self.expected, self.rel, self.abs = expected, rel, abs

            def _close(self, a, e):
                if isinstance(e, dict):
                    return isinstance(a, dict) and a.keys() == e.keys() and all(self._close(a[k], e[k]) for k in e)
                if isinstance(e, (list, tuple)):
                    return isinstance(a, (list, tuple)) and len(a) == len(e) and all(
                        self._close(x, y) for x, y in zip(a, e))
                try:
                    if a == e:
                        return True
                    tol = max(1e-6 * abs(e) if self.rel is None else self.rel * abs(e),
                              1e-12 if self.abs is None else self.abs)
                    return abs(a - e) <= tol
                except TypeError:
                    return False

            def __eq__(self, other):
                return self._close(other, self.expected)

            def __repr__(self):
                return f"approx({self.expected!r})"

        class Mark:
            def parametrize(self, names, values, ids=None, **kw):
                names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)

                def deco(fn):
                    sets = getattr(fn, "_persd_params", [{}])
                    rows = [dict(zip(names, v if len(names) > 1 else (v,))) for v in values]
                    fn._persd_params = [{**s, **r} for r in rows for s in sets]
                    return fn
                return deco

            def skip(self, *a, **k):
                return lambda fn: setattr(fn, "_persd_skip", True) or fn

            def skipif(self, condition, *a, **k):
                return lambda fn: setattr(fn, "_persd_skip", bool(condition)) or fn

            def xfail(self, *a, **k):  # an expected failure proves nothing: not run
                return lambda fn: setattr(fn, "_persd_skip", True) or fn

            def __getattr__(self, name):  # custom marks (@pytest.mark.slow): no effect
                return lambda *a, **k: (a[0] if len(a) == 1 and callable(a[0]) and not k else (lambda fn: fn))

        def fixture(fn=None, **kwargs):
            def register(f):
                shim.fixtures[kwargs.get("name") or f.__name__] = f
                return f
            return register(fn) if callable(fn) else register

        def skip(msg=""):
            raise _Skip(msg)

        def fail(msg=""):
            raise AssertionError(msg)

        mod.raises, mod.approx, mod.mark, mod.fixture = raises, Approx, Mark(), fixture
        mod.skip, mod.fail, mod.param = skip, fail, (lambda *values, **kw: values if len(values) > 1 else values[0])
        self.module = mod

    def collect(self, namespace):
        out = []
        for name, obj in list(namespace.items()):
            if name.startswith("test") and callable(obj) and not isinstance(obj, type):
                out += self._expand(name, obj)
            elif name.startswith("Test") and isinstance(obj, type):
                for meth in [m for m in vars(obj) if m.startswith("test")]:
                    instance = obj()
                    out += self._expand(f"{name}.{meth}", getattr(instance, meth))
        return out

    def _expand(self, name, fn):
        if getattr(fn, "_persd_skip", False):
            return []
        params = getattr(fn, "_persd_params", None)
        if not params:
            return [(name, fn, {})]
        return [(f"{name}[{i}]", fn, p) for i, p in enumerate(params)]

    def call(self, fn, kwargs):
        import inspect

        wanted = [p for p in inspect.signature(fn).parameters if p not in kwargs]
        teardown = []
        try:
            args = dict(kwargs)
            for name in wanted:
                args[name] = self._fixture(name, teardown)
            fn(**args)
        finally:
            for gen in reversed(teardown):
                if hasattr(gen, "undo"):
                    gen.undo()
                else:
                    for _ in gen:
                        pass

    def _fixture(self, name, teardown):
        import inspect

        if name in self.fixtures:
            f = self.fixtures[name]
            deps = {p: self._fixture(p, teardown) for p in inspect.signature(f).parameters}
            value = f(**deps)
            if inspect.isgenerator(value):
                gen = value
                value = next(gen)
                teardown.append(gen)
            return value
        if name in ("tmp_path", "tmpdir"):
            import pathlib
            import tempfile

            return pathlib.Path(tempfile.mkdtemp(prefix="persd-test-"))
        if name == "capsys":
            cap = _Capsys()
            teardown.append(cap)
            return cap
        if name == "monkeypatch":
            mp = _MonkeyPatch()
            teardown.append(mp)
            return mp
        raise LookupError(f"fixture {name!r} not found")


class _Capsys:
    def __init__(self):
        import io

        self._saved = (sys.stdout, sys.stderr)
        self._out, self._err = io.StringIO(), io.StringIO()
        sys.stdout, sys.stderr = self._out, self._err

    def readouterr(self):
        import collections

        out, err = self._out.getvalue(), self._err.getvalue()
        self._out.seek(0)
        self._out.truncate()
        self._err.seek(0)
        self._err.truncate()
        return collections.namedtuple("CaptureResult", "out err")(out, err)

    def undo(self):
        sys.stdout, sys.stderr = self._saved


class _MonkeyPatch:
    _missing = object()

    def __init__(self):
        self._undo = []

    def setattr(self, target, name, value=_missing, raising=True):
        if value is self._missing:  # setattr("module.attr", value)
            import importlib

            path, attr = target.rsplit(".", 1)
            target, name, value = importlib.import_module(path), attr, name
        old = getattr(target, name, self._missing)
        if old is self._missing and raising:
            raise AttributeError(f"{target!r} has no attribute {name!r}")
        self._undo.append(lambda: delattr(target, name) if old is self._missing else setattr(target, name, old))
        setattr(target, name, value)

    def delattr(self, target, name, raising=True):
        old = getattr(target, name, self._missing)
        if old is self._missing:
            if raising:
                raise AttributeError(name)
            return
        self._undo.append(lambda: setattr(target, name, old))
        delattr(target, name)

    def setitem(self, mapping, key, value):
        old = mapping.get(key, self._missing)
        self._undo.append(lambda: mapping.pop(key, None) if old is self._missing else mapping.__setitem__(key, old))
        mapping[key] = value

    def setenv(self, name, value):
        self.setitem(os.environ, name, str(value))

    def delenv(self, name, raising=True):
        if name in os.environ:
            old = os.environ[name]
            self._undo.append(lambda: os.environ.__setitem__(name, old))
            del os.environ[name]
        elif raising:
            raise KeyError(name)

    def chdir(self, path):
        old = os.getcwd()
        self._undo.append(lambda: os.chdir(old))
        os.chdir(path)

    def undo(self):
        for fn in reversed(self._undo):
            fn()
        self._undo.clear()
