"""What a process killed while it writes (kill -9: no handler runs) leaves behind, and how a run clears it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from maskmed_core.atomic import remove_stale_temporaries

REPO = Path(__file__).resolve().parents[1]
# A child that writes a 32 MB safetensors file and is killed (SIGKILL, as Slicer's Stop after its grace period)
# halfway through the write: the half-written bytes are on disk when it dies.
KILLED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
import torch
from maskmed_core.atomic import write_safetensors

real_write_bytes = Path.write_bytes
def killed_halfway(self, data):
    with open(self, "wb") as handle:
        handle.write(bytes(data)[: len(data) // 2])
        handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
Path.write_bytes = killed_halfway
write_safetensors(Path(sys.argv[1]) / "training_state.safetensors", {"w": torch.zeros(8 << 20)}, {"a": "b"})
"""


def test_a_write_killed_halfway_leaves_only_a_temporary_a_run_removes(tmp_path):
    (tmp_path / "training_state.safetensors").write_bytes(b"the previous epoch's state")
    (tmp_path / ".tmpAbC123").write_bytes(b"not ours")  # e.g. another tool's temporary file
    (tmp_path / ".best.0123456789ab.tmp.maskmed").write_bytes(b"another target's")
    run = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(tmp_path)], cwd=REPO, capture_output=True)
    assert run.returncode == -9, run.stderr
    assert (tmp_path / "training_state.safetensors").read_bytes() == b"the previous epoch's state"
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".training_state."))
    assert len(left) == 1 and left[0].endswith(".tmp.safetensors")  # ours only: no writer's own temporary besides
    removed = remove_stale_temporaries(tmp_path / "training_state.safetensors")
    assert [p.name for p in removed] == left
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".best.0123456789ab.tmp.maskmed", ".tmpAbC123", "training_state.safetensors"]
