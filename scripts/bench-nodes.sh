#!/usr/bin/env bash
# Several machines, measured across network namespaces (needs root and `ip`/`tc`): two nodes,
# each a network namespace with its own eth0 (10.77.0.1 and .2) on a bridge in a third
# namespace; everything is removed on exit. Uses the release build (under CARGO_TARGET_DIR,
# default ./target).
#
#   scripts/bench-nodes.sh lenet [EPOCHS] [REPEAT]
#       LeNet, 2 nodes x 1 process, --threads 1: mnist-ddp vs PyTorch DDP over gloo
#       (scripts/ref/torch_ddp_nodes.py, one process per namespace). Both run EPOCHS epochs
#       (default 2: 1 warm-up + timed ones, cosine schedule over all of them); prints the
#       median timed epoch time, images/s and test accuracy of each, REPEAT pairs (default 1)
#       back to back, and the median speed-up over the pairs (a shared machine's load drifts).
#   scripts/bench-nodes.sh compression [TRAIN_IMAGES] [RATE]
#       MLP (2 MB of gradients per step), 2 nodes x 1 process, each node's eth0 shaped to RATE
#       (default 100mbit, tc tbf): epoch time and gradient bytes per step for every
#       --compression (the PowerSGD ones with --powersgd-start-iter 10) on the first
#       TRAIN_IMAGES training images (default 6400: 50 steps per rank; the full test set),
#       2 epochs, the 2nd timed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
[ "$(id -u)" = 0 ] || { echo "bench-nodes.sh: needs root (network namespaces)" >&2; exit 2; }
MODE=${1:-lenet}
BIN=${CARGO_TARGET_DIR:-target}/release
cargo build --release -q -p mnist-launch -p mnist-worker
TMP=$(mktemp -d /tmp/bench-nodes.XXXXXX)
P=mnbench$$
cleanup() {
    for n in "$P-n0" "$P-n1" "$P-sw"; do ip netns del "$n" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
ip netns add "$P-sw"
ip -n "$P-sw" link add br0 type bridge
ip -n "$P-sw" link set br0 up
for i in 0 1; do
    ip netns add "$P-n$i"
    ip -n "$P-sw" link add "p$i" type veth peer name eth0 netns "$P-n$i"
    ip -n "$P-sw" link set "p$i" master br0
    ip -n "$P-sw" link set "p$i" up
    ip -n "$P-n$i" addr add "10.77.0.$((i + 1))/24" dev eth0
    ip -n "$P-n$i" link set eth0 up
    ip -n "$P-n$i" link set lo up
done
shape() {
    for i in 0 1; do
        ip netns exec "$P-n$i" tc qdisc replace dev eth0 root tbf rate "$1" burst 256kb latency 50ms
    done
}

# ours NAME DATA EXTRA...: both nodes, 1 process each; prints the last epoch's metrics with
# epoch_seconds and images_per_second replaced by their medians over the epochs after the first.
ours() {
    local name=$1 data=$2
    shift 2
    local pids=()
    for i in 0 1; do
        ip netns exec "$P-n$i" "$BIN/mnist-launch" --nnodes 2 --node-rank "$i" --master-addr 10.77.0.1 \
            --master-port 29500 --nproc 1 --device cpu --backend cpu --threads 1 --progress never \
            --data "$data" --path "$TMP/$name/n$i" "$@" >"$TMP/$name-n$i.out" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || { cat "$TMP/$name"-n*.out >&2; exit 1; }; done
    "$MNIST_PYTHON" - "$TMP/$name/n0/metrics.jsonl" <<'PY'
import json, statistics, sys
m = [json.loads(l) for l in open(sys.argv[1])]
timed = m[1:] or m
last = dict(m[-1])
for k in ("epoch_seconds", "images_per_second"):
    last[k] = statistics.median(e[k] for e in timed)
print(json.dumps(last))
PY
}

field() { $MNIST_PYTHON -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

case "$MODE" in
lenet)
    EPOCHS=${2:-2}
    REPEAT=${3:-1}
    echo "LeNet, 2 namespace nodes x 1 process, --threads 1, $EPOCHS epochs (1 warm-up), $REPEAT pair(s) run back to back; load average $(cut -d" " -f1-3 /proc/loadavg)"
    ratios=()
    for r in $(seq "$REPEAT"); do
        m=$(ours "lenet$r" data/mnist --model LeNet --epochs "$EPOCHS")
        ours_s=$(field "$m" epoch_seconds)
        echo "mnist-ddp: epoch_seconds=$ours_s images_per_second=$(field "$m" images_per_second) test_top1=$(field "$m" test_top1)"
        pids=()
        for i in 0 1; do
            ip netns exec "$P-n$i" env GLOO_SOCKET_IFNAME=eth0 "$MNIST_PYTHON" \
                scripts/ref/torch_ddp_nodes.py --rank "$i" --world 2 --master-addr 10.77.0.1 --master-port $((29600 + r)) \
                --data data/mnist --threads 1 --warmup 1 --epochs $((EPOCHS - 1)) --model LeNet >"$TMP/gloo-n$i.out" 2>&1 &
            pids+=($!)
        done
        for p in "${pids[@]}"; do wait "$p" || { cat "$TMP"/gloo-n*.out >&2; exit 1; }; done
        res=$(grep RESULT "$TMP/gloo-n0.out")
        echo "torch DDP gloo: $res"
        gloo_s=$(echo "$res" | sed 's/.*epoch_seconds=\([0-9.]*\).*/\1/')
        ratios+=("$("$MNIST_PYTHON" -c "print(f'{$gloo_s / $ours_s:.2f}')")")
    done
    echo "speed-up (gloo epoch / ours) per pair: ${ratios[*]}; median $("$MNIST_PYTHON" -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}x')" "${ratios[@]}")"
    ;;
