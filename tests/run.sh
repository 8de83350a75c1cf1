#!/usr/bin/env bash
# The test command: installs what it needs from nothing (Python 3.11 + pip), then runs pytest.
#   bash tests/run.sh            # the CI suite (slow tests excluded)
#   bash tests/run.sh -m slow    # only the slow tests
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GPART_VENV:-.venv}
bash experiments/install.sh "$VENV"
exec "$VENV/bin/python" -m pytest -q "$@"
