"""Build and load the compiled deformable-attention extensions.

``build_ops()`` compiles the C++ (CPU) extension, and the CUDA one where a CUDA build of torch and nvcc
exist, with ``torch.utils.cpp_extension`` into a cache folder keyed by the torch version, the device kind,
the Python version and a hash of the sources. ``load_extension()`` imports an already built library from
that folder without needing a compiler, so Slicer and the CLI start fast; it returns None when nothing
matching is built.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import ModuleType

import torch

CSRC_DIR = Path(__file__).resolve().parent / "csrc"

# extension kind -> (module name, source files relative to csrc/)
EXTENSION_SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "cpu": ("maskmed_deform_attn3d_cpu", ("ms_deform_attn3d_cpu.cpp",)),
    "cuda": ("maskmed_deform_attn3d_cuda", ("ms_deform_attn3d_cuda.cu",)),
}

# Headers that both kinds include (part of each build's source hash, so editing one rebuilds both).
SHARED_HEADERS: tuple[str, ...] = ("ms_deform_attn3d_checks.h",)

_loaded: dict[str, ModuleType | None] = {}


class BuildStatus(Enum):
    """The outcome of one extension kind in ``build_ops``."""

    BUILT = "built"
    ALREADY_BUILT = "already built"
    SKIPPED = "skipped"  # this machine cannot build it (e.g. CUDA on a CPU-only torch); not an error
    FAILED = "build failed"


@dataclass
class BuildReport:
    """What happened to one extension during ``build_ops``: the status, the library (when there is one) and
    a message for the user (the reason, for SKIPPED and FAILED)."""

    kind: str
    status: BuildStatus
    path: Path | None
    message: str

    @property
    def built(self) -> bool:
        return self.status in (BuildStatus.BUILT, BuildStatus.ALREADY_BUILT)


def cache_root() -> Path:
    """Folder holding all builds: ``$MASKMED_CACHE_DIR`` or ``~/.cache/maskmed``, then ``ops/``."""
    base = os.environ.get("MASKMED_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "maskmed"
    )
    return Path(base) / "ops"


def _sources_hash(kind: str) -> str:
    _, files = EXTENSION_SOURCES[kind]
    digest = hashlib.sha256()
    for name in (*files, *SHARED_HEADERS):
        digest.update(name.encode())
        digest.update((CSRC_DIR / name).read_bytes())
    return digest.hexdigest()[:12]


def build_dir(kind: str) -> Path:
    """Cache folder of one extension kind for this torch, Python and source version."""
    device_tag = "cpu" if kind == "cpu" else f"cuda{torch.version.cuda or 'none'}"
    torch_tag = torch.__version__.replace("+", "_")
    py_tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    return cache_root() / f"torch{torch_tag}-{device_tag}-{py_tag}-{_sources_hash(kind)}"


def built_library(kind: str) -> Path | None:
    """Path of the built library of one kind for the current torch and sources, or None."""
    module_name, files = EXTENSION_SOURCES[kind]
    if not all((CSRC_DIR / name).is_file() for name in (*files, *SHARED_HEADERS)):
        return None  # a package installed without its sources has nothing to match a build against
    folder = build_dir(kind)
    if not folder.is_dir():
        return None
    for candidate in sorted(folder.glob(f"{module_name}*.so")) + sorted(folder.glob(f"{module_name}*.pyd")):
        return candidate
    return None


def _has_cuda_toolkit(folder: str | None) -> bool:
    if not folder:
        return False
    has_nvcc = shutil.which("nvcc", path=os.path.join(folder, "bin")) is not None
    has_runtime = any(
        any(Path(folder, lib).glob("libcudart*")) for lib in ("lib64", "lib", "targets/x86_64-linux/lib")
    )
    return has_nvcc and has_runtime


def find_cuda_home() -> str | None:
    """The CUDA toolkit folder: torch's guess when it holds nvcc and libcudart, else the usual places.

    torch guesses the parent of the ``nvcc`` on PATH, which is wrong where nvcc is linked into
    /usr/local/bin (the link step then cannot find -lcudart).
    """
    from torch.utils import cpp_extension

    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME, "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for folder in candidates:
        if _has_cuda_toolkit(folder):
            return folder
    return None


def cuda_build_possible() -> tuple[bool, str]:
    """Whether this environment can compile the CUDA extension, and why not if it cannot."""
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    if find_cuda_home() is None:
        return False, "no CUDA toolkit with nvcc and libcudart was found (set CUDA_HOME)"
    return True, ""


def _compile(kind: str, verbose: bool) -> Path:
    from torch.utils.cpp_extension import load

    module_name, files = EXTENSION_SOURCES[kind]
    folder = build_dir(kind)
    folder.mkdir(parents=True, exist_ok=True)
    sources = [str(CSRC_DIR / name) for name in files]
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    kwargs: dict = {
        "name": module_name,
        "sources": sources,
        "build_directory": str(folder),
        "extra_cflags": ["-O3", *openmp],
        "extra_ldflags": openmp,
        "verbose": verbose,
        "is_python_module": True,
    }
    if kind == "cuda":
        from torch.utils import cpp_extension

        cuda_home = find_cuda_home()
        cpp_extension.CUDA_HOME = cuda_home  # used by load() for include paths and -lcudart
        os.environ["CUDA_HOME"] = cuda_home or ""
        # --use_fast_math only flushes float32 denormals here (no divisions in the kernels); the one
        # rounding that picks a corner uses an explicit fma, exactly as grid_sample does.
        kwargs["extra_cuda_cflags"] = ["-O3", "--use_fast_math"]
        if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
            # No GPU to detect the architecture from: cover the common data-centre and desktop ones.
            os.environ["TORCH_CUDA_ARCH_LIST"] = "7.5;8.0;8.6;8.9;9.0+PTX"
    module = load(**kwargs)
    _loaded[kind] = module
    path = built_library(kind)
    if path is None:
        raise RuntimeError(f"the build finished but no library was found in {folder}")
    return path


def build_ops(kinds: tuple[str, ...] = ("cpu", "cuda"), verbose: bool = False) -> list[BuildReport]:
    """Compile the requested extensions into the cache; already built ones are kept as they are."""
    reports = []
    for kind in kinds:
        if kind == "cuda":
            possible, why = cuda_build_possible()
            if not possible:
                reports.append(BuildReport(kind, BuildStatus.SKIPPED, None, f"skipped: {why}"))
                continue
        existing = built_library(kind)
        if existing is not None:
            reports.append(BuildReport(kind, BuildStatus.ALREADY_BUILT, existing, "already built"))
            continue
        try:
            path = _compile(kind, verbose)
        except Exception as error:  # a compiler failure must not stop the other kind from building
            reports.append(BuildReport(kind, BuildStatus.FAILED, None, f"build failed: {error}"))
            continue
        reports.append(BuildReport(kind, BuildStatus.BUILT, path, "built"))
    return reports


def load_extension(kind: str) -> ModuleType | None:
    """Import the built extension of one kind ("cpu" or "cuda"), or None if it is not built here."""
    if kind in _loaded:
        return _loaded[kind]
    module = None
    path = built_library(kind)
    if path is not None:
        module_name, _ = EXTENSION_SOURCES[kind]
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is not None and spec.loader is not None:
            try:
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            except ImportError:
                module = None
    _loaded[kind] = module
    return module
