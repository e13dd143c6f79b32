"""`python -m persd ...` is the `persd` command (launchers such as torchrun use this form)."""
import sys

from persd.engine.cli.main import main

sys.exit(main())
