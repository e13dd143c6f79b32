"""The judges for stdin/stdout and pytest-style tasks (runtime/sandbox/judge.py), in the real sandbox:
comparison rules, feedback, one execution for all of a task's tests, and no false pass from hostile code."""
from __future__ import annotations

import pytest
from persd.runtime.sandbox import Sandbox, SandboxConfig
from persd.runtime.sandbox.judge import compare, parse_rule
from persd.runtime.sandbox.programs import pytest_program, stdio_program

ADD = "a, b = map(int, input().split())\nprint(a + b)\n"
CASES = [(f"{i} {i + 1}\n", f"{2 * i + 1}\n") for i in range(10)]


@pytest.fixture(scope="module")
async def sandbox():
    async with Sandbox(SandboxConfig(workers=2, timeout_s=10)) as sb:
        yield sb


# ------------------------------------------------------------------ comparison rules


@pytest.mark.parametrize("actual,expected,rule,ok", [
    ("1 2\n3\n", "1 2 3", "tokens", True),  # whitespace and line breaks normalised
    ("  1\t2  \r\n\n\n", "1 2\n", "float", True),
    ("1 2", "1 2 3", "tokens", False),
    ("YES", "yes", "tokens", False),  # case matters
    ("0.3333333", "0.333333333", "float:1e-6", True),
    ("0.3334", "0.333333333", "float:1e-6", False),
    ("0.3334", "0.333333333", "float:1e-3", True),
    ("1000000.5", "1000000.0", "float:1e-6", True),  # relative for large values
    ("1000001", "1000000", "float:1e-6", False),  # integers are compared exactly
    ("123456789012345679", "123456789012345678", "float", False),
    ("1e-9", "0.0", "float:1e-6", True),
    ("abc", "1.5", "float", False),
    ("nan", "nan", "float", True),
    ("a b\n", "a  b\n", "lines", False),  # inner spacing matters by line
    ("a b  \n\n", "a b\n", "lines", True),  # trailing spaces and blank lines do not
    ("a\r\nb\n", "a\nb\n", "exact", True),
    ("a\nb", "a\nb\n", "exact", False),
])
def test_compare_rules(actual, expected, rule, ok):
    assert (compare(actual, expected, rule) is None) is ok


def test_bad_rules_are_refused():
    for rule in ("fuzzy", "tokens:3", "float:-1", "float:x"):
        with pytest.raises(ValueError):
            parse_rule(rule)
    with pytest.raises(ValueError):
        stdio_program(ADD, CASES, "fuzzy")


# ------------------------------------------------------------------ stdin/stdout in the sandbox


async def test_reference_passes_and_all_tests_run_in_one_process(sandbox):
    before = sandbox.executions
    probe = ADD + "import os, sys\nprint(f'pid={os.getpid()}', file=sys.stderr)\n"
    r = await sandbox.run(stdio_program(probe, CASES))
    assert r.status == "passed", r.feedback
    assert sandbox.executions - before == 1  # one sandbox execution ...
    pids = [w for w in r.stderr.split() if w.startswith("pid=")]
    assert len(pids) == 10 and len(set(pids)) == 1  # ... and one process ran every test


async def test_wrong_answer_names_the_first_failing_test(sandbox):
    wrong = "a, b = map(int, input().split())\nprint(a + b if a < 4 else a * b)\n"
    r = await sandbox.run(stdio_program(wrong, CASES))
    assert r.status == "failed"
    assert r.feedback == ("Wrong answer on test 5 of 10: token 1: '20' instead of '9'\n"
                          "INPUT:\n4 5\nOUTPUT:\n20\nEXPECTED:\n9")


async def test_long_inputs_and_outputs_are_cut(sandbox):
    cases = [(" ".join(["7"] * 5000) + "\n", "x\n")]
    r = await sandbox.run(stdio_program("print(input())\n", cases))
    assert r.status == "failed" and len(r.feedback) <= 1000
    assert "...[truncated]" in r.feedback and "EXPECTED:\nx" in r.feedback


async def test_runtime_error_and_exit_status(sandbox):
    r = await sandbox.run(stdio_program(ADD + "if a == 3:\n    [][1]\n", CASES))
    assert r.status == "failed"
    assert r.feedback.startswith("Runtime error on test 4 of 10: IndexError: list index out of range\n"
                                 "  at line 4: [][1]\nINPUT:\n3 4")
    r = await sandbox.run(stdio_program("import sys\nsys.exit(2)\n", CASES))
    assert r.status == "failed" and "exited with status 2" in r.feedback
    r = await sandbox.run(stdio_program("def f(:\n", CASES))
    assert r.status == "failed" and r.feedback.startswith("SyntaxError")


