#!/usr/bin/env bash
# Create the project's virtual environment (.venv) with Python 3.12 and install hf-reflow with all
# extras. Idempotent: it reinstalls only when pyproject.toml changed. LeRobot 0.6.1 needs Python 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HF_REFLOW_VENV:-.venv}"
STAMP="$VENV/.hf-reflow-installed"
WANT="$(cat pyproject.toml plugins/lerobot_policy_flow_mlp/pyproject.toml plugins/lerobot_env_metaworld_detour/pyproject.toml | sha256sum | cut -d' ' -f1)"

# The Space's browser test drives Debian's chromium through chromedriver (it is skipped without them):
# install both when they are missing and this runs as root with apt; never fail setup over it.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "hf-reflow setup: installing chromium + chromium-driver (apt) for the Space's browser test"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1 \
      || echo "hf-reflow setup: could not install chromium; the Space's browser test will be skipped" >&2
  fi
fi

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi

works() { [ -n "$1" ] && "$1" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; }

find_python312() {
  local candidate
  for candidate in "${HF_REFLOW_PYTHON:-}" "$(command -v python3.12 2>/dev/null || true)"; do
    if works "$candidate"; then echo "$candidate"; return 0; fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -V -r); do
      candidate="$(PYENV_VERSION="$version" pyenv which python3.12 2>/dev/null || true)"
      if works "$candidate"; then echo "$candidate"; return 0; fi
    done
  fi
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  PY="$(find_python312)" || {
    echo "hf-reflow setup: no Python 3.12 found (LeRobot 0.6.1 needs it): install it, e.g. 'pyenv install 3.12' or 'apt-get install python3.12 python3.12-venv', or set HF_REFLOW_PYTHON=/path/to/python3.12." >&2
    exit 2
  }
  echo "hf-reflow setup: creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi

echo "hf-reflow setup: installing hf-reflow and its extras into $VENV (first time: ~2.5 GB of wheels, a few minutes)"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e ".[metaworld,space,tracking,dev]" -e plugins/lerobot_policy_flow_mlp -e plugins/lerobot_env_metaworld_detour
echo "$WANT" > "$STAMP"
