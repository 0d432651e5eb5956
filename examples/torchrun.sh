#!/usr/bin/env bash
# mnist-worker started by torchrun, the way PyTorch users start DDP scripts.
#
#   examples/torchrun.sh [TRAINING FLAGS…]                 one machine, NPROC workers (default 2)
#   NNODES=2 MASTER=host0:29400 examples/torchrun.sh [FLAGS…]   on each of several machines
#     (torchrun's c10d rendezvous at MASTER; it numbers the machines itself)
#
# torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, … and serves its own TCPStore at
# MASTER_ADDR:MASTER_PORT; the workers read those and meet through that store (README
# "Started by other engines"). Needs torch (torchrun) and the mnist-worker binary:
# MNIST_WORKER (default: target/release/mnist-worker, else mnist-worker on PATH);
# TORCHRUN (default: torchrun on PATH, else $MNIST_PYTHON -m torch.distributed.run).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
worker=${MNIST_WORKER:-$here/target/release/mnist-worker}
[[ -x $worker ]] || worker=$(command -v mnist-worker || true)
[[ -n $worker && -x $worker ]] || { echo "torchrun.sh: no mnist-worker (build with cargo build --release, or set MNIST_WORKER)" >&2; exit 2; }
if [[ -n ${TORCHRUN:-} ]]; then
    read -r -a torchrun <<<"$TORCHRUN"
elif command -v torchrun >/dev/null; then
    torchrun=(torchrun)
elif [[ -n ${MNIST_PYTHON:-} ]]; then
    torchrun=("$MNIST_PYTHON" -m torch.distributed.run)
else
    echo "torchrun.sh: no torchrun on PATH; set TORCHRUN or MNIST_PYTHON (source scripts/env.sh)" >&2
    exit 2
fi
nproc=${NPROC:-2}
if [[ ${NNODES:-1} -gt 1 ]]; then
    # Several machines: torchrun's c10d rendezvous at MASTER (host:port), the same on each.
    exec "${torchrun[@]}" --nnodes "$NNODES" --nproc-per-node "$nproc" \
        --rdzv-backend c10d --rdzv-endpoint "${MASTER:?set MASTER=host0:port}" \
        --rdzv-id "${RDZV_ID:-mnist-ddp}" --no-python "$worker" "$@"
fi
exec "${torchrun[@]}" --nproc-per-node "$nproc" --master-port "${MASTER_PORT:-29500}" \
    --no-python "$worker" "$@"
