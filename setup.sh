#!/usr/bin/env bash
# Installs MaskMed and everything it needs, compiles the deformable-attention op, then runs the main job:
# `maskmed demo` (segments the bundled CT with the bundled model into ./maskmed_demo/, under 2 minutes on 2 cores).
# Usage: bash setup.sh            (set MASKMED_SKIP_MAIN=1 to install only)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"

# torch first, pinned, so that the range in pyproject.toml is already met and pip pulls nothing bigger.
# Where torch is already installed (a CUDA build on a GPU machine, or Slicer's), it is kept as it is.
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    "$PYTHON" -m pip install "torch==2.13.0"
fi
"$PYTHON" -m pip install -e ".[test]"
# Compiles the C++ (and, with a CUDA build of torch and nvcc, the CUDA) op into ~/.cache/maskmed/ops.
# A failed build is reported and MaskMed falls back to the PyTorch reference, so it does not stop setup.
"$PYTHON" -m maskmed_core.cli build-ops || echo "setup: the op build failed; the PyTorch reference will be used"

if [ "${MASKMED_SKIP_MAIN:-0}" != "1" ]; then
    "$PYTHON" -m maskmed_core.cli info
    "$PYTHON" -m maskmed_core.cli demo -o maskmed_demo
fi
