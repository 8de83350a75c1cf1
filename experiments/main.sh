#!/usr/bin/env bash
# The main job, from nothing but Python 3.11 and pip: install everything into a virtual
# environment, then fine-tune MiniLM with GPart on Rotten Tomatoes (the default config).
#   bash experiments/main.sh                                  # the quick start
#   bash experiments/main.sh configs/minilm_rt_head_only.py   # another config (same steps)
# Everything it writes goes to the run's workdir (runs/<config>/): results.json from the
# trainer, and command_timing.json with the wall times of the install and of the train command.
# Tracked files are left as they are; `python experiments/main_job.py --record` copies a run's
# results into experiments/results/main_job/, from which the README's table is rendered.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GPART_VENV:-.venv}
CONFIG=${1:-configs/minilm_rt_gpart.py}
NAME=$(basename "$CONFIG" .py)

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

if [ "$finished_before" = false ] && [ -d "runs/$NAME" ]; then
  printf '{"install_s": %d, "train_command_s": %d, "cpu_count": %d, "date": "%s"}\n' \
    "$install_s" "$train_s" "$(nproc)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "runs/$NAME/command_timing.json.tmp"
  mv "runs/$NAME/command_timing.json.tmp" "runs/$NAME/command_timing.json"
fi
echo "install ${install_s} s, train command ${train_s} s; results in runs/$NAME/results.json"
