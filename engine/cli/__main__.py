import sys

from persd.engine.cli.main import main

sys.exit(main())
