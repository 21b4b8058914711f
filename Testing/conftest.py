"""Shared pytest fixtures: the real CT bundled with the package, and ../shared/data for what is not bundled.

``demo_data``: the demo CT and its TotalSegmentator labels that ship inside ``maskmed_core/resources/demo/``, so
the real-data tests of the Logic, the CLI and training run on a clean clone. ``shared_data``: ``../shared/data``
(the DICOM series, the MR volume, the TotalSegmentator class table): tests that need it skip without it, and when
``MASKMED_NO_SHARED_DATA=1`` (CI runs the real-data tests that way once, to prove they need nothing outside the
clone).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import maskmed_core

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEMO_DATA = Path(maskmed_core.__file__).resolve().parent / "resources" / "demo"


@dataclass(frozen=True)
class DemoData:
    """The bundled real data (see ``maskmed_core/resources/demo/README.md``)."""

    ct: Path  # native abdomen-pelvis CT, 3 mm isotropic
    labels: Path  # its TotalSegmentator v2 label map (predictions, not manual labels)
    label_mapping: Path  # TotalSegmentator v2 ids -> the 15 AMOS classes


def shared_data_hidden() -> bool:
    return os.environ.get("MASKMED_NO_SHARED_DATA", "") not in ("", "0")


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that sets torch's thread count (the benchmarks' --threads) must not change it for the tests after it:
    results compared with a child process's depend on it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_data() -> DemoData:
    data = DemoData(DEMO_DATA / "abdomen_ct_3mm.nii.gz", DEMO_DATA / "abdomen_ct_3mm_totalseg.nii.gz",
                    DEMO_DATA / "amos15_from_totalseg_v2.json")
    for path in (data.ct, data.labels, data.label_mapping):
        assert path.is_file(), f"{path} is part of the package and must be there"
    return data


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if shared_data_hidden():
        pytest.skip("MASKMED_NO_SHARED_DATA is set: ../shared/data is treated as absent")
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the real data folder {SHARED_DATA} is not here")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items) -> None:
    """Mark every test that reads the bundled real data (``-m demo_data`` selects them; .ci/run runs them once
    with ../shared hidden)."""
    for item in items:
        if "demo_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.demo_data)
