"""Judges that run INSIDE the sandbox, for tasks whose tests are not Python asserts.

Standard library only: `programs.py` embeds this file's source in each program it builds, so
the sandbox runs it like any other program (the nonce rule holds unchanged: `passed` needs the
program, judge included, to run to its end, which it does only when every test passed).

- `run_stdio(solution, cases, rule)`: (input, expected output) pairs. One forked child runs the
  solution once per test, in-process (a fresh namespace each time; stdin and stdout are memfds
  swapped in at the descriptor level, so `input()`, `sys.stdin.buffer`, `open(0)` and
  `os.write(1, ...)` all work), and sends each output back on a pipe; the parent, which the
  solution never runs in, compares them and stops at the first failure. One sandbox execution
  and two processes for any number of tests.
- `run_pytest(solution, tests)`: a test module (`def test_...():`, `from solution import f`), run
  without pytest: a small `pytest` stand-in (raises, approx, mark.parametrize, fixtures, tmp_path,
  capsys, monkeypatch) where the real one is absent or `fast` is asked for.

A failure raises `JudgeFailure`, whose `persd_feedback` the sandbox reports as the feedback.
"""
import builtins
import os
import struct
import sys

_exit = os._exit  # the real one: a judged program's os._exit is replaced while it runs

COMPARE_RULES = ("exact", "lines", "tokens", "float")
DEFAULT_RULE = "float:1e-6"
PROGRESS = "[persd judge] running test"  # on stderr, before each test (worker.py reads the last one on a timeout)
CLIP = 300  # characters of each INPUT / OUTPUT / EXPECTED block in feedback


class JudgeFailure(AssertionError):
    def __init__(self, feedback):
        super().__init__(feedback)
        self.persd_feedback = feedback


