"""``python -m experiments ...``: see ``experiments/cli.py``."""

import sys

from experiments.cli import main, quiet_writer_threads

quiet_writer_threads()
sys.exit(main())
