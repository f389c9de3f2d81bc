#!/usr/bin/env sh
# Make .venv match uv.lock on any machine with Python >= 3.12: find the interpreter, install uv
# with pip when it is missing, then `uv sync --frozen`. Safe to run again; fast when in sync.
set -eu
cd "$(dirname "$0")/.."

is_good() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }

find_python() {
    for name in ${ZAPFLOW_PYTHON:-} python3.12 python3.13 python3.14 python3; do
        path=$(command -v "$name" 2>/dev/null) || continue
        # A pyenv shim exists but fails unless PYENV_VERSION names it: is_good rejects it.
        if is_good "$path"; then echo "$path"; return 0; fi
    done
    for path in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3 \
                /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do
        if [ -x "$path" ] && is_good "$path"; then echo "$path"; return 0; fi
    done
    return 1
}

PYTHON=$(find_python) || { echo "bootstrap: Python >= 3.12 not found (set ZAPFLOW_PYTHON)" >&2; exit 1; }

if command -v uv >/dev/null 2>&1; then
    UV=$(command -v uv)
elif [ -x .venv-tools/bin/uv ]; then
    UV=.venv-tools/bin/uv
else
    echo "bootstrap: installing uv with pip into .venv-tools/" >&2
    "$PYTHON" -m venv .venv-tools
    .venv-tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==0.13.8"
    UV=.venv-tools/bin/uv
fi

UV_PYTHON_DOWNLOADS=never "$UV" sync --frozen --quiet --python "$PYTHON"
