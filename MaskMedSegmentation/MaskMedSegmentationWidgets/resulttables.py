# ruff: noqa: N802, N803, N815, N999  (Slicer code style: camelCase names)
"""The Results section's two tables: one row per class (show/hide its segment) and one per object query (show/hide
the query's own mask as an extra segment). Filled from MaskMedSegmentationLib.ThresholdSession's TableRows."""

import qt
import slicer

CLASS_SHOW, CLASS_COLOUR, CLASS_NAME, CLASS_VOLUME, CLASS_CONFIDENCE = range(5)
QUERY_SHOW, QUERY_INDEX, QUERY_CLASS, QUERY_CONFIDENCE, QUERY_KEPT = range(5)


class ResultTables:
    """Keeps ``classTable`` and ``queryTable`` in step with the last result's ThresholdSession.

    ``segmentIdForClass(label)`` is the Logic's segment id of a class. The session is passed to every call (None: no
    result in the scene) because the widget owns it.
    """

    def __init__(self, classTable, queryTable, segmentIdForClass):
        self.classTable, self.queryTable = classTable, queryTable
        self.segmentIdForClass = segmentIdForClass
        self.shownQueries = set()  # indices of the queries whose own mask is shown as a segment
        self._filling = False
        for table in (classTable, queryTable):
            table.horizontalHeader().setSectionResizeMode(qt.QHeaderView.ResizeToContents)
            table.horizontalHeader().setStretchLastSection(True)

    def clear(self, session):
        """Empty both tables; hide the query masks shown from ``session``."""
        for index in list(self.shownQueries) if session is not None else []:
            session.hideQuery(index)
        self.shownQueries.clear()
        self.classTable.setRowCount(0)
        self.queryTable.setRowCount(0)

    def update(self, session, queryThreshold, classThreshold, largestComponent=False):
        """Rows for the result of ``session`` at these settings (``clear`` empties the tables)."""
        node = session.segmentationNode
        node.CreateDefaultDisplayNodes()

        def classVisible(label):
            segmentId = self.segmentIdForClass(label)
            return (node.GetSegmentation().GetSegment(segmentId) is None
                    or bool(node.GetDisplayNode().GetSegmentVisibility(segmentId)))

        self._fill(self.classTable, session.classRows(queryThreshold, classThreshold, largestComponent), classVisible,
                   {CLASS_VOLUME, CLASS_CONFIDENCE})
        self._fill(self.queryTable, session.queryRows(queryThreshold), self.shownQueries.__contains__,
                   {QUERY_INDEX, QUERY_CONFIDENCE})

    def onClassItemChanged(self, item, session):
        """A class row's check box: show or hide that class's segment."""
        if self._filling or item.column() != CLASS_SHOW or session is None:
            return
        segmentId = self.segmentIdForClass(int(item.data(qt.Qt.UserRole)))
        session.segmentationNode.GetDisplayNode().SetSegmentVisibility(segmentId, item.checkState() == qt.Qt.Checked)

    def onQueryItemChanged(self, item, session):
        """A query row's check box: add or remove the query's own mask as a segment."""
        if self._filling or item.column() != QUERY_SHOW or session is None:
            return
        index = int(item.data(qt.Qt.UserRole))
        with slicer.util.tryWithErrorDisplay(f"Could not show query {index}.", waitCursor=True):
            if item.checkState() == qt.Qt.Checked:
                session.showQuery(index, session.segmentationNode)
                self.shownQueries.add(index)
            else:
                session.hideQuery(index)
                self.shownQueries.discard(index)

    def _fill(self, table, rows, isChecked, rightAligned):
        """Rows of MaskMedSegmentationLib.TableRow: a check box holding the row's key, then its texts."""
        self._filling = True
        try:
            table.setRowCount(len(rows))
            for number, row in enumerate(rows):
                cells = [qt.QTableWidgetItem()] + ([qt.QTableWidgetItem()] if row.color else [])
                cells[0].setFlags(cells[0].flags() | qt.Qt.ItemIsUserCheckable)
                cells[0].setCheckState(qt.Qt.Checked if isChecked(row.key) else qt.Qt.Unchecked)
                cells[0].setData(qt.Qt.UserRole, row.key)
                if row.color:
                    cells[1].setData(qt.Qt.DecorationRole, qt.QColor(*row.color))
                cells += [qt.QTableWidgetItem(text) for text in row.texts]
                for column, cell in enumerate(cells):
                    if column in rightAligned:
                        cell.setTextAlignment(qt.Qt.AlignRight | qt.Qt.AlignVCenter)
                    table.setItem(number, column, cell)
        finally:
            self._filling = False
