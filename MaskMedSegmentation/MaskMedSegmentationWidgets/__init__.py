# ruff: noqa: N999  (the package is "MaskMedSegmentationWidgets": Slicer's module folders share one sys.path)
"""Qt pieces of the MaskMed panel that are larger than a few lines, used by MaskMedSegmentation.py only.

Unlike ``MaskMedSegmentationLib`` (the Logic, tested on slicer-core without Qt), this package uses qt and slicer.util
and runs only inside Slicer; the module's self-test (Testing/Python/MaskMedSegmentationSelfTest.py) drives it.
"""

from .dependencypanel import DependencyPanel
from .finetunepanel import FineTunePanel
from .lossplot import LossPlot
from .resulttables import ResultTables

__all__ = ["DependencyPanel", "FineTunePanel", "LossPlot", "ResultTables"]
