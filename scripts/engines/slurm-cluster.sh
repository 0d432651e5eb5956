#!/usr/bin/env bash
# A real single-machine Slurm cluster for the engine checks, self-contained in one folder:
# munged with its own key and socket, slurmctld and one slurmd per node started from a
# generated slurm.conf; nothing under /etc is changed.
#
#   scripts/engines/slurm-cluster.sh start DIR [CPUS] [NODES] [netns]  # prints "export SLURM_CONF=…"
#   scripts/engines/slurm-cluster.sh stop DIR       # stops the daemons it started, by pid
#
# One node is NodeName=localhost. NODES > 1 runs that many slurmd on this machine (Debian's
# Slurm is built with multiple-slurmd support: `slurmd -N NAME`), node i named and addressed
# 127.0.0.i (any 127.0.0.0/8 address is loopback on Linux, and a name that is an address
# resolves without /etc/hosts), each with CPUS CPUs and its own port: a several-node
# cluster for `srun --nodes N` whose step node list is `127.0.0.[1-N]`.
#
# `netns` gives every node its own network stack instead: a network namespace per node
# (10.77.0.2 … 10.77.0.N+1, named by its address) and one for the controller and the user
# (the "login node", 10.77.0.1), joined by a bridge in a further namespace, so the nodes talk
# over a real network and nothing touches the host's. Run srun/sbatch on the login node: the
# start prints "export SLURM_LOGIN_NETNS=/run/netns/…", use `nsenter --net=$SLURM_LOGIN_NETNS
# srun …`. The daemons enter the namespaces with nsenter, not `ip netns exec` (which mounts a
# new /sys, where slurmd then finds no cgroup file system and stops). `stop` removes them.
#
# Needs Debian's slurm-wlm and munge (scripts/engines-check.sh installs them) and root; netns
# also iproute2 and nsenter.
set -euo pipefail

usage="usage: slurm-cluster.sh start|stop DIR [CPUS] [NODES] [netns]"
cmd=${1:?$usage}
dir=${2:?$usage}
cpus=${3:-2}
nodes=${4:-1}
netns=${5:-}
[[ -z $netns || $netns == netns ]] || { echo "slurm-cluster: the fifth argument is 'netns' or nothing; got '$netns'" >&2; exit 2; }
[[ $cpus =~ ^[1-9][0-9]*$ && $nodes =~ ^[1-9][0-9]*$ && $nodes -le 254 ]] ||
    { echo "slurm-cluster: CPUS and NODES must be positive integers (NODES ≤ 254); got CPUS=$cpus NODES=$nodes" >&2; exit 2; }

stop_pid() { # stop_pid FILE NAME: SIGTERM, wait up to 20 s, then SIGKILL
    local f=$1 name=$2 pid
    [[ -f $f ]] || return 0
    pid=$(cat "$f" 2>/dev/null || true)
    if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$f"
        return 0
    fi
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "slurm-cluster: $name (pid $pid) ignored SIGTERM; SIGKILL" >&2
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

case $cmd in
start)
    [[ $(id -u) == 0 ]] || { echo "slurm-cluster: needs root (slurmd runs jobs as their user)" >&2; exit 2; }
    for p in munged slurmctld slurmd srun sbatch; do
        command -v "$p" >/dev/null || [[ -x /usr/sbin/$p ]] || { echo "slurm-cluster: $p not installed (apt-get install slurm-wlm munge)" >&2; exit 2; }
    done
    if [[ $nodes == 1 ]]; then
        names=(localhost)
    else
        names=()
        for i in $(seq "$nodes"); do names+=("127.0.0.$i"); done
    fi
    login=()
    if [[ -n $netns ]]; then
        for p in ip nsenter; do command -v $p >/dev/null || { echo "slurm-cluster: netns needs $p" >&2; exit 2; }; done
        names=()
        for i in $(seq "$nodes"); do names+=("10.77.0.$((i + 1))"); done
    fi
    mkdir -p "$dir"/{state,log,munge}
    for n in "${names[@]}"; do mkdir -p "$dir/spool/$n"; done
    dir=$(cd "$dir" && pwd)
    if [[ -n $netns ]]; then
        # Namespace names: a prefix of this cluster's own, written down at once for `stop`.
        pre=msl$$
        echo "$pre-sw" >"$dir/netns"
        ip netns add "$pre-sw"
        ip -n "$pre-sw" link add br0 type bridge
        ip -n "$pre-sw" link set br0 up
        for i in $(seq 0 "$nodes"); do
            ns=$pre-n$i
            echo "$ns" >>"$dir/netns"
            ip netns add "$ns"
            ip -n "$pre-sw" link add "p$i" type veth peer name eth0 netns "$ns"
            ip -n "$pre-sw" link set "p$i" master br0
            ip -n "$pre-sw" link set "p$i" up
            ip -n "$ns" addr add "10.77.0.$((i + 1))/24" dev eth0
            ip -n "$ns" link set eth0 up
            ip -n "$ns" link set lo up
        done
        login=(nsenter "--net=/run/netns/$pre-n0")
    fi
    chmod 755 "$dir/munge"   # the socket must be reachable; the key stays 0400
    # munge refuses keys and folders others can write; a fresh key per cluster.
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
    /usr/sbin/munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munged.seed" --force
    ctl_port=${SLURM_CHECK_CTLD_PORT:-16817}
    d_port=${SLURM_CHECK_SLURMD_PORT:-16818}
    cat > "$dir/slurm.conf" <<CONF
