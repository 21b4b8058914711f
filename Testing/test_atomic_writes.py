"""What a process killed while it writes (kill -9: no handler runs) leaves behind, and how a run clears it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from maskmed_core.atomic import remove_stale_temporaries

REPO = Path(__file__).resolve().parents[1]
# A child that starts writing a safetensors file and is killed (SIGKILL, as Slicer's Stop after its grace period)
# halfway through the write: the half-written bytes are on disk when it dies. Then WRITES[target] writes the target.
KILLED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
import numpy as np
import torch
from maskmed_core.atomic import write_safetensors
from maskmed_core.classes import AMOS15_CLASSES
from maskmed_core.inference.result import Grid, SegmentationResult

def killed_halfway(self, data):
    with open(self, "wb") as handle:
        handle.write(bytes(data)[: len(data) // 2])
        handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
Path.write_bytes = killed_halfway
target = Path(sys.argv[1]) / sys.argv[2]
"""
WRITES = {
    # a 32 MB training state (torch tensors)
    "training_state.safetensors": 'write_safetensors(target, {"w": torch.zeros(8 << 20)}, {"a": "b"})',
    # a result file as `maskmed predict --save-result` writes it for Slicer's sliders (numpy arrays)
    "case.maskmed-result": """
grid = Grid((6, 5, 4), (3.0, 3.0, 3.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
SegmentationResult(masks=np.zeros((2, 4, 5, 6), np.uint8), class_given_object=np.full((2, 3), 0.3, np.float32),
                   objectness=np.full(2, 0.9, np.float32), classes=list(AMOS15_CLASSES[:3]), model_grid=grid,
                   canonical_grid=grid, input_grid=grid).save(target)
""",
}


@pytest.mark.parametrize("target", list(WRITES))
def test_a_write_killed_halfway_leaves_only_a_temporary_a_run_removes(tmp_path, target):
    (tmp_path / target).write_bytes(b"the previous file")
    (tmp_path / ".tmpAbC123").write_bytes(b"not ours")  # e.g. another tool's temporary file
    (tmp_path / ".best.0123456789ab.tmp.maskmed").write_bytes(b"another target's")
    child = KILLED_MID_WRITE + WRITES[target]
    run = subprocess.run([sys.executable, "-c", child, str(tmp_path), target], cwd=REPO, capture_output=True)
    assert run.returncode == -9, run.stderr
    assert (tmp_path / target).read_bytes() == b"the previous file"
    stem = target.split(".")[0]
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f".{stem}."))
    assert len(left) == 1 and ".tmp." in left[0]  # ours only: no writer's own temporary besides
    removed = remove_stale_temporaries(tmp_path / target)
    assert [p.name for p in removed] == left
    others = [".best.0123456789ab.tmp.maskmed", ".tmpAbC123"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*others, target])
