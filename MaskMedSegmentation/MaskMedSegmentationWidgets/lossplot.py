# ruff: noqa: N802, N803, N815, N999  (Slicer code style: camelCase names)
"""The fine-tuning loss curve: a plot view in the Fine-tune section showing MaskMedSegmentationLib.LossCurve."""

import slicer


class LossPlot:
    """A qMRMLPlotView inside ``frame`` (a widget with a layout), hidden until there is a loss to show.

    ``lossCurve`` is the Logic's LossCurve (the MRML table, series, chart and plot view nodes it keeps up to date).
    """

    def __init__(self, frame, lossCurve):
        self.frame, self.lossCurve = frame, lossCurve
        self.view = slicer.qMRMLPlotView()
        self.view.setMRMLScene(slicer.mrmlScene)
        self.view.setMinimumHeight(180)
        frame.layout().addWidget(self.view)
        frame.hide()
        self._shownEpochs = 0

    def update(self, losses):
        """Show ``losses`` (one per epoch); nothing to do when no epoch was added since the last call."""
        if len(losses) == self._shownEpochs and self.frame.visible:
            return
        self.lossCurve.update(losses)
        self._shownEpochs = len(losses)
        if self.lossCurve.viewNode is not None:
            self.view.setMRMLPlotViewNode(self.lossCurve.viewNode)
            self.frame.show()

    def hide(self):
        self.frame.hide()
        self._shownEpochs = 0
