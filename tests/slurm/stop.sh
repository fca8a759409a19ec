#!/usr/bin/env bash
# Stop the daemons that tests/slurm/start.sh started, by the pids it recorded in STATE_DIR/pids; nothing else.
set -uo pipefail
STATE=${1:?usage: stop.sh STATE_DIR}
PIDS_FILE="$STATE/pids"
[ -f "$PIDS_FILE" ] || exit 0
# Reverse order: slurmd, slurmctld, then munged.
mapfile -t entries < <(tac "$PIDS_FILE")
for entry in "${entries[@]}"; do
  pid=${entry%% *}
  kill -TERM "$pid" 2>/dev/null || true
done
for entry in "${entries[@]}"; do
  pid=${entry%% *}
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
done
rm -f "$PIDS_FILE"
