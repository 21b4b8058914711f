"""``maskmed train --nproc K``: K DDP processes on this machine, started and stopped by the calling process.

What ``torchrun --standalone --nproc_per_node=K`` sets up (each worker's RANK, LOCAL_RANK, WORLD_SIZE and a free
MASTER_PORT on this machine, read by ``distributed.setup``), without torchrun's agent in between: the caller keeps
each worker's exit code, and a cancel reaches every worker. Through torchrun, a SIGTERM to ``maskmed train`` killed
torchrun (subprocess's cleanup sends SIGKILL) and left its workers training as orphans, and a worker's exit code
(3 for bad data, 5 for a cancel) came back as torchrun's 1 after a traceback. Several machines still go through
torchrun itself (the train command's help says how).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

# How often the caller looks at its workers, seconds: how soon the others are stopped after one fails.
_POLL_SECONDS = 0.1


def _free_port() -> int:
    """A TCP port free on this machine now (the kernel's pick; rank 0 binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_workers(cli_argv: list[str], processes: int, workers: list[subprocess.Popen]) -> None:
    """``python -m maskmed_core.cli CLI_ARGV`` (``train ...`` without --nproc) as ``processes`` ranks of one group,
    appended to ``workers`` as each starts (so a Ctrl+C between two starts leaves none unknown to the caller)."""
    shared = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
              "WORLD_SIZE": str(processes), "LOCAL_WORLD_SIZE": str(processes)}
    command = [sys.executable, "-m", "maskmed_core.cli", *cli_argv]
    for rank in range(processes):
        workers.append(subprocess.Popen(command, env={**shared, "RANK": str(rank), "LOCAL_RANK": str(rank)}))


def wait_for_workers(workers: list[subprocess.Popen]) -> int:
    """0 when every worker ends with 0; otherwise the first failing worker's exit code, once the others have been
    stopped and have ended: a rank left alone would wait in a collective for its partner until gloo's 30-minute
    timeout. A worker killed by signal N gives 128 + N, as a shell says."""
    while True:
        codes = [worker.poll() for worker in workers]
        failed = next((code for code in codes if code not in (None, 0)), None)
        if failed is not None:
            stop_workers(workers)
            return failed if failed > 0 else 128 - failed
        if all(code == 0 for code in codes):
            return 0
        time.sleep(_POLL_SECONDS)


def stop_workers(workers: list[subprocess.Popen]) -> None:
    """SIGTERM to each worker still running (each cancels as one process does: the last completed epoch's files
    are kept), then wait for all of them; a Ctrl+C meanwhile does not cut the wait short, since the workers may be
    writing their last files."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        while True:
            try:
                worker.wait()
                break
            except KeyboardInterrupt:
                continue
