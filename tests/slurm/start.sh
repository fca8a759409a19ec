#!/usr/bin/env bash
# Start a private single-node SLURM cluster (munged, slurmctld, slurmd) from the Debian packages, for tests.
#   bash tests/slurm/start.sh STATE_DIR      then   export PATH=STATE_DIR/bin:$PATH  (wrappers setting SLURM_CONF)
#   bash tests/slurm/stop.sh STATE_DIR       stops exactly the daemons this script started (pids in STATE_DIR/pids)
# Everything (config, munge key and socket, spool, logs) lives in STATE_DIR; nothing under /etc is touched and no
# systemd is needed. The node has no GPUs (GresTypes=gpu would need real devices); tests map GPU requests away.
# Ports: PII_SLURM_PORT (default 16817) for slurmctld and the next one for slurmd.
set -euo pipefail
STATE=${1:?usage: start.sh STATE_DIR}
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
PORT=${PII_SLURM_PORT:-16817}
for tool in munged slurmctld slurmd sbatch squeue; do
  command -v "$tool" >/dev/null || { echo "start.sh: $tool not found; apt-get install -y slurm-wlm munge" >&2; exit 3; }
done
if [ -s "$STATE/pids" ]; then
  echo "start.sh: $STATE/pids exists; run stop.sh $STATE first" >&2
  exit 4
fi
mkdir -p "$STATE/munge" "$STATE/ctld" "$STATE/spool" "$STATE/log"
chmod 700 "$STATE/munge"
: > "$STATE/pids"

# munge: a private key and socket.
if [ ! -s "$STATE/munge/munge.key" ]; then
  dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$STATE/munge/munge.key"
fi
munged --foreground --force --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.sock" \
  --pid-file="$STATE/munge/munged.pid" --seed-file="$STATE/munge/munged.seed" \
  --log-file="$STATE/log/munged.log" >>"$STATE/log/munged.out" 2>&1 &
echo "$! munged" >> "$STATE/pids"
for _ in $(seq 50); do [ -S "$STATE/munge/munge.sock" ] && break; sleep 0.1; done
[ -S "$STATE/munge/munge.sock" ] || { echo "start.sh: munged did not start, see $STATE/log/munged.*" >&2; exit 5; }

CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
USER_NAME=$(id -un)
cat > "$STATE/slurm.conf" <<CONF
ClusterName=piitest
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=$USER_NAME
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.sock
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/ctld/slurmctld.pid
SlurmdPidFile=$STATE/spool/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MpiDefault=none
# squeue must still see a finished job at the next status check: MinJobAge >= 3x the check interval.
MinJobAge=600
SchedulerParameters=defer_batch=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
CONF
echo "cgroup config not used (proctrack/linuxproc, task/none)" > "$STATE/cgroup.conf.unused"
export SLURM_CONF="$STATE/slurm.conf"

# Client wrappers in STATE_DIR/bin that carry SLURM_CONF themselves: the plugin's job step strips SLURM_* variables
# (SLURM_CONF included) before its inner `srun`, which on a real cluster finds /etc/slurm/slurm.conf instead.
# Put STATE_DIR/bin first on PATH and every SLURM command talks to this private cluster.
mkdir -p "$STATE/bin"
for tool in sbatch srun squeue scancel sinfo scontrol sacct; do
  real=$(command -v "$tool" || true)
  [ -n "$real" ] || continue
  printf '#!/bin/sh\nSLURM_CONF=%s exec %s "$@"\n' "$SLURM_CONF" "$real" > "$STATE/bin/$tool"
  chmod +x "$STATE/bin/$tool"
done

slurmctld -D -i -f "$SLURM_CONF" >>"$STATE/log/slurmctld.out" 2>&1 &
echo "$! slurmctld" >> "$STATE/pids"
slurmd -D -N localhost -f "$SLURM_CONF" >>"$STATE/log/slurmd.out" 2>&1 &
echo "$! slurmd" >> "$STATE/pids"

# Wait until the node takes jobs.
for _ in $(seq 60); do
  state=$(sinfo -h -n localhost -o %t 2>/dev/null | head -1 || true)
  case "$state" in
    idle*|mix*|alloc*) echo "start.sh: SLURM up (node $state); use PATH=$STATE/bin:\$PATH"; exit 0 ;;
    down*|drain*|unk*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
echo "start.sh: node never became idle; logs in $STATE/log" >&2
exit 6
