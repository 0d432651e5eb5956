#!/usr/bin/env bash
# Run mnist-ddp under the engines people already use, for real, on this machine: 1 epoch on
# a subset of MNIST each, printing what ran, the worker's first line (the environment it
# detected), the test accuracy and PASS/FAIL per engine; exits 1 if any failed.
#
#   scripts/engines-check.sh [--no-install] [ENGINE…]
#
# ENGINE: mpirun, mpirun-netns, slurm, slurm-netns, torchrun, torchrun-netns, kubernetes
# (default: all).
# Installs what it needs first (needs root): Debian's openmpi-bin, slurm-wlm and munge (and
# iproute2 for the netns checks); kubernetes-validate and PyYAML into the project's Python (torch is there
# already: scripts/env.sh). The Slurm clusters (scripts/engines/slurm-cluster.sh) have two
# nodes: two slurmd on loopback addresses (slurm), or each in its own network namespace with
# the controller and srun/sbatch in a third (slurm-netns); stopped at the end whatever happens.
# torchrun-netns: two torchrun agents, each in its own network namespace, meeting through c10d;
# mpirun-netns: mpirun with one rank in each of two network namespaces (an rsh agent that
# enters the namespace stands in for ssh). Data: MNIST_DATA_DIR, data/mnist or ../shared/data/mnist (first 6000
# training and 1000 test images). Binaries: cargo's dev profile (optimized) in target/debug.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
root=$(pwd)

install=1
engines=()
for a in "$@"; do
    case $a in
    --no-install) install=0 ;;
    mpirun | mpirun-netns | slurm | slurm-netns | torchrun | torchrun-netns | kubernetes) engines+=("$a") ;;
    *) echo "engines-check: unknown argument '$a' (expected --no-install or mpirun, mpirun-netns, slurm, slurm-netns, torchrun, torchrun-netns, kubernetes)" >&2; exit 2 ;;
    esac
