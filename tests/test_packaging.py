"""Packaging: persd installs as one top-level package, `persd`, and runs outside its checkout.

The wheel is built from the checkout and installed (no dependencies: those come from the test
environment's site-packages, added by a path file) into a fresh virtualenv in a temporary folder;
`persd collect` then runs from there, in a folder far from the checkout, with no `PERSD_DATA_DIR`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
TOP = ("engine", "runtime", "trainers", "bench")


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"persd"} | {"persd." + ".".join(p.parent.relative_to(REPO).parts)
                         for top in TOP for p in (REPO / top).rglob("__init__.py")}
    assert found == listed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy, so the build's scratch folders never land in the checkout
    src = tmp_path_factory.mktemp("src") / "persd"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build", ".gpu", "__pycache__",
                                                              "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--disable-pip-version-check", "-w", str(out), str(src)], check=True, capture_output=True)
    (whl,) = out.glob("persd-*.whl")
    return whl


def test_the_wheel_holds_persd_and_nothing_else_at_the_top(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"persd", next(t for t in tops if t.endswith(".dist-info"))}
    for needed in ("persd/engine/cli/main.py", "persd/runtime/sandbox/worker.py", "persd/trainers/configs/zero3.json",
                   "persd/trainers/presets/paper.toml", "persd/engine/collect/layout.py", "persd/__main__.py"):
        assert needed in names
    assert not any(n.startswith("persd/tests/") or n.endswith("pyproject.toml") for n in names)


def test_installed_wheel_runs_collect_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([venv / "bin" / "python", "-c",
                                "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                    "--disable-pip-version-check", "--target", str(site), str(wheel)], check=True, capture_output=True)
    # the dependencies (torch, transformers, aiohttp, ...) from this environment, after the new site-packages;
    # path files inside it are not processed, so this environment's editable persd stays out
    (site / "persd-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PERSD_DATA_DIR")}
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([venv / "bin" / "python", "-c", "import persd; print(persd.__file__)"], cwd=work, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(site)
    proc = subprocess.run([venv / "bin" / "python", "-m", "persd", "collect", "--tasks", "humaneval", "--limit", "3",
                           "--max-tokens", "16", "--progress", "plain", "--out", str(work / "run")],
                          cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "run" / "shards" / "shard-00000.results.jsonl").is_file()
