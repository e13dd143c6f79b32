"""The `persd` command line: the entry point (`main`) and one module per sub-command (`commands/`)."""
from persd.engine.cli.main import main

__all__ = ["main"]
