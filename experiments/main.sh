#!/usr/bin/env bash
# The main job, from nothing but Python 3.11 and pip: install everything into a virtual
# environment, then fine-tune MiniLM with GPart on Rotten Tomatoes (the default config).
#   bash experiments/main.sh                                          # the quick start
#   bash experiments/main.sh configs/minilm.py:task=rt,method=head_only   # another config
# Everything it writes goes to the run's workdir (runs/<name>/): results.json from the trainer,
# and command_timing.json with the wall times of the install and of the train command. Tracked
# files are left as they are; `python -m experiments.analyses.main_job --record` copies a run's
# results into experiments/results/main_job/, from which the README's table is rendered.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GPART_VENV:-.venv}
CONFIG=${1:-configs/minilm.py}

start=$SECONDS
bash experiments/install.sh "$VENV"
install_s=$((SECONDS - start))
echo "installed in ${install_s} s"

WORKDIR=$("$VENV/bin/python" -c "import sys; from experiments.config import load_config; \
print(load_config(sys.argv[1], sys.argv[2:]).workdir)" "$CONFIG" "${@:2}")
finished_before=false
[ -f "$WORKDIR/results.json" ] && finished_before=true
start=$SECONDS
"$VENV/bin/python" -m experiments train --config "$CONFIG" "${@:2}"
train_s=$((SECONDS - start))

if [ "$finished_before" = false ]; then
  printf '{"install_s": %d, "train_command_s": %d, "cpu_count": %d, "date": "%s"}\n' \
    "$install_s" "$train_s" "$(nproc)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$WORKDIR/command_timing.json.tmp"
  mv "$WORKDIR/command_timing.json.tmp" "$WORKDIR/command_timing.json"
fi
echo "install ${install_s} s, train command ${train_s} s; results in $WORKDIR/results.json"
