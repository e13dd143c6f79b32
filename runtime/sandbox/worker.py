"""A sandbox worker: a small, warm, stdlib-only process that runs one program at a time.

It is started as its own interpreter (`python -I worker.py CONFIG`), never forked from the
engine, so each per-execution fork copies a few MB, not a model. Protocol on two pipes:
requests and replies are length-prefixed JSON frames.

Per execution (as root, with namespaces available):

    worker (empty network namespace) ──fork──► child: pid 1 of a fresh PID namespace,
                                               its own mount namespace: private /proc, /tmp, /dev/shm,
                                               scratch cwd, rlimits, minimal env, uid dropped, runs code

Killing I (pid 1) makes the kernel kill every process in its namespace, including
daemonised `setsid` grandchildren. The worker lives in an empty network namespace, so
the code has no network. `passed` needs a line carrying a per-run random nonce on a
private pipe, written only after the test program ran to its end.
"""
from __future__ import annotations

import ast

# Warm imports: modules task programs commonly use cost a dict lookup in the child.
import bisect  # noqa: E401,F401
import builtins
import ctypes
import gc
import heapq  # noqa: E401,F401
import json
import math
import os
import re
import resource
import select
import signal
import struct
import sys
import time
import traceback

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1
SETUP_FAILED = 111  # exit status of a child whose sandbox setup failed

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def new_pid_namespace_for_children(own_pidns_fd: int) -> None:
    """Make our next fork pid 1 of a fresh PID namespace, without leaving our own.

    unshare(CLONE_NEWPID) works once per process; a setns() back to our own namespace
    first resets the "namespace for children", so each execution gets a new one and the
    worker needs no relay process.
    """
    setns(own_pidns_fd, CLONE_NEWPID)
    unshare(CLONE_NEWPID)


def mount(source: str, target: str, fstype: str, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                    data.encode() if data else None),
        f"mount {target}",
    )


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def expose_python_only() -> list[str]:
    """Give the worker a mount namespace where the interpreter is readable by the sandbox uid.

    Python often lives under a private home (/root/.pyenv): an unprivileged uid could not
    import a module it had not already got. Each such closed directory is covered with an
    empty tmpfs into which only the interpreter's own directories are bind-mounted, so the
    rest of that home (keys, configs) is not there at all. Returns the covered directories.
    """
    needed = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, *sys.path) if p and os.path.isdir(p)}
    blocked: dict[str, list[str]] = {}
    for path in sorted(needed):
        parts = path.split(os.sep)
        for i in range(2, len(parts) + 1):
            ancestor = os.sep.join(parts[:i])
            if not os.stat(ancestor).st_mode & 0o001:  # not traversable by "other"
                blocked.setdefault(ancestor, []).append(path)
                break
    if not blocked:
        return []
    keep = {p: os.open(p, os.O_PATH) for paths in blocked.values() for p in paths}
    covered = []
    for ancestor, _paths in blocked.items():
        if any(ancestor.startswith(c + os.sep) for c in covered):
            continue
        mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
        covered.append(ancestor)
    for path, fd in keep.items():
        os.makedirs(path, mode=0o755, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", path, "", MS_BIND | MS_REC)
        os.close(fd)
    return covered


def interpreter_dirs_under(mountpoint: str) -> list[str]:
    """The interpreter's own directories (prefix, sys.path) that live under `mountpoint`, outermost only:
    a virtualenv or checkout under /tmp, which the execution's private /tmp would otherwise hide."""
    needed = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, *sys.path) if p and os.path.isdir(p)})
    out: list[str] = []
    for path in needed:
        if path.startswith(mountpoint + os.sep) and not any(path.startswith(k + os.sep) for k in out):
            out.append(path)
    return out


