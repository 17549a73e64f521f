#!/usr/bin/env bash
# Create or reuse the project's virtual environment with the pinned stack, horovod included.
#
#   scripts/setup_env.sh [VENV]        (the Makefile calls it; re-running it costs seconds)
#
# Order matters: torch first (horovod compiles against it), then the project with constraints.txt,
# then horovod from the local wheel cache (built once per machine by scripts/build_horovod.sh).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-"$here/.venv"}
wheels=${PALSYGAN_WHEEL_CACHE:-"${XDG_CACHE_HOME:-$HOME/.cache}/palsygan/wheels"}
python=${PYTHON:-python3.11}
constraints="$here/constraints.txt"

if ! command -v java >/dev/null 2>&1; then
    echo "error: Java 17 is required by Spark 4 (apt-get install openjdk-17-jre-headless)" >&2
    exit 1
fi
if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python not found; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

"${pip[@]}" install -c "$constraints" pip setuptools wheel
"${pip[@]}" install -c "$constraints" torch
"${pip[@]}" install -c "$constraints" -e "$here[test]"

"$here/scripts/build_horovod.sh" "$venv/bin/python" "$wheels"
torch_version=$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')
"${pip[@]}" install -c "$constraints" --only-binary horovod \
    --find-links "$wheels/torch-$torch_version" horovod

"${pip[@]}" check
build=$("$venv/bin/horovodrun" --check-build)
for framework in PyTorch Gloo; do
    if ! grep -q "\[X\] $framework" <<<"$build"; then
        echo "error: horovod was built without $framework:" >&2
        echo "$build" >&2
        exit 1
    fi
done
echo "environment ready: $venv"
