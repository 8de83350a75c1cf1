#!/usr/bin/env bash
# The main job, from nothing but Python 3.11 and pip: install everything into a virtual
# environment, then fine-tune MiniLM with GPart on Rotten Tomatoes (the default config).
#   bash experiments/main.sh                                  # the quick start
#   bash experiments/main.sh configs/minilm_rt_head_only.py   # another config (same steps)
# The run's results.json (runs/<config>/) is copied to experiments/results/main_job/<config>.json
# with the install and training wall times next to it (<config>.timing.json).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GPART_VENV:-.venv}
CONFIG=${1:-configs/minilm_rt_gpart.py}
NAME=$(basename "$CONFIG" .py)
OUT=experiments/results/main_job

start=$SECONDS
bash experiments/install.sh "$VENV"
install_s=$((SECONDS - start))
echo "installed in ${install_s} s"

finished_before=false
[ -f "runs/$NAME/results.json" ] && finished_before=true
start=$SECONDS
if [ $# -eq 0 ]; then
  "$VENV/bin/gpart-jax" train               # the embedded default config
else
  "$VENV/bin/gpart-jax" train --config "$CONFIG" "${@:2}"
fi
train_s=$((SECONDS - start))

mkdir -p "$OUT"
cp "runs/$NAME/results.json" "$OUT/$NAME.json"
if [ "$finished_before" = false ]; then
  printf '{"install_s": %d, "train_command_s": %d, "cpu_count": %d, "date": "%s"}\n' \
    "$install_s" "$train_s" "$(nproc)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$OUT/$NAME.timing.json"
fi
echo "results copied to $OUT/$NAME.json (install ${install_s} s, train command ${train_s} s)"
