#!/usr/bin/env bash
# The test command: installs what it needs from nothing (Python 3.11 + pip), then runs pytest.
#   bash tests/run.sh            # the CI suite (slow tests excluded)
#   bash tests/run.sh -m slow    # only the slow tests
# As root (CI runs as root) it also installs Debian's Fashion-MNIST, which some tests read;
# elsewhere those tests are skipped with the install step (on CI, with CI=true, they must run).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GPART_VENV:-.venv}
if [ "$(id -u)" = 0 ]; then
  bash experiments/install.sh "$VENV" --apt
else
  bash experiments/install.sh "$VENV"
fi
exec "$VENV/bin/python" -m pytest -q "$@"