@pytest.mark.parametrize("name,program", [
    ("exit 0 after a right answer, each time", ADD + "import sys\nsys.exit(0)\n"),
    ("os._exit after flushing", "import os, sys\na, b = map(int, sys.stdin.buffer.read().split())\n"
                                "os.write(1, b'%d\\n' % (a + b))\nos._exit(0)\n"),
    ("main in a thread", "import threading\ndef main():\n    a, b = map(int, open(0).read().split())\n"
                         "    print(a + b)\nthreading.Thread(target=main).start()\n"),
    ("fd 0 closed by one test", "import sys\ndata = open(0).read().split()\nprint(int(data[0]) + int(data[1]))\n"),
])
async def test_idioms_of_real_solutions_pass(sandbox, name, program):
    r = await sandbox.run(stdio_program(program, CASES))
    assert r.status == "passed", (name, r.feedback)


# Never a false pass: code that prints the right answer then misbehaves, ends the judge, or forges its channel.
HOSTILE = [
    ("right answer, then a crash", ADD + "raise RuntimeError('after printing')\n"),
    ("right answer, then exit(1)", ADD + "import sys\nsys.exit(1)\n"),
    ("exit(0) before answering", "import sys\nsys.exit(0)\nprint(1)\n"),
    ("posix._exit(0) past the judge", ADD + "import sys, posix\nsys.stdout.flush()\nposix._exit(0)\n"),
    ("SIGKILL to itself", ADD + "import os, signal, sys\nsys.stdout.flush()\nos.kill(os.getpid(), signal.SIGKILL)\n"),
    ("kills the judge, answers wrong", "import os, signal\nprint(0)\nos.kill(os.getppid(), signal.SIGKILL)\n"),
    ("forged frames on the judge channel", "import os, struct\nfor i in range(10):\n"
     "    h = f'{i}\\n'.encode()\n    os.write(3, struct.pack('>II', len(h), 2) + h + b'1\\n')\nos._exit(0)\n"),
    ("closes the judge channel", "import os\nos.close(3)\n" + ADD),
    ("a verdict line on every descriptor", "import os\nfor fd in range(1, 10):\n    try:\n"
     "        os.write(fd, b'\\nx passed\\n\\nx end\\n')\n    except OSError:\n        pass\n"),
    ("answers only the first test", "print(1)\n"),
]


@pytest.mark.parametrize("name,program", HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_hostile_stdio_programs_never_pass(sandbox, name, program):
    r = await sandbox.run(stdio_program(program, CASES))
    assert r.status != "passed", name


async def test_infinite_loop_is_a_timeout(sandbox):
    r = await sandbox.run(stdio_program(ADD + "while a == 2:\n    pass\n", CASES), cpu_limit=1.0)
    assert r.status == "timeout"
    assert r.feedback.endswith("CPU time, running test 3 of 10"), r.feedback  # the input with a == 2


# ------------------------------------------------------------------ pytest-style modules

TESTS = """import pytest
from solution import add, read_name


def test_add():
    assert add(1, 2) == 3


@pytest.mark.parametrize("a, b, c", [(1, 1, 2), (2, 3, 5)])
def test_param(a, b, c):
    assert add(a, b) == c


def test_raises():
    with pytest.raises(TypeError, match="unsupported"):
        add(1, "x")


def test_approx():
    assert add(0.1, 0.2) == pytest.approx(0.3)


@pytest.fixture
def base():
    yield 10


def test_fixture(base, tmp_path, capsys, monkeypatch):
    (tmp_path / "f").write_text("x")
    print("hello")
    assert capsys.readouterr().out == "hello\\n"
    monkeypatch.setattr("builtins.input", lambda *a: "Ada")
    assert read_name() == "Ada"
    assert add(base, 1) == 11


class TestMore:
    def test_zero(self):
        assert add(0, 0) == 0
"""
SOLUTION = "def add(a, b):\n    return a + b\n\ndef read_name():\n    return input()\n"


async def test_pytest_module_passes_without_pytest(sandbox):
    r = await sandbox.run(pytest_program(SOLUTION, TESTS))
    assert r.status == "passed", r.feedback


async def test_pytest_feedback_names_the_test_and_its_assertion(sandbox):
    wrong = SOLUTION.replace("return a + b", "return a + b if a != 2 else 0")
    r = await sandbox.run(pytest_program(wrong, TESTS))
    assert r.status == "failed"
    assert r.feedback == ("test_param[1] failed: AssertionError: assert add(a, b) == c\n"
                          "INPUT: a, b\nOUTPUT: 0\nEXPECTED: 5")


@pytest.mark.parametrize("name,solution,tests", [
    ("exit(0) on import", "import sys\nsys.exit(0)\n" + SOLUTION, TESTS),
    ("os._exit(0) when called", "import os\ndef add(a, b):\n    os._exit(0)\ndef read_name():\n    return ''\n", TESTS),
    ("SystemExit inside a test", "def add(a, b):\n    raise SystemExit(0)\ndef read_name():\n    return ''\n", TESTS),
    ("a module with no tests", SOLUTION, "from solution import add\n\ndef helper():\n    assert add(1, 1) == 2\n"),
    ("an empty parametrize", SOLUTION, "import pytest\nfrom solution import add\n\n"
                                       "@pytest.mark.parametrize('a', [])\ndef test_a(a):\n    assert False\n"),
])
async def test_hostile_pytest_solutions_never_pass(sandbox, name, solution, tests):
    r = await sandbox.run(pytest_program(solution, tests))
    assert r.status != "passed", name