def private_tmpfs(path: str, size_mb: int) -> None:
    """A fresh tmpfs on `path`, with the interpreter's directories under it bound back, read-only."""
    keep = {p: os.open(p, os.O_PATH) for p in interpreter_dirs_under(path)}
    mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size_mb}m,mode=1777")
    for kept, fd in keep.items():
        os.makedirs(kept, mode=0o755, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", kept, "", MS_BIND | MS_REC)
        make_readonly(kept)
        os.close(fd)


def make_readonly(path: str) -> bool:
    """Make every mount under `path` read-only in this mount namespace (mount_setattr, Linux 5.12+)."""
    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    ret = _libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), AT_RECURSIVE, ctypes.byref(attr),
                        ctypes.sizeof(attr))
    return ret == 0


# ------------------------------------------------------------------ framing


def read_exact(fd: int, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def read_frame(fd: int) -> dict:
    (size,) = struct.unpack(">I", read_exact(fd, 4))
    return json.loads(read_exact(fd, size))


def write_frame(fd: int, obj: dict) -> None:
    data = json.dumps(obj).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


# ------------------------------------------------------------------ feedback (runs inside the sandbox)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 15] + " ...[truncated]"


def _safe_repr(value, limit: int = 300) -> str:
    try:
        return _clip(repr(value), limit)
    except BaseException as exc:  # a hostile __repr__
        return f"<unprintable {type(value).__name__}: {type(exc).__name__}>"


def assert_feedback(line: str, frame) -> str | None:
    """For `assert f(x) == y`: INPUT / OUTPUT / EXPECTED, re-evaluated in the failing frame."""
    try:
        node = ast.parse(line.strip()).body[0]
    except (SyntaxError, IndexError, ValueError):
        return None
    if not isinstance(node, ast.Assert):
        return None
    test = node.test
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], (ast.Eq, ast.Is))):
        return None
    left, right = test.left, test.comparators[0]
    env_g, env_l = frame.f_globals, dict(frame.f_locals)
    try:
        actual = eval(compile(ast.Expression(left), "<feedback>", "eval"), env_g, env_l)
        expected = eval(compile(ast.Expression(right), "<feedback>", "eval"), env_g, env_l)
    except BaseException as exc:
        return f"{type(exc).__name__} while computing the output: {_clip(str(exc), 200)}"
    if isinstance(left, ast.Call):
        args = [ast.unparse(a) for a in left.args] + [ast.unparse(k) for k in left.keywords]
        inp = ", ".join(args)
    else:
        inp = ast.unparse(left)
    return f"INPUT: {_clip(inp, 300)}\nOUTPUT: {_safe_repr(actual)}\nEXPECTED: {_safe_repr(expected)}"


def exception_feedback(exc: BaseException, program_lines: list[str]) -> str:
    judged = getattr(exc, "persd_feedback", None)  # a judge's own report (judge.py): already written for a reader
    if isinstance(judged, str) and isinstance(exc, AssertionError):
        return judged
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    frame, lineno = None, None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<program>":
            frame, lineno = tb.tb_frame, tb.tb_lineno
        tb = tb.tb_next
    if isinstance(exc, SyntaxError) and exc.filename == "<program>":
        lineno = exc.lineno
    line = program_lines[lineno - 1].strip() if lineno and 0 < lineno <= len(program_lines) else ""
    if isinstance(exc, AssertionError) and line.startswith("assert") and frame is not None:
        detail = assert_feedback(line, frame)
        head = f"AssertionError: {line}"
        if exc.args:
            head += f" ({_clip(str(exc), 200)})"
        return head + (f"\n{detail}" if detail else "")
    if line and not isinstance(exc, SyntaxError):
        return f"{last}\n  at line {lineno}: {line}"
    return last


# ------------------------------------------------------------------ the child