# Generated by scripts/engines/slurm-cluster.sh
ClusterName=mnistcheck
SlurmctldHost=$(if [[ -n $netns ]]; then echo "$(hostname)(10.77.0.1)"; else echo "localhost(127.0.0.1)"; fi)
SlurmctldPort=$ctl_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=30
PlugStackConfig=$dir/plugstack.conf
CONF
    if [[ -n $netns ]]; then
        for n in "${names[@]}"; do
            echo "NodeName=$n NodeAddr=$n CPUs=$cpus State=UNKNOWN"
        done >> "$dir/slurm.conf"
    elif [[ $nodes == 1 ]]; then
        echo "NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN" >> "$dir/slurm.conf"
    else
        for i in $(seq "$nodes"); do
            echo "NodeName=127.0.0.$i NodeHostname=localhost NodeAddr=127.0.0.$i Port=$((d_port + i - 1)) CPUs=$cpus State=UNKNOWN"
        done >> "$dir/slurm.conf"
    fi
    echo "PartitionName=debug Nodes=$(IFS=,; echo "${names[*]}") Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES" >> "$dir/slurm.conf"
    : > "$dir/plugstack.conf"
    export SLURM_CONF=$dir/slurm.conf
    "${login[@]}" /usr/sbin/slurmctld -i -f "$dir/slurm.conf"
    i=0
    for n in "${names[@]}"; do
        i=$((i + 1))
        node=()
        [[ -n $netns ]] && node=(nsenter "--net=/run/netns/$pre-n$i")
        "${node[@]}" /usr/sbin/slurmd -f "$dir/slurm.conf" -N "$n"
    done
    for _ in $(seq 300); do
        # Every node up: sinfo prints one "STATE COUNT" line per state; all idle.
        if [[ $("${login[@]}" sinfo -h -o '%t %D' 2>/dev/null) == "idle $nodes" ]]; then
            echo "export SLURM_CONF=$dir/slurm.conf"
            [[ -z $netns ]] || echo "export SLURM_LOGIN_NETNS=/run/netns/$pre-n0"
            exit 0
        fi
        sleep 0.1
    done
    echo "slurm-cluster: the $nodes node(s) did not all become idle within 30 s; sinfo says: $("${login[@]}" sinfo -h 2>&1 | tr '\n' ' ')" >&2
    tail -5 "$dir/log/slurmctld.log" "$dir"/log/slurmd-*.log >&2 || true
    exit 1
    ;;
stop)
    dir=$(cd "$dir" && pwd)
    for f in "$dir"/slurmd-*.pid; do stop_pid "$f" slurmd; done
    stop_pid "$dir/slurmctld.pid" slurmctld
    stop_pid "$dir/munge/munged.pid" munged
    if [[ -f $dir/netns ]]; then
        while read -r ns; do ip netns del "$ns" 2>/dev/null || true; done <"$dir/netns"
        rm -f "$dir/netns"
    fi
    ;;
*) echo "usage: slurm-cluster.sh start|stop DIR [CPUS]" >&2; exit 2 ;;
esac
