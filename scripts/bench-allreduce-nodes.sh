#!/usr/bin/env bash
# All-reduce between network namespaces (needs root, `ip` and `tc`): NODES namespaces (default 2),
# each with its own eth0 (10.78.0.1, .2, ...) on a bridge in another namespace, one process per
# namespace; everything is removed on exit. Uses the release build.
#
#   scripts/bench-allreduce-nodes.sh [NODES] [RATE]
#
# Runs, per size (4 KB - 64 MB, float32): our ring (MNIST_COMM_TRANSPORT tcp: each namespace is
# a node, the leaders' TCP ring), the former star through rank 0 (`star`), and PyTorch gloo
# (scripts/allreduce_gloo.py, one rank per namespace). With RATE (e.g. 1gbit) each eth0's egress
# is shaped with `tc qdisc ... tbf`, and the table adds the ring's link figure as a share of RATE
# (each node sends 2(N-1)/N of the buffer per all-reduce: busbw is what its link carries).
# BUDGET (bytes timed per size, default 256 MiB) and SIZES may be set in the environment; with
# RUNS=K (default 1) the three are run K times in turn (single runs move by ±20 % here) and a
# last table gives the medians and the median (and range) of the runs' ring/gloo ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
[ "$(id -u)" = 0 ] || { echo "bench-allreduce-nodes.sh: needs root (network namespaces)" >&2; exit 2; }
NODES=${1:-2}
RATE=${2:-}
SIZES=${SIZES:-4096,65536,1048576,4194304,16777216,67108864}
BUDGET=${BUDGET:-268435456}
RUNS=${RUNS:-1}
case "$RUNS" in '' | *[!0-9]* | 0) echo "bench-allreduce-nodes.sh: RUNS must be a whole number of runs (1 or more), not '$RUNS'" >&2; exit 2 ;; esac
BIN=${CARGO_TARGET_DIR:-target}/release
cargo build --release -q -p mnist-comm --bin allreduce-bench
TMP=$(mktemp -d /tmp/bench-ar-nodes.XXXXXX)
P=mnar$$
cleanup() {
    for i in $(seq 0 $((NODES - 1))); do ip netns del "$P-n$i" 2>/dev/null || true; done
    ip netns del "$P-sw" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
ip netns add "$P-sw"
ip -n "$P-sw" link add br0 type bridge
ip -n "$P-sw" link set br0 up
for i in $(seq 0 $((NODES - 1))); do
    ip netns add "$P-n$i"
    ip -n "$P-sw" link add "p$i" type veth peer name eth0 netns "$P-n$i"
    ip -n "$P-sw" link set "p$i" master br0
    ip -n "$P-sw" link set "p$i" up
    ip -n "$P-n$i" addr add "10.78.0.$((i + 1))/24" dev eth0
    ip -n "$P-n$i" link set eth0 up
    ip -n "$P-n$i" link set lo up
    if [ -n "$RATE" ]; then
        ip netns exec "$P-n$i" tc qdisc replace dev eth0 root tbf rate "$RATE" burst 256kb latency 50ms
    fi
done

# ours TRANSPORT: one allreduce-bench rank per namespace, meeting through a rendezvous file.
ours() {
    local t=$1 run="ar-$1-$$" pids=()
    for i in $(seq 0 $((NODES - 1))); do
        ip netns exec "$P-n$i" env MNIST_RENDEZVOUS_ADDR="10.78.0.$((i + 1))" \
            "$BIN/allreduce-bench" --world "$NODES" --nodes "$NODES" --transport "$t" \
            --budget "$BUDGET" --sizes "$SIZES" --child "$i:$TMP/$run.rdv:$run" >"$TMP/$t-$i.out" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || { cat "$TMP/$t"-*.out >&2; exit 1; }; done
    grep ^SIZE "$TMP/$t-0.out" | cut -d' ' -f2-4 | sort -n >"$TMP/$t.txt"
}

gloo() {
    local pids=()
    for i in $(seq 0 $((NODES - 1))); do
        ip netns exec "$P-n$i" env GLOO_SOCKET_IFNAME=eth0 "$MNIST_PYTHON" scripts/allreduce_gloo.py \
            --rank "$i" --world "$NODES" --master 10.78.0.1:29610 --sizes "$SIZES" >"$TMP/gloo-$i.out" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || { cat "$TMP"/gloo-*.out >&2; exit 1; }; done
    grep ^SIZE "$TMP/gloo-0.out" | cut -d' ' -f2-4 | sort -n >"$TMP/gloo.txt"
}

case "$RATE" in
    *gbit) LINK=$(awk -v r="${RATE%gbit}" 'BEGIN { print r * 1e9 / 8 / 1e9 }') ;;
    *mbit) LINK=$(awk -v r="${RATE%mbit}" 'BEGIN { print r * 1e6 / 8 / 1e9 }') ;;
    *) LINK=0 ;;
esac
echo "$NODES namespace nodes, 1 process each, veth${RATE:+ shaped to $RATE (tbf)}, $RUNS run(s); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$RUNS"); do
    ours tcp
    ours star
    gloo
    for k in tcp star gloo; do mv "$TMP/$k.txt" "$TMP/$k.$r.txt"; done
    echo "run $r of $RUNS:"
    printf "%-8s %10s %10s %10s %10s %10s %10s %8s %8s %8s\n" size "ring µs" "gloo µs" "star µs" \
        "ring GB/s" "gloo GB/s" "star GB/s" "x gloo" "x star" "of link"
    join "$TMP/tcp.$r.txt" "$TMP/gloo.$r.txt" | join - "$TMP/star.$r.txt" | sort -n | awk -v link="$LINK" '{
        b = $1; s = (b >= 1048576) ? sprintf("%d MB", b / 1048576) : sprintf("%d KB", b / 1024);
        share = link > 0 ? sprintf("%.0f%%", 100 * $3 / link) : "-";
        printf "%-8s %10.1f %10.1f %10.1f %10.3f %10.3f %10.3f %8.2f %8.2f %8s\n", s, $2, $4, $6, $3, $5, $7, $3 / $5, $3 / $7, share }'
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$RUNS" -gt 1 ]; then
    # Medians over the runs (busbw GB/s), the median of the runs' ring/gloo ratios and their range.
    "$MNIST_PYTHON" - "$TMP" "$RUNS" "$LINK" <<'PY'
import statistics as st, sys
tmp, runs, link = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def load(kind, r):
    return {int(l.split()[0]): float(l.split()[2]) for l in open(f"{tmp}/{kind}.{r}.txt")}
got = {k: [load(k, r) for r in range(1, runs + 1)] for k in ("tcp", "gloo", "star")}
print(f"medians over {runs} runs (busbw GB/s; x gloo: median of the runs' ring/gloo ratios, and their range):")
print(f"{'size':<8} {'ring':>8} {'gloo':>8} {'star':>8} {'x gloo':>8} {'range':>13} {'of link':>8}")
for b in sorted(got["tcp"][0]):
    med = {k: st.median(run[b] for run in v) for k, v in got.items()}
    ratios = [t[b] / g[b] for t, g in zip(got["tcp"], got["gloo"])]
    size = f"{b >> 20} MB" if b >= 1 << 20 else f"{b >> 10} KB"
    share = f"{100 * med['tcp'] / link:.0f}%" if link > 0 else "-"
    rng = f"{min(ratios):.2f}-{max(ratios):.2f}"
    print(f"{size:<8} {med['tcp']:8.3f} {med['gloo']:8.3f} {med['star']:8.3f} {st.median(ratios):8.2f} {rng:>13} {share:>8}")
PY
fi