def run_child(program: str, cfg: dict, caps: dict, fds: dict, nonce: str, timeout: float,
              cpu_limit: float | None = None) -> None:
    """Set up the sandbox around this process, run the program, report, `_exit`. Never returns."""
    try:
        os.setsid()
        set_pdeathsig()  # the worker died: so do we (and, as pid 1, everything we started)
        if caps.get("mntns"):
            unshare(CLONE_NEWNS)  # a copy of the worker's (private, read-only) view
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            for path in ("/tmp", "/dev/shm"):
                if os.path.isdir(path):
                    private_tmpfs(path, cfg["tmpfs_mb"])
        scratch = os.path.join("/tmp", f"persd-run-{nonce[:12]}")
        os.mkdir(scratch, 0o700)
        uid = caps.get("uid")
        if uid is not None:
            os.chown(scratch, uid, uid)
        os.chdir(scratch)
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(fds["out"], 1)
        os.dup2(fds["err"], 2)
        verdict_fd = os.dup2(fds["verdict"], 3, inheritable=False)
        os.closerange(4, 65536)
        mb = 1024 * 1024
        limits = [
            (resource.RLIMIT_AS, cfg["memory_mb"] * mb),
            (resource.RLIMIT_FSIZE, cfg["max_file_mb"] * mb),
            (resource.RLIMIT_CORE, 0),
            # A per-process backstop: the worker itself stops the program at its CPU limit, counting
            # the CPU of children it reaped too; RLIMIT_CPU still bounds each process on its own.
            (resource.RLIMIT_CPU, math.ceil(cpu_limit) + 1 if cpu_limit else int(timeout) + 2),
            (resource.RLIMIT_NOFILE, 256),
        ]
        if uid is not None:  # RLIMIT_NPROC is per real uid: only meaningful once we have our own
            limits.append((resource.RLIMIT_NPROC, cfg["max_procs"]))
        for res, value in limits:
            resource.setrlimit(res, (value, value))
        os.environ.clear()
        os.environ.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch,
                           "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"})
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        set_pdeathsig()  # after setuid, which clears it
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversize writes fail with EFBIG instead
    except BaseException:
        traceback.print_exc()
        os._exit(SETUP_FAILED)
    harness(program, verdict_fd, nonce, cfg["feedback_chars"])


def harness(program: str, verdict_fd: int, nonce: str, feedback_chars: int) -> None:
    """Run the program; `passed` is reported only if its last statement completed."""
    write, exit_, getpid = os.write, os._exit, os.getpid  # bound before the code can replace them
    harness_pid = getpid()

    def report(status: str, feedback: str) -> None:
        if getpid() != harness_pid:  # a child the code forked ran to the end: it has no say
            exit_(0)
        try:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
        except BaseException:
            pass
        try:
            data = f"\n{nonce} {status}\n{_clip(feedback, feedback_chars)}\n{nonce} end\n".encode("utf-8", "replace")
            while data:
                data = data[write(verdict_fd, data):]
        except BaseException:
            pass
        exit_(0)

    sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False)
    lines = program.split("\n")
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        code = compile(program, "<program>", "exec")
        exec(code, namespace)
    except SystemExit as exc:
        report("failed", f"the program called exit({exc.code!r}) before its tests finished")
    except BaseException as exc:
        try:
            feedback = exception_feedback(exc, lines)
        except BaseException as inner:
            feedback = f"{type(exc).__name__} (feedback failed: {type(inner).__name__})"
        report("failed", feedback)
    else:
        report("passed", "")


# ------------------------------------------------------------------ the worker