done
[[ ${#engines[@]} -gt 0 ]] || engines=(mpirun mpirun-netns slurm slurm-netns torchrun torchrun-netns kubernetes)
want() { [[ " ${engines[*]} " == *" $1 "* ]]; }

# shellcheck source=scripts/env.sh
source scripts/env.sh || { echo "engines-check: scripts/env.sh failed (torch for the project's Python)" >&2; exit 2; }

if [[ $install == 1 ]]; then
    pkgs=()
    { want mpirun || want mpirun-netns; } && ! command -v mpirun >/dev/null && pkgs+=(openmpi-bin)
    if want slurm || want slurm-netns; then
        command -v srun >/dev/null && [[ -x /usr/sbin/slurmd && -x /usr/sbin/slurmctld ]] || pkgs+=(slurm-wlm)
        [[ -x /usr/sbin/munged ]] || pkgs+=(munge)
    fi
    if want slurm-netns || want torchrun-netns || want mpirun-netns; then
        command -v ip >/dev/null || pkgs+=(iproute2)
        command -v nsenter >/dev/null || pkgs+=(util-linux)
    fi
    if [[ ${#pkgs[@]} -gt 0 ]]; then
        echo "engines-check: apt-get install ${pkgs[*]}"
        mnist_apt_install "${pkgs[@]}" ||
            { echo "engines-check: apt-get install ${pkgs[*]} failed" >&2; exit 2; }
    fi
    if want kubernetes && ! "$MNIST_PYTHON" -c 'import kubernetes_validate, yaml, jsonschema' 2>/dev/null; then
        echo "engines-check: pip install kubernetes-validate pyyaml"
        "$MNIST_PYTHON" -m pip install --quiet --disable-pip-version-check kubernetes-validate pyyaml ||
            { echo "engines-check: pip install kubernetes-validate failed" >&2; exit 2; }
    fi
fi

echo "engines-check: cargo build -p mnist-worker -p mnist-launch"
cargo build --quiet -p mnist-worker -p mnist-launch || { echo "engines-check: build failed" >&2; exit 2; }
bin=$root/target/debug
worker=$bin/mnist-worker
launch=$bin/mnist-launch

src=
for d in "${MNIST_DATA_DIR:-}" data/mnist ../shared/data/mnist; do
    [[ -n $d && ( -e $d/train-images-idx3-ubyte.gz || -e $d/train-images-idx3-ubyte ) ]] && { src=$d; break; }
done
[[ -n $src ]] || { echo "engines-check: no MNIST files in MNIST_DATA_DIR, data/mnist or ../shared/data/mnist (scripts/setup.sh --download fetches them)" >&2; exit 2; }
work=$(mktemp -d /tmp/engines-check.XXXXXX)
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local d
    for d in "${slurm_dirs[@]}"; do
        [[ -d $d ]] && scripts/engines/slurm-cluster.sh stop "$d"
    done
    for d in "${netns_dirs[@]}"; do netns_down "$d"; done
    return 0
}
slurm_dirs=()
netns_dirs=()
trap cleanup EXIT
trap 'exit 130' INT TERM
data=$work/data
"$MNIST_PYTHON" scripts/engines/subset.py "$src" "$data" 6000 1000 || exit 2
train=(--data "$data" --epochs 1 --device cpu --threads 1 --progress never)
echo "engines-check: data $data (6000/1000 images of $src), work folder $work"

results=()
# check NAME OUTFILE RC [MUST-CONTAIN…]: PASS when the command succeeded, the first log line
# is the environment line, an epoch finished, the model was tested, and the output has
# each MUST-CONTAIN text.
check() {
    local name=$1 out=$2 rc=$3 ok=1 why=()
    shift 3
    local first acc
    first=$(grep -m1 -E '^[0-9]{2}/[0-9]{2} [0-9:]{8} [AP]M \| ' "$out" || true)
    acc=$(grep -m1 '| Test set:' "$out" | sed 's/.*| //' || true)
    [[ $rc == 0 ]] || { ok=0; why+=("exit status $rc"); }
    [[ $first == *"| Worker environment:"* ]] || { ok=0; why+=("the first log line is not the environment line"); }
    grep -q 'Train Epoch: 1 done' "$out" || { ok=0; why+=("no finished epoch"); }
    [[ -n $acc ]] || { ok=0; why+=("no test line"); }
    for m in "$@"; do grep -qF -- "$m" "$out" || { ok=0; why+=("no '$m'"); }; done
    echo "  first line: ${first#*| }"
    echo "  ${acc:-no test line}"
    if [[ $ok == 1 ]]; then
        echo "  PASS $name"
        results+=("PASS $name (${acc#Test set: })")
    else
        echo "  FAIL $name: ${why[*]}; output: $out"
        tail -n 15 "$out" | sed 's/^/    /'
        results+=("FAIL $name: ${why[*]}")
    fi
}
# run NAME OUTFILE COMMAND…: print and run COMMAND (output to OUTFILE, 10 min at most).
run() {
    local name=$1 out=$2
    shift 2
    echo
    echo "== $name"
    echo "  \$ $*"
    timeout 600 "$@" >"$out" 2>&1
}
free_port() { "$MNIST_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# netns_up PREFIX: two "machines", network namespaces PREFIX-n0 (10.77.0.1) and PREFIX-n1
# (10.77.0.2) on a bridge in PREFIX-sw; netns_down PREFIX removes them (also at exit).
netns_up() {
    local pre=$1 i
    netns_dirs+=("$pre")
    ip netns add "$pre-sw" && ip -n "$pre-sw" link add br0 type bridge && ip -n "$pre-sw" link set br0 up || return 1
    for i in 0 1; do
        ip netns add "$pre-n$i" &&
            ip -n "$pre-sw" link add "p$i" type veth peer name eth0 netns "$pre-n$i" &&
            ip -n "$pre-sw" link set "p$i" master br0 &&
            ip -n "$pre-sw" link set "p$i" up &&
            ip -n "$pre-n$i" addr add "10.77.0.$((i + 1))/24" dev eth0 &&
            ip -n "$pre-n$i" link set eth0 up &&
            ip -n "$pre-n$i" link set lo up || return 1
    done
}
netns_down() {
    local n
    for n in sw n0 n1; do ip netns del "$1-$n" 2>/dev/null; done
    return 0
}

if want mpirun; then
    run "mpirun -np 2" "$work/mpirun.out" mpirun --allow-run-as-root --oversubscribe -np 2 "$worker" "${train[@]}" --path "$work/mpirun"
    check "mpirun -np 2 mnist-worker" "$work/mpirun.out" $? "Worker environment: Open MPI"
fi

if want mpirun-netns; then
    # Two "machines" in network namespaces; mpirun on the first starts its daemon on the other
    # through an rsh agent that enters that machine's namespace (instead of ssh).
    pre=emp$$
    echo
    echo "== mpirun [netns]: one rank on each of 2 network namespaces (10.77.0.1, 10.77.0.2)"
    netns_up "$pre" || echo "  (could not set up the network namespaces)"
    cat >"$work/rsh-agent.sh" <<AGENT
#!/bin/sh
# Open MPI's rsh agent for the check: "rsh-agent.sh HOST COMMAND…" runs COMMAND on HOST.
host=\$1; shift
case \$host in 10.77.0.1) ns=$pre-n0 ;; 10.77.0.2) ns=$pre-n1 ;; *) echo "rsh-agent: unknown host \$host" >&2; exit 1 ;; esac
exec ip netns exec "\$ns" /bin/sh -c "\$*"
AGENT
    chmod +x "$work/rsh-agent.sh"
    run "mpirun across 2 network namespaces" "$work/mpirun-netns.out" ip netns exec "$pre-n0" \
        mpirun --allow-run-as-root --mca plm_rsh_agent "$work/rsh-agent.sh" --host 10.77.0.1:1,10.77.0.2:1 \
        -np 2 -x MASTER_ADDR=10.77.0.1 "$worker" "${train[@]}" --path "$work/mpirun-netns"
    check "mpirun --host 10.77.0.1:1,10.77.0.2:1 -np 2 -x MASTER_ADDR=10.77.0.1 mnist-worker [netns]" "$work/mpirun-netns.out" $? \
        "Worker environment: Open MPI" "node 1 of 2" "rank 0 takes the address the others reach the master at, 10.77.0.1"
    netns_down "$pre"
fi

# slurm_checks MODE: a two-node cluster (MODE "" = two slurmd on loopback addresses, "netns" =
# each node in its own network namespace, commands on the login node), then srun starting the
# workers, srun starting one launcher per node, the example batch script, and the shutdown.
slurm_checks() {
    local mode=$1 dir=$work/slurm$1 tag=${1:+ [netns]} on=() out rc left nodes
    slurm_dirs+=("$dir")
    echo
    if [[ -n $mode ]]; then
        echo "== Slurm$tag: two nodes, each in its own network namespace (10.77.0.2, 10.77.0.3), srun/sbatch on the login namespace (10.77.0.1)"
    else
        echo "== Slurm: two nodes on this machine (two slurmd, 127.0.0.1 and 127.0.0.2)"
    fi
    if ! out=$(SLURM_CHECK_CTLD_PORT=$(free_port) SLURM_CHECK_SLURMD_PORT=$(free_port) scripts/engines/slurm-cluster.sh start "$dir" 2 2 "$mode"); then
        tail -n 20 "$dir"/log/*.log 2>/dev/null | sed 's/^/    /'
        results+=("FAIL Slurm$tag cluster did not start")
        return
    fi
    eval "$out"
    [[ -n $mode ]] && on=(nsenter "--net=$SLURM_LOGIN_NETNS")
    nodes=$("${on[@]}" sinfo -h -o '%N')
    echo "  $("${on[@]}" sinfo -h -o 'nodes %N: %t, %c CPUs each' | head -1)"
    # On loopback the issue's command (both tasks on one node); across namespaces one per node.
    local spread=(--ntasks 2) where="node 0 of 1"
    [[ -n $mode ]] && spread=(--nodes 2 --ntasks 2) where="node 1 of 2"
    run "srun ${spread[*]} mnist-worker$tag" "$work/srun$mode.out" \
        "${on[@]}" srun "${spread[@]}" --time 10 "$worker" "${train[@]}" --path "$work/srun$mode"
    check "srun ${spread[*]} mnist-worker$tag" "$work/srun$mode.out" $? \
        "Worker environment: Slurm (srun task)" "-> rank 1 of 2" "$where"
    run "srun --nodes 2 --ntasks-per-node 1 mnist-launch$tag" "$work/srun-launch$mode.out" \
        "${on[@]}" srun --nodes 2 --ntasks-per-node 1 --time 10 "$launch" --nproc 2 "${train[@]}" --path "$work/srun-launch$mode"
    check "srun --nodes 2 --ntasks-per-node 1 mnist-launch --nproc 2$tag" "$work/srun-launch$mode.out" $? \
        "Slurm: node 0 of 2" "Slurm: node 1 of 2" "Worker environment: mnist-launch" "-> rank 0 of 4"
    echo
    echo "== sbatch examples/slurm/mnist.sbatch$tag"
    echo "  \$ (cd $work && MNIST_BIN=$bin NPROC=2 ${on[*]} sbatch --wait examples/slurm/mnist.sbatch ${train[*]} --path $work/sbatch$mode)"
    (cd "$work" && MNIST_BIN=$bin NPROC=2 timeout 600 "${on[@]}" sbatch --wait --output "$work/sbatch$mode.out" \
        "$root/examples/slurm/mnist.sbatch" "${train[@]}" --path "$work/sbatch$mode") >"$work/sbatch$mode.submit" 2>&1
    rc=$?
    sed 's/^/  /' "$work/sbatch$mode.submit"
    [[ -f $work/sbatch$mode.out ]] || echo "no output" >"$work/sbatch$mode.out"
    check "sbatch examples/slurm/mnist.sbatch (2 nodes x 2 workers)$tag" "$work/sbatch$mode.out" $rc \
        "on 2 node(s): $nodes" "-> rank 0 of 4"
    echo
    echo "== Slurm$tag: shutting the cluster down"
    scripts/engines/slurm-cluster.sh stop "$dir"
    left=$(pgrep -f "$dir/" || true)
    if [[ -z $left && ! -f $dir/netns ]]; then
        echo "  PASS Slurm$tag cluster stopped (no munged/slurmctld/slurmd of $dir left${mode:+, namespaces removed})"
        results+=("PASS Slurm$tag cluster shut down cleanly")
    else
        echo "  FAIL processes left: $left"
        results+=("FAIL Slurm$tag cluster shutdown: pids $left left")
    fi
}
want slurm && slurm_checks ""
want slurm-netns && slurm_checks netns

if want torchrun; then
    run "examples/torchrun.sh (torchrun --nproc-per-node 2)" "$work/torchrun.out" \
        env NPROC=2 MASTER_PORT="$(free_port)" MNIST_WORKER="$worker" examples/torchrun.sh "${train[@]}" --path "$work/torchrun"
    check "torchrun --nproc-per-node 2 --no-python mnist-worker" "$work/torchrun.out" $? \
        "Worker environment: torchrun" "torchrun's TCPStore"
    port=$(free_port)
    echo
    echo "== NNODES=2 examples/torchrun.sh, twice (2 torchrun agents, c10d rendezvous on 127.0.0.1:$port)"
    pids=()
    for n in 0 1; do
        echo "  \$ NNODES=2 NPROC=1 MASTER=127.0.0.1:$port examples/torchrun.sh ${train[*]} --path $work/c10d$n"
        NNODES=2 NPROC=1 MASTER=127.0.0.1:$port RDZV_ID=engines-check-$$ MNIST_WORKER=$worker \
            timeout 600 examples/torchrun.sh "${train[@]}" --path "$work/c10d$n" >"$work/c10d$n.out" 2>&1 &
        pids+=($!)
    done
    rc=0
    for p in "${pids[@]}"; do wait "$p" || rc=$?; done
    # The agent whose worker got rank 0 tested the model.
    r0=$work/c10d0.out
    grep -q '| Test set:' "$r0" || r0=$work/c10d1.out
    grep -q 'node 1 of 2' "$work/c10d0.out" "$work/c10d1.out" || rc=1
    check "torchrun --nnodes 2 --rdzv-backend c10d (2 agents)" "$r0" $rc "Worker environment: torchrun" "-> rank 0 of 2"
fi

if want torchrun-netns; then
    # Two "machines": network namespaces 10.77.0.1 and 10.77.0.2 on a bridge in a third.
    pre=etr$$
    echo
    echo "== torchrun [netns]: 2 agents in their own network namespaces (10.77.0.1, 10.77.0.2), c10d rendezvous at 10.77.0.1:29400"
    netns_up "$pre" || echo "  (could not set up the network namespaces)"
    pids=()
    for i in 0 1; do
        # --local-addr and is_host: this machine's host name resolves to 127.0.0.1, so torchrun
        # cannot tell by itself which agent sits at the endpoint, nor what to advertise.
        cmd=(torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint 10.77.0.1:29400
            --rdzv-id engines-check-$$ --rdzv-conf "is_host=$((i == 0 ? 1 : 0))" --local-addr "10.77.0.$((i + 1))"
            --no-python "$worker" "${train[@]}" --path "$work/tr-netns$i")
        echo "  [10.77.0.$((i + 1))] \$ ${cmd[*]}"
        ip netns exec "$pre-n$i" timeout 600 "${cmd[@]}" >"$work/tr-netns$i.out" 2>&1 &
        pids+=($!)
    done
    rc=0
    for p in "${pids[@]}"; do wait "$p" || rc=$?; done
    # torchrun numbers the agents in the order they join: rank 0 is the one that tested.
    r0=$work/tr-netns0.out
    grep -q '| Test set:' "$r0" || r0=$work/tr-netns1.out
    grep -q 'node 1 of 2' "$work/tr-netns0.out" "$work/tr-netns1.out" || rc=1
    check "torchrun --nnodes 2 c10d, agents in 2 network namespaces" "$r0" $rc \
        "Worker environment: torchrun" "-> rank 0 of 2" "rank 0 takes the address the others reach the master at, 10.77.0."
    netns_down "$pre"
fi

if want kubernetes; then
    echo
    echo "== Kubernetes examples: schemas, then their pods run here"
    echo "  \$ scripts/engines/kubernetes-check.py examples/kubernetes/*.yaml --run $worker --data $data --out $work/k8s -- --threads 1 --progress never"
    "$MNIST_PYTHON" scripts/engines/kubernetes-check.py examples/kubernetes/*.yaml \
        --run "$worker" --data "$data" --out "$work/k8s" -- --threads 1 --progress never >"$work/k8s.out" 2>&1
    rc=$?
    sed 's/^/  /' "$work/k8s.out"
    while read -r verdict what rest; do
        [[ $verdict == PASS || $verdict == FAIL ]] && results+=("$verdict kubernetes $what $rest")
    done <"$work/k8s.out"
    [[ $rc == 0 ]] || grep -q '^FAIL' "$work/k8s.out" || results+=("FAIL kubernetes-check.py exited $rc")
fi

echo
echo "== engines-check summary (outputs in $work)"
failed=0
for r in "${results[@]}"; do
    echo "  $r"
    [[ $r == FAIL* ]] && failed=1
done
exit $failed
