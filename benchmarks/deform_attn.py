"""Benchmark the 3D multi-scale deformable attention backends against the PyTorch reference.

Times the forward pass and the forward+backward pass, and measures the peak memory of each, for every
backend built here (``maskmed_core.ops.available_backends()``) next to the reference, at the sizes the
MaskMed transformer really uses on a 128^3 patch with batch N=2:

* ``small``: levels 128^3, 64^3, 32^3, 16^3, 8^3; queries are the tokens of the two lowest levels
  (Lq = 16^3 + 8^3 = 4608); M=4 heads of Dh=8; P=4 points per level.
* ``base``: levels 128^3 ... 4^3 (six); queries the tokens of the two lowest levels (Lq = 8^3 + 4^3 = 576);
  M=8 heads of Dh=8; P=4 points per level.

Sampling locations are realistic: reference points at the token centres of each query's level plus
offsets of a few voxels of the sampled level (some fall outside the volume near the faces), attention
weights are a softmax over the L*P samples of each query and head.

Goals:

* cpu: >= 3x faster than the reference forward+backward on 2 cores.
* cuda: >= 5x faster than the reference (forward+backward), with <= 1/3 of its peak memory.

Speed ratios are reference time / backend time (higher is better); memory ratios are backend peak /
reference peak (lower is better). Peak memory is the increase over what the inputs already hold: on CPU
each (backend, pass) is measured in a fresh child process (spawn) from its peak resident set size (VmHWM,
reset through /proc/self/clear_refs where Linux allows it, else getrusage's ru_maxrss); on CUDA it is
``torch.cuda.max_memory_allocated`` above the memory allocated before the pass.

Usage::

    python3 -m benchmarks.deform_attn --sizes small
    python3 -m benchmarks.deform_attn --sizes both --device cuda --repeats 10
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from maskmed_core.ops import available_backends, ms_deform_attn3d

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class Preset:
    """Op sizes of one MaskMed configuration."""

    name: str
    levels: tuple[tuple[int, int, int], ...]
    query_levels: tuple[int, ...]  # levels whose tokens are the queries
    n: int
    m: int
    dh: int
    p: int

    @property
    def s(self) -> int:
        return sum(d * h * w for d, h, w in self.levels)

    @property
    def lq(self) -> int:
        return sum(self.levels[i][0] * self.levels[i][1] * self.levels[i][2] for i in self.query_levels)

    def describe(self, dtype: torch.dtype) -> str:
        levels = ", ".join(f"{d}x{h}x{w}" for d, h, w in self.levels)
        queries = " + ".join("x".join(map(str, self.levels[i])) for i in self.query_levels)
        itemsize = torch.empty((), dtype=dtype).element_size()
        value_mb = self.n * self.s * self.m * self.dh * itemsize / 2**20
        samples = self.n * self.lq * self.m * len(self.levels) * self.p
        return (
            f"preset {self.name}: N={self.n}, levels (D,H,W) = {levels} (L={len(self.levels)}, S={self.s}), "
            f"Lq = {queries} = {self.lq}, M={self.m}, Dh={self.dh}, P={self.p}; "
            f"value {value_mb:.0f} MiB, {samples} samples"
        )


PRESETS = {
    "small": Preset("small", ((128,) * 3, (64,) * 3, (32,) * 3, (16,) * 3, (8,) * 3), (3, 4), 2, 4, 8, 4),
    "base": Preset("base", ((128,) * 3, (64,) * 3, (32,) * 3, (16,) * 3, (8,) * 3, (4,) * 3), (4, 5), 2, 8, 8, 4),
}


def make_inputs(preset: Preset, device: torch.device, dtype: torch.dtype, seed: int = 0, offset_voxels: float = 2.0):
    """Op inputs at ``preset``'s sizes with realistic sampling locations and softmaxed weights."""
    generator = torch.Generator().manual_seed(seed)
    levels = torch.tensor(preset.levels, dtype=torch.int64)
    sizes = levels.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    num_levels = len(preset.levels)
    # Reference points: centres of the query tokens in their own level, as (x, y, z) = (w, h, d) in [0, 1].
    centres = []
    for index in preset.query_levels:
        d, h, w = preset.levels[index]
        zz, yy, xx = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
        size = torch.tensor([w, h, d], dtype=torch.float64)
        centres.append((torch.stack([xx, yy, zz], -1).reshape(-1, 3).double() + 0.5) / size)
    reference_points = torch.cat(centres).view(1, preset.lq, 1, 1, 1, 3)
    # Offsets of a few voxels of the sampled level (Deformable DETR normalises offsets by that level's size).
    whd = levels.flip(1).double().view(1, 1, 1, num_levels, 1, 3)
    offsets = torch.randn(
        preset.n, preset.lq, preset.m, num_levels, preset.p, 3, generator=generator, dtype=torch.float64
    )
    locations = reference_points + offset_voxels * offsets / whd
    logits = torch.randn(preset.n, preset.lq, preset.m, num_levels * preset.p, generator=generator)
    weights = logits.softmax(-1).view(preset.n, preset.lq, preset.m, num_levels, preset.p)
    value = torch.randn(preset.n, preset.s, preset.m, preset.dh, generator=generator, dtype=torch.float32)
    value = value.to(device=device, dtype=dtype)
    location_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return (
        value,
        levels.to(device),
        level_start_index.to(device),
        locations.to(device=device, dtype=location_dtype),
        weights.to(device=device, dtype=location_dtype),
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_pass(backend: str, inputs, pass_name: str, grad_output: torch.Tensor | None = None) -> None:
    """One forward (no autograd) or one forward+backward of ``backend``."""
    value, shapes, starts, locations, weights = inputs
    if pass_name == "forward":
        with torch.no_grad():
            ms_deform_attn3d(value, shapes, starts, locations, weights, backend=backend)
        return
    leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
    output = ms_deform_attn3d(leaves[0], shapes, starts, leaves[1], leaves[2], backend=backend)
    output.backward(grad_output if grad_output is not None else torch.ones_like(output))


def time_pass(backend: str, inputs, pass_name: str, repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time in seconds."""
    grad_output = None
    if pass_name == "forward+backward":
        value, _, _, locations, _ = inputs
        n, lq = locations.shape[:2]
        generator = torch.Generator().manual_seed(1)
        grad_output = torch.randn(n, lq, value.shape[2] * value.shape[3], generator=generator)
        grad_output = grad_output.to(device=device, dtype=value.dtype)
    for _ in range(warmup):
        run_pass(backend, inputs, pass_name, grad_output)
    _synchronize(device)
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        run_pass(backend, inputs, pass_name, grad_output)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------------------
# Peak memory


def _vm_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def _maxrss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # macOS reports bytes, Linux KiB


def _cpu_peak_child(preset_name: str, backend: str, pass_name: str, dtype_name: str, threads: int) -> float:
    """Runs in a fresh process: MiB by which one pass raises the peak RSS above the inputs' baseline."""
    torch.set_num_threads(threads)
    preset = PRESETS[preset_name]
    device = torch.device("cpu")
    dtype = DTYPES[dtype_name]
    # Warm up on tiny sizes so that libraries, the extension and kernels' first-call state are loaded.
    tiny = Preset("tiny", ((4, 4, 4), (2, 2, 2)), (1,), 1, preset.m, preset.dh, preset.p)
    run_pass(backend, make_inputs(tiny, device, dtype), pass_name)
    inputs = make_inputs(preset, device, dtype)
    grad_output = None
    if pass_name == "forward+backward":
        grad_output = torch.ones(preset.n, preset.lq, preset.m * preset.dh, dtype=dtype)
    gc.collect()
    if _reset_peak_rss() and _vm_kib("VmHWM") is not None:
        baseline = _vm_kib("VmRSS") or 0
        run_pass(backend, inputs, pass_name, grad_output)
        peak = _vm_kib("VmHWM") or 0
    else:
        baseline = max(_maxrss_kib(), _vm_kib("VmRSS") or 0)
        run_pass(backend, inputs, pass_name, grad_output)
        peak = _maxrss_kib()
    return max(0, peak - baseline) / 1024


def cpu_peak_mib(preset: Preset, backend: str, pass_name: str, dtype_name: str, threads: int) -> float:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_cpu_peak_child, (preset.name, backend, pass_name, dtype_name, threads))


def cuda_peak_mib(backend: str, inputs, pass_name: str, device: torch.device) -> float:
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run_pass(backend, inputs, pass_name)
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - baseline) / 2**20