class Worker:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.caps = self.probe()

    # -- capabilities

    def probe(self) -> dict:
        caps: dict = {"uid": None, "netns": False, "pidns": False, "mntns": False}
        if os.geteuid() == 0:  # never run untrusted code as root, whatever else is switched off
            caps["uid"] = int(self.cfg["uid"])
        if not self.cfg.get("namespaces", True):
            return caps
        try:
            unshare(CLONE_NEWNET)  # the worker itself moves into an empty network namespace
            caps["netns"] = True
        except OSError:
            pass
        try:
            self.pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY)
            new_pid_namespace_for_children(self.pidns_fd)
        except OSError:
            return caps
        pid = os.fork()
        if pid == 0:  # pid 1 of a new namespace: can it get its own mounts?
            try:
                unshare(CLONE_NEWNS)
                mount("none", "/", "", MS_REC | MS_PRIVATE)
                mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m")
                os._exit(0 if os.getpid() == 1 else 1)
            except BaseException:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) == 0:
            caps["pidns"] = caps["mntns"] = True
            unshare(CLONE_NEWNS)  # the worker's own view, inherited by every execution
            mount("none", "/", "", MS_REC | MS_PRIVATE)
            if caps["uid"] is not None:
                caps["hidden"] = expose_python_only()
            caps["readonly_root"] = make_readonly("/")
        return caps

    def protections(self) -> list[str]:
        active = ["rlimits (memory, file size, cpu, open files)", "scratch cwd", "minimal environment",
                  "stdin /dev/null", "nonce verdict channel"]
        if self.caps["pidns"]:
            active.append("pid namespace (kills every descendant)")
        if self.caps["mntns"]:
            active.append("private /proc, /tmp and /dev/shm")
        if self.caps["netns"]:
            active.append("network namespace (no network)")
        if self.caps.get("readonly_root"):
            active.append("read-only filesystem outside /tmp and /dev/shm")
        if self.caps.get("hidden"):
            active.append(f"hidden: {', '.join(self.caps['hidden'])} (only the interpreter shown)")
        if self.caps["uid"] is not None:
            active.append(f"unprivileged uid {self.caps['uid']} with process limit")
        return active

    # -- one execution

    def execute(self, program: str, timeout: float, cpu_limit: float | None = None) -> dict:
        """Run one program. `timeout` is the wall-clock limit; `cpu_limit`, when given, the CPU
        seconds the program (with the children it reaped) may spend before it is stopped."""
        nonce = os.urandom(16).hex()
        verdict_r, verdict_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        fds = {"verdict": verdict_w, "out": out_w, "err": err_w}
        start = time.monotonic()
        if self.caps["pidns"]:
            new_pid_namespace_for_children(self.pidns_fd)
        pid = os.fork()
        if pid == 0:
            try:
                for fd in (verdict_r, out_r, err_r):
                    os.close(fd)
                run_child(program, self.cfg, self.caps, fds, nonce, timeout, cpu_limit)
            finally:
                os._exit(SETUP_FAILED)
        for fd in (verdict_w, out_w, err_w):
            os.close(fd)
        outcome = self.supervise(pid, timeout, start, {"verdict": verdict_r, "out": out_r, "err": err_r},
                                 cpu_limit)
        _, outcome["wait_status"], usage = os.wait4(pid, 0)
        # CPU of the program and of every child it waited for (exact, unlike the polled ticks)
        outcome["cpu_s"] = max(usage.ru_utime + usage.ru_stime, outcome["cpu_seen"])
        if not self.caps["pidns"]:
            self.sweep(pid)
        outcome["duration_s"] = time.monotonic() - start
        return self.verdict(outcome, nonce, timeout, cpu_limit)

    def supervise(self, target: int, timeout: float, start: float, fds: dict,
                  cpu_limit: float | None = None) -> dict:
        """Drain the three pipes until the program exits or a limit passes, then kill it.

        The wall-clock deadline is `start + timeout`; with `cpu_limit` it is a backstop for programs
        that sleep or block, and time spent waiting for a CPU (runqueue wait, from /proc schedstat)
        is added to it, up to STARVED_FACTOR x timeout in all. With `cpu_limit`, the CPU time of the
        program and its descendants (polled from /proc, in clock ticks) is checked each time it
        could have reached the limit: a single-threaded program spends at most one CPU second per
        wall second, so the next check is due when the CPU left has passed on the wall clock (0.5 s
        at most, for threads).
        `target` is our own child, so its pid cannot be reused before we reap it.
        """
        cap = int(self.cfg["max_output_bytes"])
        bufs = {name: bytearray() for name in fds}
        dropped = {name: 0 for name in fds}
        open_fds = {fd: name for name, fd in fds.items()}
        pidfd = os.pidfd_open(target)
        deadline = start + timeout
        hard_deadline = start + STARVED_FACTOR * timeout  # with a CPU limit: the backstop's own backstop
        stopped_by: str | None = None
        exited = False
        cpu_seen = 0.0
        while True:
            now = time.monotonic()
            remaining = deadline - now
            if cpu_limit is not None:
                # The backstop counts the time the program ran or chose to wait (sleep, a lock, I/O),
                # not the time it sat runnable waiting for a CPU: a loaded machine cannot use it up.
                remaining += runqueue_wait_s(target)
                remaining = min(remaining, hard_deadline - now)
            if remaining <= 0:
                stopped_by = "wall"
                break
            if cpu_limit is not None:
                cpu_seen = tree_cpu_s(target)
                cpu_left = cpu_limit - cpu_seen
                if cpu_left <= 0:
                    stopped_by = "cpu"
                    break
                remaining = min(remaining, max(0.01, min(cpu_left, 0.5)))
            ready, _, _ = select.select(list(open_fds) + [pidfd], [], [], remaining)
            if pidfd in ready:
                exited = True
            for fd in ready:
                if fd == pidfd:
                    continue
                name = open_fds[fd]
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    del open_fds[fd]
                    os.close(fd)
                    continue
                limit = cap if name != "verdict" else 1 << 20
                room = limit - len(bufs[name])
                if name == "verdict" and room < len(chunk):  # keep the tail: the real report comes last
                    bufs[name] = bufs[name][-(1 << 16):]
                    room = limit - len(bufs[name])
                bufs[name] += chunk[:room]
                dropped[name] += max(0, len(chunk) - room)
            if exited:
                break
        try:
            os.kill(target, signal.SIGKILL)  # pid 1 of its namespace: takes every descendant with it
        except ProcessLookupError:
            pass
        # What was written before the exit is still in the pipes: read what is there, without waiting.
        for fd, name in list(open_fds.items()):
            os.set_blocking(fd, False)
            try:
                while len(bufs[name]) < (cap if name != "verdict" else 1 << 20):
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        break
                    bufs[name] += chunk
            except BlockingIOError:
                pass
            os.close(fd)
        os.close(pidfd)
        return {"bufs": bufs, "dropped": dropped, "stopped_by": None if exited else stopped_by,
                "cpu_seen": cpu_seen}

    def sweep(self, pid: int) -> None:
        """Without a PID namespace: kill the process group, and every process of our sandbox uid."""
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        uid = self.caps["uid"]
        if uid is None:
            return
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/status") as fh:
                        if any(ln.startswith("Uid:") and ln.split()[1] == str(uid) for ln in fh):
                            os.kill(int(entry), signal.SIGKILL)
                except (OSError, IndexError):
                    pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break

    def verdict(self, outcome: dict, nonce: str, timeout: float, cpu_limit: float | None = None) -> dict:
        bufs = outcome["bufs"]
        stdout = bufs["out"].decode("utf-8", "replace")
        stderr = bufs["err"].decode("utf-8", "replace")
        if outcome["dropped"]["out"]:
            stdout += f"\n...[{outcome['dropped']['out']} more bytes dropped]"
        if outcome["dropped"]["err"]:
            stderr += f"\n...[{outcome['dropped']['err']} more bytes dropped]"
        status_word, feedback = parse_report(bytes(bufs["verdict"]), nonce)
        wait_status = outcome.get("wait_status")
        exit_code = sig = None
        if wait_status is not None:
            if os.WIFSIGNALED(wait_status):
                sig = os.WTERMSIG(wait_status)
            elif os.WIFEXITED(wait_status):
                exit_code = os.WEXITSTATUS(wait_status)
        result = {"duration_s": outcome["duration_s"], "cpu_s": outcome.get("cpu_s", 0.0), "stdout": stdout,
                  "stderr": stderr, "exit_code": exit_code, "signal": sig, "limit": None, "limit_s": None}
        stopped_by = outcome["stopped_by"]
        if stopped_by is None and cpu_limit is not None and sig == signal.SIGXCPU:
            stopped_by = "cpu"  # RLIMIT_CPU's backstop fired before the worker's own check
        if status_word in ("passed", "failed"):
            result.update(status=status_word, feedback=feedback)
        elif stopped_by == "cpu":
            result.update(status="timeout", feedback=f"Timed out: used its limit of {cpu_limit:g} s of CPU time",
                          signal=None, exit_code=None, limit="cpu", limit_s=cpu_limit)
        elif stopped_by == "wall":
            feedback = f"Timed out after {timeout:g} s"
            if cpu_limit is not None:
                feedback += " of wall-clock time (sleeping or blocked)"
            result.update(status="timeout", feedback=feedback, signal=None, exit_code=None, limit="wall",
                          limit_s=timeout)
        elif exit_code == SETUP_FAILED:
            result.update(status="error", feedback="sandbox setup failed: " + _clip(stderr.strip(), 500))
        elif sig is not None:
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            result.update(status="error", feedback=f"the program was killed by signal {name}")
        else:
            tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
            msg = f"the program exited (status {exit_code}) before its tests finished"
            result.update(status="failed", feedback=msg + (f": {tail[0][:300]}" if tail else ""))
        if result.get("status") == "timeout" and not outcome["dropped"]["err"]:
            running = JUDGE_PROGRESS.findall(stderr)  # a stdin/stdout judge's last "running test i of n"
            if running:
                result["feedback"] += f", running test {running[-1][0]} of {running[-1][1]}"
        result["feedback"] = _clip(result["feedback"], int(self.cfg["feedback_chars"]))
        return result


