# ruff: noqa: N802, N803, N999  (Slicer code style: camelCase names; the package is "MaskMedSegmentationLib")
"""Which Python packages MaskMed needs inside Slicer, which are missing, and how to install them.

Checking never imports torch (slow, and possibly broken): versions come from ``importlib.metadata``. Only the
packages Slicer itself ships (numpy, SimpleITK, vtk), which may lack pip metadata in a Slicer build, and
maskmed_core (which may be bundled with the module rather than pip-installed) fall back to their module's
``__version__``. Installing is planned here (``installPlan``) and run step by step by ``installer.DependencyInstaller``
with the Slicer-only actions (slicer.util.pip_install, PyTorchUtils) passed in by the widget:

- torch through the PyTorch extension (``PyTorchUtils.PyTorchUtilsLogic().installTorch(...)``), which picks the
  CUDA or CPU build that fits the computer: a plain ``pip install torch`` gets that wrong on Windows and Linux;
- the other packages with pip, as minimum versions (``>=``), never replacing Slicer's own numpy, SimpleITK or
  vtk (those are pinned to the installed versions in the same pip call, so a dependency cannot upgrade them);
- then ``maskmed build-ops`` compiles the deformable-attention op (optional: without it the slower PyTorch
  reference runs).
Nothing is installed at import time.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from enum import Enum

from .process import maskmedCommand

# distribution name -> minimum version. Order = install order (torch first: monai and maskmed_core need it).
REQUIREMENTS: dict[str, str] = {
    "torch": "2.1",
    "numpy": "1.23",
    "scipy": "1.9",
    "SimpleITK": "2.2",
    "safetensors": "0.4",
    "slicerio": "1.1",
    "monai": "1.4",
    "psutil": "5",
    "maskmed_core": "0.1.0",
}

# Useful but not required: training curves (matplotlib) and building the C++/CUDA op (ninja).
OPTIONAL_REQUIREMENTS: dict[str, str] = {"matplotlib": "3.5", "ninja": "1.11"}

# Shipped with Slicer: never installed or upgraded by MaskMed (an old one means: use a newer Slicer).
SLICER_PACKAGES = ("numpy", "SimpleITK", "vtk")

# Distribution name -> module name, where they differ or a module fallback is allowed.
_MODULES = {"SimpleITK": "SimpleITK", "numpy": "numpy", "vtk": "vtk", "maskmed_core": "maskmed_core"}
_MODULE_FALLBACK = set(SLICER_PACKAGES) | {"maskmed_core"}


@dataclass
class MissingDependency:
    """A requirement that is not met: ``found`` is the installed version, or None if not installed."""

    name: str
    required: str
    found: str | None = None

    def __str__(self) -> str:
        state = "not installed" if self.found is None else f"version {self.found} is installed"
        return f"{self.name} >= {self.required} ({state})"


class StepKind(str, Enum):
    # PyTorchUtils: PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=...)
    TORCH = "torch"
    PIP = "pip"  # slicer.util.pip_install(arguments)
    BUILD_OPS = "build-ops"  # run arguments (the `maskmed build-ops` command line) as a child process


@dataclass
class InstallStep:
    """One step of the installation (run by ``installer.DependencyInstaller``).

    requirement: the requirement string this step handles, e.g. "monai>=1.4" ("" for build-ops).
    arguments: PIP: the complete pip-install argument list: the requirement, then ``name==version`` pins of
    Slicer's own numpy/SimpleITK/vtk (so pip cannot upgrade them) or ``--no-deps``; BUILD_OPS: the command line.
    optional: MaskMed still works if this step fails.
    """

    kind: StepKind
    requirement: str
    description: str = ""
    arguments: list[str] = field(default_factory=list)
    optional: bool = False


def _parseVersion(text: str):
    try:
        from packaging.version import Version

        return Version(text)
    except Exception:  # no packaging, or a version string it cannot read: compare the leading numbers
        numbers = []
        for part in text.replace("-", ".").replace("+", ".").split("."):
            if not part.isdigit():
                break
            numbers.append(int(part))
        return tuple(numbers)


def versionAtLeast(found: str, required: str) -> bool:
    """True when version ``found`` >= ``required`` (local suffixes like +cpu / +cu121 are fine)."""
    a, b = _parseVersion(found), _parseVersion(required)
    if type(a) is not type(b):
        a, b = _parseVersion(str(found).split("+")[0]), _parseVersion(str(required))
        if type(a) is not type(b):
            return True  # cannot compare: do not block the user on a version string we cannot read
    return a >= b


def installedVersion(name: str) -> str | None:
    """The installed version of distribution ``name``, or None. Only packages Slicer ships and maskmed_core
    may be found through their module when they lack pip metadata."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    if name not in _MODULE_FALLBACK:
        return None
    moduleName = _MODULES.get(name, name)
    if importlib.util.find_spec(moduleName) is None:
        return None
    try:
        module = importlib.import_module(moduleName)
    except Exception:
        return None
    return str(getattr(module, "__version__", "0"))


