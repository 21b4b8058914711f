"""What the benchmark scripts share: data paths, CPU and memory accounting, a spawned child per measurement, the
machine line every report starts with, and the work folder.

Imported as ``benchmarks._common`` (run the scripts as ``python3 -m benchmarks.<name>`` from the repository root).
"""

from __future__ import annotations

import importlib.metadata
import multiprocessing as mp
import os
import queue as queue_module
import resource
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
REAL_CT = str(SHARED_DATA / "ct" / "abdomen_ct_3mm.nii.gz")
REAL_LABELS = str(SHARED_DATA / "ct" / "abdomen_ct_3mm_totalseg.nii.gz")
LABEL_MAPPING = str(SHARED_DATA / "amos15_from_totalseg_v2.json")
SPACING_ZYX = (3.0, 3.0, 3.0)
GIB = 2**30


# ----- CPU and memory --------------------------------------------------------------------------------------------
def cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_bytes() -> int:
    """Peak resident set of this process's memory map (VmHWM); ru_maxrss where /proc is missing."""
    from maskmed_core.inference.checks import proc_field_bytes

    peak = proc_field_bytes("/proc/self/status", "VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def busy_cpu_seconds() -> float:
    """CPU time (all processes, all cores) spent busy since boot, from /proc/stat; NaN where it is missing."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# ----- child processes -------------------------------------------------------------------------------------------
def measure(target, *args) -> dict:
    """``run_child(target, *args)`` (a dict) plus ``others``: the cores other processes kept busy meanwhile, on
    average (the machine's busy CPU time minus the child's own, over the wall time)."""
    busy, start = busy_cpu_seconds(), time.perf_counter()
    result = run_child(target, *args)
    elapsed = time.perf_counter() - start
    result["others"] = max(0.0, busy_cpu_seconds() - busy - result["cpu_total"]) / elapsed
    return result


def _child_main(target, args, results) -> None:
    warnings.filterwarnings("ignore")
    try:
        results.put(("ok", target(*args)))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent, which reports it
        results.put(("error", traceback.format_exc()))


def run_child(target, *args):
    """``target(*args)`` in a fresh spawned process; its return value, or RuntimeError with the child's traceback."""
    context = mp.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_child_main, args=(target, args, results))
    process.start()
    while True:
        try:
            status, value = results.get(timeout=1.0)
            break
        except queue_module.Empty:
            if not process.is_alive():
                process.join()
                raise RuntimeError(
                    f"{target.__name__} died with exit code {process.exitcode} (a negative code is a signal: "
                    "-9 is usually the out-of-memory killer)"
                ) from None
    process.join()
    if status == "error":
        raise RuntimeError(f"{target.__name__} failed in its child process:\n{value}")
    return value


# ----- report and work folder ------------------------------------------------------------------------------------
def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _memory_gib() -> float:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            return int(meminfo.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def print_machine(*packages: str) -> None:
    """The machine line every comparison starts with (CPU, cores, RAM, versions) and the load average."""
    from maskmed_core.cli import _cpu_name

    versions = "".join(f"{name} {_version(name)}, " for name in ("torch", *packages))
    print(
        f"machine: {_cpu_name()}, {os.cpu_count()} cores, {_memory_gib():.0f} GiB RAM, "
        f"{versions}Python {sys.version.split()[0]}"
    )
    print(f"load average (1, 5, 15 min) at the start: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


def run_in_workdir(workdir_option: str | None, prefix: str, run: Callable[[Path], None]) -> None:
    """run(folder): in --workdir (kept, reused) or in a temporary folder removed afterwards."""
    workdir = Path(workdir_option) if workdir_option else Path(tempfile.mkdtemp(prefix=prefix))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        run(workdir)
    finally:
        if not workdir_option:
            shutil.rmtree(workdir, ignore_errors=True)