class _ProgramExit(BaseException):
    """os._exit inside a judged program: ends that run, like a process exit would."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


# ------------------------------------------------------------------ comparison


def parse_rule(rule):
    """'float:1e-6' -> ('float', 1e-6); the other rules take no parameter."""
    name, _, arg = (rule or DEFAULT_RULE).partition(":")
    name = name.strip().lower()
    if name not in COMPARE_RULES:
        raise ValueError(f"unknown comparison rule {rule!r} (one of: exact, lines, tokens, float[:TOL])")
    if name != "float":
        if arg:
            raise ValueError(f"comparison rule {name!r} takes no parameter")
        return name, 0.0
    tol = float(arg) if arg else 1e-6
    if not tol >= 0:
        raise ValueError(f"float tolerance must be >= 0, not {arg!r}")
    return name, tol


def _is_float_literal(tok):
    """A token written as a float (a point or an exponent): compared with the tolerance. Integers are
    compared exactly (large ones would otherwise pass within a relative tolerance)."""
    if not any(c in tok for c in ".eE") and tok.lower().lstrip("+-") not in ("inf", "nan", "infinity"):
        return False
    try:
        float(tok)
        return True
    except ValueError:
        return False


def compare(actual, expected, rule=DEFAULT_RULE):
    """None when `actual` matches `expected` under `rule`, else a short description of the first difference."""
    name, tol = parse_rule(rule)
    actual = actual.replace("\r\n", "\n")
    expected = expected.replace("\r\n", "\n")
    if name == "exact":
        return None if actual == expected else "the output differs (exact comparison)"
    if name == "lines":
        a = [ln.rstrip() for ln in actual.rstrip().split("\n")]
        e = [ln.rstrip() for ln in expected.rstrip().split("\n")]
        for i, (x, y) in enumerate(zip(a, e), start=1):
            if x != y:
                return f"line {i}: {_short(x)} instead of {_short(y)}"
        if len(a) != len(e):
            return f"{len(a)} lines instead of {len(e)}"
        return None
    a, e = actual.split(), expected.split()
    for i, (x, y) in enumerate(zip(a, e), start=1):
        if x == y:
            continue
        if name == "float" and _is_float_literal(y):
            try:
                fx, fy = float(x), float(y)
            except ValueError:
                return f"token {i}: {_short(x)} instead of {_short(y)}"
            if fx == fy or (fx != fx and fy != fy) or abs(fx - fy) <= tol * max(1.0, abs(fy)):
                continue
            return f"token {i}: {_short(x)} instead of {_short(y)} (tolerance {tol:g})"
        return f"token {i}: {_short(x)} instead of {_short(y)}"
    if len(a) != len(e):
        return f"{len(a)} tokens instead of {len(e)}"
    return None


def _short(text, limit=40):
    return repr(text if len(text) <= limit else text[:limit] + "...")


def clip_block(text, limit=CLIP):
    """A block of program text or data for feedback: at most `limit` characters and 12 lines."""
    lines = text.split("\n")
    cut = False
    if len(lines) > 12:
        lines, cut = lines[:12], True
    out = "\n".join(lines)
    if len(out) > limit:
        out, cut = out[:limit], True
    if cut:
        out = out.rstrip("\n") + "\n...[truncated]"
    return out.rstrip("\n") if out.strip() else "(empty)"


# ------------------------------------------------------------------ stdin/stdout


def _error_text(exc, source_lines, filename="<solution>"):
    import traceback

    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    lineno = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            lineno = tb.tb_lineno
        tb = tb.tb_next
    if isinstance(exc, SyntaxError) and exc.filename == filename:
        return f"{last} (line {exc.lineno})" if exc.lineno else last
    if lineno and 0 < lineno <= len(source_lines):
        return f"{last}\n  at line {lineno}: {source_lines[lineno - 1].strip()}"
    return last


def _run_tests_child(code, inputs, out_fd, source_lines):
    """In the forked child: run the solution on each input, send (index, error, output) frames. Never returns."""
    import threading
    from fcntl import F_DUPFD, fcntl

    open_ = open
    write, exit_, lseek, read, dup2, close = os.write, os._exit, os.lseek, os.read, os.dup2, os.close
    memfd, pack, main_thread = os.memfd_create, struct.pack, threading.main_thread

    def send(index, error, output):
        head = f"{index}\n{error}".encode("utf-8", "replace")
        data = pack(">II", len(head), len(output)) + head + output
        while data:
            data = data[write(out_fd, data):]

    def fake_exit(code=0):
        raise _ProgramExit(code)

    def high_memfd(name):  # above 0-2, whatever the solution closed in an earlier test
        fd = memfd(name)
        moved = fcntl(fd, F_DUPFD, 10)
        close(fd)
        return moved

    for index, text in enumerate(inputs):
        ifd = high_memfd("stdin")
        data = text.encode("utf-8")
        while data:
            data = data[write(ifd, data):]
        lseek(ifd, 0, 0)
        dup2(ifd, 0)
        close(ifd)
        ofd = high_memfd("stdout")
        dup2(ofd, 1)
        sys.stdin = open_(0, "r", encoding="utf-8", errors="replace", closefd=False)
        sys.stdout = open_(1, "w", encoding="utf-8", errors="replace", closefd=False)
        own_stdout = sys.stdout
        os._exit = fake_exit
        error = ""
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        try:
            exec(code, namespace)
            for t in threading.enumerate():  # a solution that runs main() in a thread (bigger stack)
                if t is not main_thread() and not t.daemon:
                    t.join()
        except (SystemExit, _ProgramExit) as exc:
            status = exc.code
            if status not in (None, 0, False):
                if isinstance(status, str):
                    error = f"the program exited with: {status[:200]}"
                else:
                    error = f"the program exited with status {status!r}"
        except BaseException as exc:  # noqa: B036 - a runtime error of the solution is its verdict
            try:
                error = "Runtime error: " + _error_text(exc, source_lines)
            except BaseException:
                error = f"Runtime error: {type(exc).__name__}"
        for stream in (sys.stdout, own_stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        del namespace
        out = bytearray()
        lseek(ofd, 0, 0)
        while True:
            chunk = read(ofd, 1 << 20)
            if not chunk:
                break
            out += chunk
        close(ofd)
        send(index, error, bytes(out))
        if error:
            break
    exit_(0)


def _read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, min(1 << 20, n - len(buf)))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _case_feedback(head, index, total, inp, out=None, exp=None, detail=""):
    parts = [f"{head} on test {index + 1} of {total}" + (f": {detail}" if detail else ""),
             f"INPUT:\n{clip_block(inp)}"]
    if out is not None:
        parts.append(f"OUTPUT:\n{clip_block(out)}")
    if exp is not None:
        parts.append(f"EXPECTED:\n{clip_block(exp)}")
    return "\n".join(parts)


def run_stdio(solution, cases, rule=DEFAULT_RULE):
    """Judge a stdin/stdout program on `cases` [(input, expected output), ...]; raise JudgeFailure at the first
    failing test. Returns only when every test passed."""
    import signal

    parse_rule(rule)
    if not cases:
        raise JudgeFailure("the task has no stdin/stdout tests (never a pass)")
    source_lines = solution.split("\n")
    try:
        code = compile(solution, "<solution>", "exec")
    except (SyntaxError, ValueError) as exc:
        raise JudgeFailure(_error_text(exc, source_lines)) from None
    inputs = [inp for inp, _ in cases]
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            fd = os.dup2(w, 3)  # over the sandbox's verdict descriptor: the solution never holds it
            if w != 3:
                os.close(w)
            os.closerange(4, 1024)
            _run_tests_child(code, inputs, fd, source_lines)
        finally:
            _exit(1)
    os.close(w)
    failure = None
    received = 0
    try:
        while received < len(cases):
            # where a timeout struck: the sandbox names the test from the last such line (worker.py)
            os.write(2, f"\n{PROGRESS} {received + 1} of {len(cases)}\n".encode())
            head = _read_exact(r, 8)
            if head is None:
                break
            hlen, olen = struct.unpack(">II", head)
            meta = _read_exact(r, hlen)
            output = _read_exact(r, olen)
            if meta is None or output is None:
                break
            idx_text, _, error = meta.decode("utf-8", "replace").partition("\n")
            if idx_text != str(received):
                failure = "the program wrote to the judge's channel (test results out of order)"
                break
            inp, exp = cases[received]
            out = output.decode("utf-8", "replace")
            if error:
                failure = _runtime_feedback(error, received, len(cases), inp)
                break
            diff = compare(out, exp, rule)
            if diff is not None:
                failure = _case_feedback("Wrong answer", received, len(cases), inp, out, exp, diff)
                break
            received += 1
    finally:
        if failure is not None or received < len(cases):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, status = os.waitpid(pid, 0)
        os.close(r)
    if failure is None and received < len(cases):
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            why = f"the program was killed by signal {name}"
        else:
            why = f"the program ended the judge (exit status {os.waitstatus_to_exitcode(status)})"
        failure = _case_feedback("Runtime error", received, len(cases), cases[received][0], detail=why)
    if failure is not None:
        raise JudgeFailure(failure)


def _runtime_feedback(error, index, total, inp):
    """`Runtime error: X\n  at line N: ...` -> the head names the test, then where, then the input."""
    first, _, rest = error.partition("\n")
    kind, _, detail = first.partition(": ")
    if not first.startswith("Runtime error"):
        kind, detail = "Runtime error", first
    text = f"{kind} on test {index + 1} of {total}: {detail}"
    if rest:
        text += "\n" + rest
    return text + f"\nINPUT:\n{clip_block(inp)}"


# ------------------------------------------------------------------ pytest-style test modules


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
