#!/usr/bin/env bash
# Makes .venv/ (git-ignored) ready for the Python tests: torch from PyPI (the default wheel;
# it runs on CPU without a GPU; about 5 GB with its CUDA libraries, installed once and never
# reinstalled when present), pytest, scikit-build-core, and the trident package built from
# python/ against the Trident in ${TRIDENT_BUILD_DIR:-build} and that torch. Idempotent: a
# second run installs nothing and rebuilds the package only where its sources changed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TRIDENT_VENV:-.venv}
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
fi
py=$venv/bin/python
if ! "$py" -c "import torch" 2>/dev/null; then
  echo "python-env: installing torch into $venv (once; a few minutes)"
  "$py" -m pip install -q --disable-pip-version-check torch numpy
fi
need=()
"$py" -c "import pytest" 2>/dev/null || need+=(pytest)
"$py" -c "import scikit_build_core" 2>/dev/null || need+=("scikit-build-core>=0.10")
if ((${#need[@]})); then
  "$py" -m pip install -q --disable-pip-version-check "${need[@]}"
fi
if [[ -f python/requirements-test.txt ]]; then
  "$py" -m pip install -q --disable-pip-version-check -r python/requirements-test.txt
fi
# The package: no build isolation, so that it compiles against the torch installed above.
# Skipped when the installed module is newer than its sources, Trident's libraries and torch.
export TRIDENT_BUILD_DIR=${TRIDENT_BUILD_DIR:-$PWD/build}
installed=$("$py" -c "import glob, os, trident; print(next(iter(glob.glob(os.path.join(os.path.dirname(trident.__file__), '_C*.so'))), ''))" 2>/dev/null || true)
if [[ -n $installed ]] && [[ -z $(find python/src python/trident python/CMakeLists.txt \
    python/pyproject.toml "$TRIDENT_BUILD_DIR"/lib/libtrident_{runtime,health,checkpoint,comm,transport,store,common}.a \
    "$("$py" -c "import torch, os; print(os.path.dirname(torch.__file__))" 2>/dev/null)/version.py" \
    -newer "$installed" -print -quit) ]]; then
  echo "python-env: .venv ready (trident package up to date)"
  exit 0
fi
CMAKE_ARGS="${CMAKE_ARGS:-} $(command -v ccache >/dev/null && echo -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)" \
  "$py" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps ./python
"$py" -c "import trident.torch" 
