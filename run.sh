#!/usr/bin/env bash
# Set up the pinned environment in .venv (once, and again whenever requirements.lock changes),
# then run a task in it. Needs only Python 3.11+ on PATH.
#
#   ./run.sh repro [dvc repro args]   reproduce the pipeline (default: built-in MNIST, offline)
#   ./run.sh test  [pytest args]      lint (pre-commit) and the whole test suite, slow tests included
#   ./run.sh lock                     re-pin requirements.lock and requirements-serve.lock
#   ./run.sh <command ...>            any command inside the environment (e.g. ./run.sh dvc exp show)
set -euo pipefail
cd "$(dirname "$0")"

venv=${IMGPIPE_VENV:-.venv}
[[ $venv == /* ]] || venv=$PWD/$venv  # relative to the checkout, or absolute
lock=requirements.lock

find_python() {
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "$candidate"
      return
    fi
  done
  echo "run.sh: Python 3.11 or newer is needed on PATH" >&2
  exit 1
}

ensure_env() {
  local stamp="$venv/.imgpipe-lock-sha256" want
  # Hash with Python: sha256sum is not on every system (macOS has shasum instead).
  want=$("$(find_python)" -c 'import hashlib, sys
print(hashlib.sha256(b"".join(open(f, "rb").read() for f in sys.argv[1:])).hexdigest())' \
    "$lock" pyproject.toml)
  if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return
  fi
  echo "run.sh: installing the pinned environment into $venv (a few minutes, once)" >&2
  [[ -x "$venv/bin/python" ]] || "$(find_python)" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -r "$lock"
  "$venv/bin/python" -m pip install --quiet --no-deps -e .
  echo "$want" >"$stamp"
}

# Debian packages some tests need, installed when this user may (root, or password-less sudo);
# elsewhere those tests are skipped, except in CI. Usage: apt_install <package> <why>.
apt_install() {
  local apt=()
  if [[ $(id -u) == 0 ]]; then
    apt=(apt-get)
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    apt=(sudo apt-get)
  fi
  if command -v apt-get >/dev/null && [[ ${#apt[@]} -gt 0 ]]; then
    echo "run.sh: installing Debian's $1 for $2" >&2
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends "$1" >/dev/null
  else
    echo "run.sh: no $1 and no way to install it; $2 will be skipped" >&2
  fi
}

# The upload-page test drives a headless Chromium.
ensure_chromium() {
  command -v chromium >/dev/null || command -v chromium-browser >/dev/null && return
  apt_install chromium "the browser test"
}

# The alerting rules are checked and unit-tested by promtool, and an end-to-end test runs a real
# Prometheus: both come in Debian's prometheus package.
ensure_promtool() {
  command -v promtool >/dev/null && command -v prometheus >/dev/null && return
  apt_install prometheus "the alerting-rule tests"
}

task=${1:-repro}
[[ $# -gt 0 ]] && shift

if [[ "$task" == lock ]]; then
  ensure_env
  "$venv/bin/python" -m pip install --quiet uv
  compile=("$venv/bin/uv" pip compile pyproject.toml --universal --python-version 3.11 --no-header)
  "${compile[@]}" --all-extras --output-file "$lock"
  # The service alone (no torch), at exactly the versions of the full lock.
  exec "${compile[@]}" --extra serve --constraint "$lock" --output-file requirements-serve.lock
fi

ensure_env
export PATH="$venv/bin:$PATH"
case "$task" in
  repro)
    # DVC only reruns stages whose declared keys changed; a stray key would go unnoticed.
    imgpipe check-params
    exec dvc repro "$@"
    ;;
  test)
    ensure_chromium
    ensure_promtool
    pre-commit run --all-files --show-diff-on-failure
    exec python -m pytest -m "slow or not slow" "$@"
    ;;
  *) exec "$task" "$@" ;;
esac
