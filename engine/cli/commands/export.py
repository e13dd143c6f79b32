"""`persd export DIR [DIR...] --out PATH`: the sealed records of collect runs as a dataset (parquet, a saved
`datasets` folder or JSONL) with a dataset card, optionally pushed to the Hugging Face hub (docs/export.md)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from persd import config
from persd.config import Command, load, opt
from persd.engine.collect.config import FORMATS
from persd.engine.export import EXPORT_FORMATS, STYLES, export, push_to_hub
from persd.runtime.errors import ConfigError


def _formats(text: str) -> tuple[str, ...]:
    from persd.engine.collect.layout import FORMAT_ALIASES

    out = tuple(f.strip() for f in text.split(",") if f.strip())
    for f in out:
        if f not in FORMATS and f not in FORMAT_ALIASES:
            raise ValueError(f"'{f}' is not a record format ({', '.join(FORMATS + tuple(FORMAT_ALIASES))})")
    return out


@dataclass
class ExportConfig:
    dirs: list[str] = opt(default_factory=list, help="collect output directories (--out of persd collect)",
                          changes_results=False, positional=True, nargs="+", metavar="DIR", shown="required")
    out: str = opt("", help="the dataset folder to write", changes_results=False, shown="required")
    format: str = opt("parquet", help="parquet (data/*.parquet + card), hf (datasets.save_to_disk + card) or "
                      "jsonl (data/*.jsonl + card)", changes_results=False, choices=EXPORT_FORMATS)
    formats: tuple[str, ...] = opt((), help="only these record formats: comma list of persd, persd-refine, inpd, "
                                   "stand (persd-combined: persd,persd-refine)", changes_results=False,
                                   type=_formats, shown="all")
    style: str = opt("prompt-completion", help="columns: prompt + completion, or messages (a user and an assistant "
                     "turn, for TRL's SFTTrainer)", changes_results=False, choices=STYLES)
    split: str = opt("train", help="the split's name", changes_results=False)
    name: str = opt("", help="the card's title", changes_results=False, shown="persd records")
    license: str = opt("other", help="this data set's licence (the card's `license`)", changes_results=False)
    tasks_license: str = opt("unknown", help="the task set's licence, as the card states it", changes_results=False)
    teacher_terms: str = opt("unknown", help="the teacher model's licence or terms of use, as the card states them",
                             changes_results=False)
    push_to_hub: str | None = opt(None, help="upload the folder to this hub dataset repository (HF_ENDPOINT names "
                                  "another hub)", changes_results=False, metavar="REPO", shown="no upload")
    hub_token_env: str = opt("HF_TOKEN", help="environment variable holding the hub token", changes_results=False)
    private: bool = opt(False, help="create the hub repository private", changes_results=False)
    force: bool = opt(False, help="replace --out if it exists and is not empty", changes_results=False)

    def validate(self) -> None:
        if not self.dirs:
            raise ConfigError("dirs", "give one or more collect directories (persd export DIR --out PATH)")
        if not self.out:
            raise ConfigError("out", "required (persd export --help)")


EXPORT = Command(ExportConfig, "export", description=__doc__)


def build_parser():
    return config.build_parser(EXPORT)


def main(argv: list[str]) -> int:
    args = load(EXPORT, argv)
    t0 = time.monotonic()
    out = Path(args.out)
    stats = export(args.dirs, out, args.format, args.style, args.formats or None, args.split,
                   {"license": args.license, "tasks_license": args.tasks_license,
                    "teacher_terms": args.teacher_terms, "name": args.name}, force=args.force)
    formats = ", ".join(f"{k} {v}" for k, v in sorted(stats.per_format.items())) or "none"
    print(f"exported {stats.records} records ({formats}) of {stats.tasks} tasks from {len(stats.runs)} run(s) "
          f"to {out} ({args.format}, {args.style}) in {time.monotonic() - t0:.1f} s; card: {out / 'README.md'}")
    if args.push_to_hub:
        url = push_to_hub(out, args.push_to_hub, args.format, args.split, args.hub_token_env, args.private)
        print(f"pushed to the hub: {args.push_to_hub} ({url})")
    return 0
