"""The device names the commands accept (``--device``), declared once, and the error for one not usable here.

"auto" picks CUDA if there is a usable GPU, else Apple's MPS (inference only), else the CPU.
"""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda", "mps")
# Training runs on the CPU or CUDA only: its process groups (gloo, NCCL) and autocast know no MPS.
TRAINING_DEVICES = tuple(name for name in DEVICES if name != "mps")


class DeviceError(ValueError):
    """The device asked for is not usable on this machine (e.g. --device cuda without a GPU): a usage error whose
    message says which device to ask for instead."""
