"""`persd tiny-model --out DIR [--seed 0]`: write a tiny random-weight causal LM for tests and demos."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from persd.config import Command, load, opt
from persd.runtime.errors import ConfigError


@dataclass
class TinyModelConfig:
    out: str = opt("", help="directory to write the model to", changes_results=False, shown="required")
    seed: int = opt(0, help="weight initialisation seed", changes_results=True)
    force: bool = opt(False, help="overwrite a model (or other files) already in --out", changes_results=False)

    def validate(self) -> None:
        if not self.out:
            raise ConfigError("out", "required (the directory to write the model to)")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise ConfigError("out", f"'{self.out}' exists and is not a directory")
        out = Path(self.out)
        if out.is_dir() and any(out.iterdir()) and not self.force:
            what = "a model" if (out / "config.json").exists() else "files"
            raise ConfigError("out", f"'{out}' already holds {what}; use another --out, or pass --force to "
                              f"overwrite")


TINY_MODEL = Command(TinyModelConfig, "tiny-model", description=__doc__.split("\n")[0].split(": ", 1)[1])


def main(argv: list[str]) -> int:
    cfg = load(TINY_MODEL, argv)
    from persd.runtime.student.tiny_model import write_tiny_model

    path = write_tiny_model(Path(cfg.out), seed=cfg.seed)
    print(f"wrote tiny model to {path}")
    return 0