# ---------------------------------------------------------------------------------------------------------
# Report


def machine_description(device: torch.device, threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    lines = [
        f"machine: {cpu}; {os.cpu_count()} logical CPUs; torch threads {threads}",
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.system()} {platform.release()}",
    ]
    if hasattr(os, "getloadavg"):
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        lines.append(f"load average (1, 5, 15 min): {load} (other processes skew the timings)")
    if device.type == "cuda":
        lines.append(f"GPU: {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})")
    return "\n".join(lines)


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    line = "  ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True))
    out = [line, "-" * len(line)]
    for row in rows:
        out.append("  ".join(f"{c:>{w}}" for c, w in zip(row, widths, strict=True)))
    return "\n".join(out)


PASSES = ("forward", "forward+backward")


def benchmark_preset(preset: Preset, backends: list[str], device: torch.device, dtype_name: str, args) -> None:
    dtype = DTYPES[dtype_name]
    print()
    print(preset.describe(dtype))
    print(f"dtype {dtype_name}, device {device}, median of {args.repeats} repeats after {args.warmup} warm-up")
    times: dict[tuple[str, str], float] = {}
    peaks: dict[tuple[str, str], float] = {}
    inputs = make_inputs(preset, device, dtype)
    for backend in backends:
        for pass_name in PASSES:
            times[backend, pass_name] = time_pass(backend, inputs, pass_name, args.repeats, args.warmup, device)
            print(f"  timed {backend:>9} {pass_name:<16} {1000 * times[backend, pass_name]:9.1f} ms", flush=True)
            if device.type == "cuda" and not args.no_memory:
                peaks[backend, pass_name] = cuda_peak_mib(backend, inputs, pass_name, device)
    del inputs
    gc.collect()
    if device.type == "cpu" and not args.no_memory:
        for backend in backends:
            for pass_name in PASSES:
                peaks[backend, pass_name] = cpu_peak_mib(preset, backend, pass_name, dtype_name, args.threads)
                print(f"  peak  {backend:>9} {pass_name:<16} {peaks[backend, pass_name]:9.1f} MiB", flush=True)

    header = ["backend", "pass", "time ms", "speed ref/x", "peak MiB", "memory x/ref"]
    rows = []
    for backend in backends:
        for pass_name in PASSES:
            t = times[backend, pass_name]
            t_ref = times["reference", pass_name]
            row = [backend, pass_name, f"{1000 * t:.1f}", f"{t_ref / t:.2f}x"]
            if (backend, pass_name) in peaks:
                peak, peak_ref = peaks[backend, pass_name], peaks["reference", pass_name]
                row += [f"{peak:.1f}", f"{peak / peak_ref:.3f}" if peak_ref > 0 else "n/a"]
            else:
                row += ["-", "-"]
            rows.append(row)
    print()
    print(format_table(rows, header))
    for backend in backends:
        if backend == "reference":
            continue
        speed = times["reference", "forward+backward"] / times[backend, "forward+backward"]
        goal = 3.0 if backend == "cpu" else 5.0
        verdict = f"goal: {backend} forward+backward >= {goal:.0f}x faster: {'met' if speed >= goal else 'NOT met'}"
        if backend == "cuda" and ("cuda", "forward+backward") in peaks:
            ratio = peaks["cuda", "forward+backward"] / max(peaks["reference", "forward+backward"], 1e-9)
            verdict += f"; peak memory <= 1/3 of the reference: {'met' if ratio <= 1 / 3 else 'NOT met'}"
        print(f"{verdict} ({speed:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--sizes", choices=("small", "base", "both"), default="small", help="which preset(s)")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="auto",
        help="auto: cuda when available, else cpu",
    )
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="dtype of value")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA GPU")
    backends = [b for b in available_backends() if b == "reference" or b == device.type]
    print(machine_description(device, args.threads))
    print(f"backends on {device.type}: {', '.join(backends)} (built: {', '.join(available_backends())})")
    if len(backends) == 1:
        print("only the reference is available here: build the ops first (`maskmed build-ops`)")
    presets = ["small", "base"] if args.sizes == "both" else [args.sizes]
    for name in presets:
        benchmark_preset(PRESETS[name], backends, device, args.dtype, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