def missingDependencies(requirements: dict[str, str] | None = None) -> list[MissingDependency]:
    """The requirements (default REQUIREMENTS) that are not installed or too old, in install order."""
    missing = []
    for name, minimum in (REQUIREMENTS if requirements is None else requirements).items():
        found = installedVersion(name)
        if found is None or not versionAtLeast(found, minimum):
            missing.append(MissingDependency(name, minimum, found))
    return missing


def describeMissing(missing: list[MissingDependency]) -> str:
    """A message for the user: what is missing or too old, and what the Install button will do."""
    if not missing:
        return "All Python packages MaskMed needs are installed."
    lines = ["MaskMed needs Python packages that are not installed or too old:"]
    lines += [f"  - {m}" for m in missing]
    slicerOwned = [m.name for m in missing if m.name in SLICER_PACKAGES]
    installable = [m for m in missing if m.name not in SLICER_PACKAGES]
    if installable:
        parts = []
        if any(m.name == "torch" for m in installable):
            parts.append("PyTorch through the PyTorch extension (it picks the CUDA or CPU build for this computer)")
        others = [m.name for m in installable if m.name != "torch"]
        if others:
            parts.append(f"{', '.join(others)} with pip")
        lines.append(
            "Click Install to install " + " and ".join(parts) + "; Slicer's own packages are left as they are. "
            "Restart Slicer afterwards if it asks you to."
        )
    if slicerOwned:
        lines.append(
            f"{', '.join(slicerOwned)} {'is' if len(slicerOwned) == 1 else 'are'} part of Slicer and "
            "will not be replaced: install a newer Slicer."
        )
    return "\n".join(lines)


def dependencyStatus(missing: list[MissingDependency], pytorchExtensionInstalled: bool) -> str:
    """The Dependencies section's text: what is missing (describeMissing), and that PyTorch needs the PyTorch
    extension first where it is missing and the extension is not installed."""
    if not missing:
        return "All dependencies are installed."
    text = describeMissing(missing)
    if any(m.name == "torch" for m in missing) and not pytorchExtensionInstalled:
        text += ("\n\nPyTorch is installed through the PyTorch extension, which is not installed: install "
                 "'PyTorch' from View > Extensions Manager and restart Slicer first.")
    return text


def installConfirmation(missing: list[MissingDependency], plan: list[InstallStep]) -> str:
    """The question asked before the plan runs: what is missing and the numbered steps."""
    steps = "\n".join(f"  {number}. {step.description}" for number, step in enumerate(plan, 1))
    return (f"{describeMissing(missing)}\n\nThese steps will run:\n{steps}\n\n"
            "Packages are downloaded from the internet; this can take several minutes. Continue?")


