#!/usr/bin/env bash
# Starts a single-node Slurm cluster on this machine, without systemd, for the
# validator's Slurm evaluation backend and its tests: munge, slurmctld and
# slurmd from Debian's packages (22.05), two fake GPUs (/dev/tty0, /dev/tty1,
# as Slurm's own test suite uses), memory enforced by Slurm. Idempotent: a
# running cluster is left as it is. Needs root.
#
#   scripts/slurm_up.sh            # install if needed, start, wait for idle
#   CPUS=8 MEMORY_MB=16000 scripts/slurm_up.sh
set -euo pipefail

log() { printf '[slurm] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "needs root (it writes /etc/slurm and starts daemons)"; exit 1
fi
if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    log "already up: $(sinfo -h -o '%N %T %c cpus %m MB %G')"; exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v srun >/dev/null || ! command -v munged >/dev/null; then
    log "installing munge, slurmctld, slurmd, slurm-client"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq munge slurmctld slurmd slurm-client >/dev/null
fi

host=$(hostname -s)
cpus=${CPUS:-8}
memory=${MEMORY_MB:-$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 3 / 4 ))}

# Munge: the key and its daemon (Slurm authenticates every request with it).
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
if ! pgrep -x munged >/dev/null; then
    su munge -s /bin/sh -c /usr/sbin/munged
fi

install -d -m 0755 /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=pretrain
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherParams=OverMemoryKill
JobAcctGatherFrequency=1
# One small machine may declare more CPUs than it has.
SlurmdParameters=config_overrides
GresTypes=gpu
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
KillWait=5
InactiveLimit=0
MinJobAge=300
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${memory} Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
cat > /etc/slurm/gres.conf <<CONF
Name=gpu File=/dev/tty0
Name=gpu File=/dev/tty1
CONF

pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd

for _ in $(seq 60); do
    state=$(sinfo -h -o %T 2>/dev/null | head -n1 || true)
    case "$state" in
        idle|mixed|allocated) log "up: $(sinfo -h -o '%N %T %c cpus %m MB %G')"; exit 0 ;;
        down*|drain*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
done
log "the node did not become idle in 60 s: $(sinfo 2>&1 | tail -n +2)"
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
