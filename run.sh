#!/usr/bin/env bash
# One entry point for a fresh machine:
#   bash run.sh demo   install, then run the whole DAG on the built-in offline demo (CPU, no network)
#   bash run.sh test   install, lint (ruff, snakefmt --check, snakemake --lint), then run the test suite
#   bash run.sh lint   install and lint only
#   bash run.sh install   only install (.venv), e.g. before running snakemake with a profile
# Extra arguments go to snakemake (demo) or pytest (test).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${PII_VENV:-.venv}

install() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  # Reinstall only when requirements.txt changed since the last successful install.
  local stamp="$VENV/.requirements.sha256"
  local want
  want=$(sha256sum requirements.txt | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$VENV/bin/pip" install --quiet --upgrade pip
    # torch first and pinned, so no other package can pull a different (multi-GB CUDA) build.
    "$VENV/bin/pip" install --quiet "$(grep '^torch==' requirements.txt)"
    "$VENV/bin/pip" install --quiet -r requirements.txt
    echo "$want" > "$stamp"
  fi
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
  test)
    install
    lint
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  lint)
    install
    lint
    ;;
  *)
    echo "usage: bash run.sh demo|test|lint|install [args]" >&2
    exit 2
    ;;
esac