_CLK_TCK = os.sysconf("SC_CLK_TCK")
JUDGE_PROGRESS = re.compile(r"^\[persd judge\] running test (\d+) of (\d+)$", re.M)  # judge.py's PROGRESS
STARVED_FACTOR = 10  # a CPU-limited program's wall backstop stretches at most this far under load (pool.py too)


def runqueue_wait_s(pid: int) -> float:
    """Seconds `pid`'s main thread spent runnable but waiting for a CPU (0 where schedstat is absent)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def process_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and of the children it has reaped (utime+stime+cutime+cstime), 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return sum(int(x) for x in fields[11:15]) / _CLK_TCK


def tree_cpu_s(pid: int, max_procs: int = 256) -> float:
    """CPU seconds of `pid` and its descendants, living or reaped (a program that forks workers
    spends its budget together with them). Descendants are found through each process's main
    thread's /proc children list; one forked from another thread is counted once reaped."""
    total, stack, seen = 0.0, [pid], 0
    while stack and seen < max_procs:
        p = stack.pop()
        seen += 1
        total += process_cpu_s(p)
        try:
            with open(f"/proc/{p}/task/{p}/children", "rb") as fh:
                stack.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError):
            pass
    return total


def parse_report(data: bytes, nonce: str) -> tuple[str | None, str]:
    """Find the harness's `<nonce> STATUS ... <nonce> end` report; anything else is ignored."""
    text = data.decode("utf-8", "replace")
    end = text.rfind(f"\n{nonce} end\n")
    if end < 0:
        return None, ""
    start = max(text.rfind(f"\n{nonce} passed\n", 0, end), text.rfind(f"\n{nonce} failed\n", 0, end))
    if start < 0:
        return None, ""
    head, _, body = text[start + 1:end].partition("\n")
    return head.split(" ", 1)[1], body


def main() -> None:
    cfg = json.loads(sys.argv[1])
    # The protocol lives on private descriptors; 0/1 point at /dev/null so nothing printed can corrupt it.
    req_fd, rep_fd = os.dup(0), os.dup(1)
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    set_pdeathsig()  # the engine died: so do we
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the engine's to handle
    worker = Worker(cfg)
    gc.collect()
    gc.freeze()  # keep the collector from touching (and so copying) the worker's pages in each child
    write_frame(rep_fd, {"ready": True, "caps": {k: v for k, v in worker.caps.items()},
                         "protections": worker.protections()})
    while True:
        try:
            request = read_frame(req_fd)
        except EOFError:
            return
        try:
            cpu_limit = request.get("cpu_limit")
            reply = worker.execute(request["program"], float(request["timeout"]),
                                   float(cpu_limit) if cpu_limit is not None else None)
        except OSError as exc:
            reply = {"status": "error", "feedback": f"sandbox failure: {exc}", "duration_s": 0.0, "cpu_s": 0.0,
                     "stdout": "", "stderr": "", "exit_code": None, "signal": None, "limit": None, "limit_s": None}
        reply["id"] = request["id"]
        write_frame(rep_fd, reply)


if __name__ == "__main__":
    main()
