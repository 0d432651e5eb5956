# shellcheck shell=bash
# Sourced by the other scripts: finds (or installs, once) libtorch 2.11 and exports what the
# build needs. libtorch comes from PyPI's torch==2.11.0 in a virtualenv under a per-user cache
# that later clones and CI reuse. Set LIBTORCH to use another libtorch folder instead.
TORCH_VERSION=2.11.0
MNIST_CACHE="${MNIST_DDP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mnist-ddp}"
MNIST_VENV="$MNIST_CACHE/venv-torch-$TORCH_VERSION"

# Besides torch: numpy, and tensorboard, whose own event-file reader checks the files that
# --tensorboard writes (worker/tests/observe.rs).
MNIST_PY_EXTRAS=(numpy "tensorboard==2.21.0")

mnist_have_torch() {
  [ -x "$MNIST_VENV/bin/python" ] &&
    "$MNIST_VENV/bin/python" -c "import torch,sys,importlib.util as u; sys.exit(0 if torch.__version__.split('+')[0]=='$TORCH_VERSION' and u.find_spec('numpy') and u.find_spec('tensorboard') else 1)" 2>/dev/null
}

mnist_setup_torch() {
  if mnist_have_torch; then return 0; fi
  echo "setup: installing torch==$TORCH_VERSION ${MNIST_PY_EXTRAS[*]} into $MNIST_VENV (once; later runs reuse it)" >&2
  mkdir -p "$MNIST_CACHE"
  local py="${PYTHON:-python3}"
  command -v "$py" >/dev/null || { echo "setup: $py not found; Python 3 is needed to install libtorch from PyPI" >&2; return 1; }
  [ -x "$MNIST_VENV/bin/python" ] || "$py" -m venv "$MNIST_VENV" || return 1
  "$MNIST_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" "${MNIST_PY_EXTRAS[@]}" || {
    echo "setup: pip could not install torch==$TORCH_VERSION (network to PyPI needed the first time)" >&2; return 1; }
}

if [ -n "${LIBTORCH:-}" ]; then
  unset LIBTORCH_USE_PYTORCH
  export LIBTORCH
else
  mnist_setup_torch || return 1 2>/dev/null || exit 1
  export VIRTUAL_ENV="$MNIST_VENV"
  export PATH="$MNIST_VENV/bin:$PATH"
  export LIBTORCH_USE_PYTORCH=1
fi
# Python with torch, for the interop tests and the benchmarks.
if [ -x "$MNIST_VENV/bin/python" ]; then export MNIST_PYTHON="$MNIST_VENV/bin/python"; fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Debian packages for the scripts that run real engines (test.sh, engines-check.sh): install
# from the current lists, else refresh them once and retry; quiet, and bounded in time.
mnist_apt_install() {
  local apt=(env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get)
  "${apt[@]}" install -y -q "$@" >/dev/null 2>&1 ||
    { "${apt[@]}" update -q >/dev/null 2>&1 && "${apt[@]}" install -y -q "$@" >/dev/null 2>&1; }
}