compression)
    N=${2:-6400}
    RATE=${3:-100mbit}
    "$MNIST_PYTHON" - "$N" "$TMP/data" <<'PY'
import gzip, struct, sys, pathlib
n, out = int(sys.argv[1]), pathlib.Path(sys.argv[2])
out.mkdir(parents=True)
for prefix, keep in (("train", n), ("t10k", None)):
    for kind, item in (("images-idx3-ubyte", 784), ("labels-idx1-ubyte", 1)):
        raw = gzip.open(f"data/mnist/{prefix}-{kind}.gz").read()
        ndim = raw[3]
        dims = list(struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim]))
        k = dims[0] if keep is None else min(keep, dims[0])
        dims[0] = k
        body = raw[4 + 4 * ndim: 4 + 4 * ndim + k * item]
        (out / f"{prefix}-{kind}").write_bytes(raw[:4] + struct.pack(">" + "I" * ndim, *dims) + body)
PY
    shape "$RATE"
    echo "MLP, 2 namespace nodes x 1 process, eth0 shaped to $RATE (tc tbf), first $N training images, 2 epochs (2nd timed); load average $(cut -d" " -f1-3 /proc/loadavg)"
    printf "%-22s %14s %16s %12s %10s\n" compression epoch_seconds bytes_per_step ratio test_top1
    for c in none fp16 bf16 topk powersgd powersgd_fp16 batched_powersgd batched_powersgd_fp16; do
        m=$(ours "mlp-$c" "$TMP/data" --model MLP --epochs 2 --compression "$c" --powersgd-start-iter 10)
        printf "%-22s %14.2f %16.0f %12.1f %10.2f\n" "$c" "$(field "$m" epoch_seconds)" \
            "$(field "$m" bytes_sent_per_step)" "$(field "$m" compression_ratio)" "$(field "$m" test_top1)"
    done
    ;;
*)
    echo "usage: scripts/bench-nodes.sh lenet [EPOCHS] [REPEAT] | compression [TRAIN_IMAGES] [RATE]" >&2
    exit 2
    ;;
esac
