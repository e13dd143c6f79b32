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
- `run_pytest(solution, tests)` (judge_pytest.py, embedded after this file): a test module
  (`def test_...():`, `from solution import f`), run without pytest.

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
