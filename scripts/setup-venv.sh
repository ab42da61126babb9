#!/usr/bin/env bash
# Creates the project's Python virtual environment with torch 2.13.0 (libtorch for tch) when it is
# missing. Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
want=2.13.0
if [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$want" <<'PY' 2>/dev/null
import sys, importlib.metadata as m
sys.exit(0 if m.version("torch").split("+")[0] == sys.argv[1] else 1)
PY
then
  exit 0
fi
echo "setting up $venv with torch==$want (one time, about a minute)..." >&2
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$want"
echo "torch $want installed in $venv" >&2
