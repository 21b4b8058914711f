"""Files that ship inside maskmed_core (``maskmed_core/resources``, listed in pyproject's package-data).

Commands read ``DEFAULT_MODEL`` from here when they run (``bundled.DEFAULT_MODEL``), so a test can point it
elsewhere.
"""

from __future__ import annotations

from pathlib import Path

RESOURCES = Path(__file__).resolve().parent / "resources"
# The model `maskmed predict`, `evaluate default`, `demo` and the Slicer panel use when none is given.
DEFAULT_MODEL = RESOURCES / "default.maskmed"