def _protectedPins() -> list[str]:
    """``name==version`` for Slicer's own packages that pip can see, so no dependency upgrades them."""
    pins = []
    for name in SLICER_PACKAGES:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue  # invisible to pip: nothing it could upgrade (maskmed_core is installed --no-deps)
    return pins


def installPlan(missing: list[MissingDependency], includeOptional: bool = False) -> list[InstallStep]:
    """The steps that install ``missing``: torch, each pip package, maskmed_core, then building the op.

    Slicer's own packages (numpy, SimpleITK, vtk) are never part of a step (see describeMissing).
    includeOptional: also install OPTIONAL_REQUIREMENTS that are missing (matplotlib, ninja).
    """
    wanted = [m for m in missing if m.name not in SLICER_PACKAGES]
    if includeOptional:
        wanted += [m for m in missingDependencies(OPTIONAL_REQUIREMENTS) if m.name not in {w.name for w in wanted}]
    if not wanted:
        return []
    steps: list[InstallStep] = []
    for item in sorted(wanted, key=lambda m: (m.name != "torch", m.name == "maskmed_core")):
        requirement = f"{item.name}>={item.required}"
        if item.name == "torch":
            steps.append(InstallStep(
                StepKind.TORCH, requirement,
                "PyTorch through the PyTorch extension (CUDA build if this computer has a usable NVIDIA GPU, "
                "else the CPU build)",
            ))
        elif item.name == "maskmed_core":
            # --no-deps: its SimpleITK/numpy requirements must never pull wheels over Slicer's own; its other
            # dependencies are steps of this plan.
            steps.append(InstallStep(StepKind.PIP, requirement, f"pip install {requirement}",
                                     [requirement, "--no-deps"]))
        else:
            steps.append(InstallStep(
                StepKind.PIP, requirement, f"pip install {requirement}",
                # The pins keep Slicer's numpy/SimpleITK/vtk: pip sees them satisfied and touches nothing.
                [requirement, *_protectedPins(), "--upgrade-strategy", "only-if-needed"],
                optional=item.name in OPTIONAL_REQUIREMENTS,
            ))
    steps.append(InstallStep(
        StepKind.BUILD_OPS, "",
        "compile MaskMed's deformable-attention op (optional: the PyTorch reference is used without it)",
        maskmedCommand("build-ops"),
        optional=True,
    ))
    return steps


def detectGpu() -> tuple[str | None, str]:
    """(description of the CUDA GPU MaskMed would use, or None; a note for the device box's tooltip).

    Imports torch, only if it is installed, and only when called (the panel asks once it is shown).
    """
    if importlib.util.find_spec("torch") is None:
        return None, "PyTorch is not installed yet; the GPU is detected once it is (Dependencies section)."
    try:
        import torch
    except Exception as error:
        return None, f"PyTorch could not be imported: {error}"
    if torch.cuda.is_available():
        name = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
        return name, f"PyTorch {torch.__version__} sees {torch.cuda.device_count()} CUDA GPU(s); the first is used."
    build = " (a CPU-only build)" if torch.version.cuda is None else ""
    return None, f"PyTorch {torch.__version__}{build} found no CUDA GPU: MaskMed runs on the CPU."


def requirementName(requirement: str) -> str:
    """'monai[itk]>=1.4' -> 'monai'."""
    return re.split(r"[\s<>=!~;\[(@]", requirement.strip(), maxsplit=1)[0]


def isImported(requirement: str) -> bool:
    """Whether the package a requirement names is imported already (then only a restart picks up a new one)."""
    name = requirementName(requirement).lower().replace("-", "_")
    return any(module.split(".", 1)[0].lower() == name for module in list(sys.modules))


def torchVersionRequirement(requirement: str) -> str | None:
    """'torch>=2.1' -> '>=2.1' (the form PyTorchUtils' installTorch takes), 'torch' -> None."""
    match = re.match(r"\s*torch\s*(.*)$", requirement, re.IGNORECASE)
    rest = match.group(1).strip() if match else ""
    return rest or None
