"""Regenerate ``manifest.json``: the Slicer, CTK and SlicerPyTorch API that the MaskMed module uses, as data.

Reads git repositories (bare mirrors or checkouts) at named revisions and extracts names and signatures only:

* Slicer (``--slicer-rev``, default the tag v5.10.0): ``slicer.util`` functions and classes, the
  ``ScriptedLoadableModule*`` classes, the ``parameterNodeWrapper`` package (exports, validators, GUI connectors,
  serializers, the members its decorator adds), the Q_PROPERTYs / signals / public slots / Q_INVOKABLE methods /
  PythonQt decorators of the widget and application classes in ``WIDGET_CLASSES`` and their bases, the public
  methods and enums of ``vtkMRMLScene``, the ``vtkMRML*`` class hierarchy, and the class names of the ``slicer``
  and ``ctk`` Python namespaces.
* CTK at the commit that Slicer pins in ``SuperBuild/External_CTK.cmake`` (``--ctk-rev pinned``; the mirror's HEAD
  when the pinned commit is absent, which the manifest records).
* SlicerPyTorch (``--pytorch-rev``, default HEAD): the classes of ``PyTorchUtils/PyTorchUtils.py``.

Qt's own classes are not in these sources: ``HANDWRITTEN_QT`` below is written by hand from the Qt 5.15
documentation (and ``HANDWRITTEN_VTK`` from VTK 9's), and goes into the manifest's ``handwritten`` section.

Usage (from the repository root)::

    python3 Testing/slicer_api/generate_manifest.py
    python3 Testing/slicer_api/generate_manifest.py --slicer-repo ~/src/Slicer --ctk-repo ~/src/CTK --output /tmp/m.json
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "manifest.json"
MIRRORS = Path("/work/.mirror")
PINNED = "pinned"
UPSTREAM = {"slicer": "https://github.com/Slicer/Slicer", "ctk": "https://github.com/commontk/CTK",
            "slicerpytorch": "https://github.com/fepegar/SlicerPyTorch"}

# The C++ classes whose members are extracted in full, with every base class the sources hold. The widgets of the
# module's .ui, the classes its Python reaches (slicer.app, slicer.modules.<module>, the plot view), ctkMessageBox
# (slicer.util's message functions set their **kwargs as its properties), and the widgets the parameterNodeWrapper
# GUI connectors take, so that a .ui can bind any of them. A new widget class in the .ui goes here, then regenerate.
WIDGET_CLASSES = [
    # the module's .ui
    "qMRMLWidget", "qMRMLNodeComboBox", "qMRMLSegmentationShow3DButton", "ctkCollapsibleButton", "ctkSliderWidget",
    "ctkDirectoryButton", "ctkMenuButton",
    # the module's Python
    "qMRMLPlotView", "qSlicerApplication", "qSlicerScriptedLoadableModule", "qSlicerScriptedLoadableModuleWidget",
    "ctkMessageBox",
    # parameterNodeWrapper GUI connectors' widgets
    "ctkCheckBox", "ctkCheckablePushButton", "ctkComboBox", "ctkDoubleSlider", "ctkDoubleSpinBox", "ctkRangeWidget",
    "ctkDoubleRangeSlider", "ctkPathLineEdit", "ctkColorPickerButton", "qMRMLSliderWidget", "qMRMLSpinBox",
    "qMRMLRangeWidget",
]
# VTK-wrapped classes (every public method is callable from Python): slicer.mrmlScene.
VTK_CLASSES = ["vtkMRMLScene"]

# Where the class headers are looked for (one class per header, named like the file, as both projects do).
SLICER_HEADER_DIRS = ("Base/QTCore/", "Base/QTGUI/", "Libs/MRML/Core/", "Libs/MRML/Widgets/", "Libs/MRML/Logic/",
                      "Modules/Loadable/")
CTK_HEADER_DIRS = ("Libs/Core/", "Libs/Widgets/", "Libs/Visualization/VTK/Core/", "Libs/Visualization/VTK/Widgets/")
SLICER_NAMESPACE_PREFIXES = ("vtkMRML", "qMRML", "qSlicer", "vtkSlicer")

# ------------------------------------------------------------------------------------------------------------------
# Hand-written: Qt 5.15 (and a few VTK 9 classes), NOT extracted. Each class: bases, properties ("name" or
# "name:ro" for read-only), signals and public slots as Qt normalized signatures, the public methods PythonQt's Qt
# wrappers expose (names), static methods, enums, and the return class of the methods whose result the code uses.
# Written from the Qt 5.15 reference documentation (doc.qt.io/qt-5/<class>.html), "Properties", "Public Slots",
# "Signals", "Public Functions" and "Static Public Members" sections; only what a panel plausibly uses.
# ------------------------------------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


def _qt(bases: str = "", props: str = "", signals: str = "", slots: str = "", methods: str = "",
        static: str = "", enums: dict[str, str] | None = None, returns: dict[str, str] | None = None,
        qobject: bool = True) -> dict[str, Any]:
    properties = {}
    for item in props.split():
        name, _, flag = item.partition(":")
        properties[name] = {"writable": flag != "ro"}
    return {
        "bases": bases.split(),
        "binding": "pythonqt-qt" if qobject else "pythonqt-qt-value",
        "properties": properties,
        "signals": re.findall(r"\w+\([^)]*\)", signals),
        "slots": re.findall(r"\w+\([^)]*\)", slots),
        "methods": methods.split(),
        "static_methods": static.split(),
        "enums": {name: values.split() for name, values in (enums or {}).items()},
        "returns": returns or {},
    }


HANDWRITTEN_QT: dict[str, dict[str, Any]] = {
    # PythonQt adds connect/disconnect/className/help/delete to every wrapped QObject (PythonQt documentation).
    "QObject": _qt(
        props="objectName",
        signals="destroyed(QObject*) destroyed() objectNameChanged(QString)",
        slots="deleteLater()",
        methods="blockSignals signalsBlocked children findChild findChildren inherits installEventFilter "
                "removeEventFilter isWidgetType isWindowType metaObject parent setParent property setProperty "
                "dynamicPropertyNames setObjectName startTimer killTimer thread moveToThread event eventFilter "
                "dumpObjectInfo dumpObjectTree tr connect disconnect className help delete",
    ),
    "QWidget": _qt(
        bases="QObject",
        props="acceptDrops accessibleDescription accessibleName autoFillBackground baseSize childrenRect:ro "
              "childrenRegion:ro contextMenuPolicy cursor enabled focus:ro focusPolicy font frameGeometry:ro "
              "frameSize:ro fullScreen:ro geometry height:ro inputMethodHints isActiveWindow:ro layoutDirection "
              "locale maximized:ro maximumHeight maximumSize maximumWidth minimized:ro minimumHeight minimumSize "
              "minimumSizeHint:ro minimumWidth modal:ro mouseTracking normalGeometry:ro palette pos rect:ro size "
              "sizeHint:ro sizeIncrement sizePolicy statusTip styleSheet tabletTracking toolTip toolTipDuration "
              "updatesEnabled visible whatsThis width:ro windowFilePath windowFlags windowIcon windowIconText "
              "windowModality windowModified windowOpacity windowTitle x:ro y:ro",
        signals="customContextMenuRequested(QPoint) windowIconChanged(QIcon) windowIconTextChanged(QString) "
                "windowTitleChanged(QString)",
        slots="close() hide() lower() raise() repaint() setDisabled(bool) setEnabled(bool) setFocus() "
              "setHidden(bool) setStyleSheet(QString) setVisible(bool) setWindowModified(bool) "
              "setWindowTitle(QString) show() showFullScreen() showMaximized() showMinimized() showNormal() update()",
        methods="raise_ layout setLayout setMinimumHeight setMinimumWidth setMaximumHeight setMaximumWidth "
                "setMinimumSize setMaximumSize setFixedHeight setFixedWidth setFixedSize setToolTip setStatusTip "
                "setSizePolicy setContentsMargins contentsMargins isVisible isEnabled isHidden isVisibleTo "
                "isWindow parentWidget window resize move adjustSize setFont setCursor unsetCursor setFocusPolicy "
                "addAction addActions actions removeAction insertAction setAttribute testAttribute setWindowFlags "
                "setWindowIcon grab mapToGlobal mapFromGlobal mapTo mapFrom setAcceptDrops setAutoFillBackground "
                "setPalette setUpdatesEnabled setMouseTracking setContextMenuPolicy activateWindow clearFocus "
                "hasFocus setToolTipDuration setWhatsThis setLayoutDirection setGeometry updateGeometry "
                "focusWidget nextInFocusChain childAt setWindowOpacity setWindowModality",
        returns={"layout": "QLayout", "parentWidget": "QWidget", "window": "QWidget"},
    ),
    "QFrame": _qt(
        bases="QWidget",
        props="frameRect frameShadow frameShape frameWidth:ro lineWidth midLineWidth",
        methods="frameStyle setFrameStyle setFrameShape setFrameShadow setLineWidth setMidLineWidth",
        enums={"Shape": "NoFrame Box Panel StyledPanel HLine VLine WinPanel",
               "Shadow": "Plain Raised Sunken"},
    ),
    "QLabel": _qt(
        bases="QFrame",
        props="alignment hasSelectedText:ro indent margin openExternalLinks pixmap scaledContents selectedText:ro "
              "text textFormat textInteractionFlags wordWrap",
        signals="linkActivated(QString) linkHovered(QString)",
        slots="clear() setMovie(QMovie*) setNum(int) setNum(double) setPicture(QPicture) setPixmap(QPixmap) "
              "setText(QString)",
        methods="buddy setBuddy selectionStart setSelection setAlignment setWordWrap setTextFormat "
                "setTextInteractionFlags setIndent setMargin setOpenExternalLinks setScaledContents movie picture",
    ),
    "QAbstractButton": _qt(
        bases="QWidget",
        props="autoExclusive autoRepeat autoRepeatDelay autoRepeatInterval checkable checked down icon iconSize "
              "shortcut text",
        signals="clicked(bool) clicked() pressed() released() toggled(bool)",
        slots="animateClick(int) animateClick() click() setChecked(bool) setIconSize(QSize) toggle()",
        methods="group isChecked isCheckable isDown setCheckable setDown setText setIcon setShortcut "
                "setAutoRepeat setAutoExclusive",
    ),
    "QPushButton": _qt(
        bases="QAbstractButton",
        props="autoDefault default flat",
        slots="showMenu()",
        methods="menu setMenu isDefault setDefault isFlat setFlat setAutoDefault autoDefault",
    ),
    "QToolButton": _qt(
        bases="QAbstractButton",
        props="arrowType autoRaise popupMode toolButtonStyle",
        signals="triggered(QAction*)",
        slots="setDefaultAction(QAction*) setToolButtonStyle(Qt::ToolButtonStyle) showMenu()",
        methods="defaultAction menu setMenu setPopupMode setArrowType setAutoRaise",
    ),
    "QCheckBox": _qt(
        bases="QAbstractButton",
        props="tristate",
        signals="stateChanged(int)",
        methods="checkState setCheckState isTristate setTristate",
    ),
    "QRadioButton": _qt(bases="QAbstractButton"),
    "QComboBox": _qt(
        bases="QWidget",
        props="count:ro currentData:ro currentIndex currentText duplicatesEnabled editable frame iconSize "
              "insertPolicy maxCount maxVisibleItems minimumContentsLength modelColumn placeholderText "
              "sizeAdjustPolicy",
        signals="activated(int) activated(QString) currentIndexChanged(int) currentIndexChanged(QString) "
                "currentTextChanged(QString) editTextChanged(QString) highlighted(int) highlighted(QString) "
                "textActivated(QString) textHighlighted(QString)",
        slots="clear() clearEditText() setCurrentIndex(int) setCurrentText(QString) setEditText(QString)",
        methods="addItem addItems findData findText insertItem insertItems insertSeparator itemData itemIcon "
                "itemText lineEdit model removeItem rootModelIndex setItemData setItemIcon setItemText setLineEdit "
                "setModel setRootModelIndex setValidator setView showPopup hidePopup view validator "
                "setItemDelegate itemDelegate completer setCompleter setEditable isEditable setMaxCount "
                "setMaxVisibleItems setSizeAdjustPolicy setInsertPolicy setPlaceholderText setFrame hasFrame",
        enums={"SizeAdjustPolicy": "AdjustToContents AdjustToContentsOnFirstShow AdjustToMinimumContentsLength "
                                   "AdjustToMinimumContentsLengthWithIcon",
               "InsertPolicy": "NoInsert InsertAtTop InsertAtCurrent InsertAtBottom InsertAfterCurrent "
                               "InsertBeforeCurrent InsertAlphabetically"},
    ),
    "QAbstractSpinBox": _qt(
        bases="QWidget",
        props="accelerated acceptableInput:ro alignment buttonSymbols correctionMode frame keyboardTracking "
              "readOnly showGroupSeparator specialValueText text:ro wrapping",
        signals="editingFinished()",
        slots="clear() selectAll() stepDown() stepUp()",
        methods="stepBy interpretText setAlignment setReadOnly isReadOnly setWrapping setFrame setButtonSymbols "
                "setSpecialValueText setKeyboardTracking setAccelerated setCorrectionMode",
    ),
    "QSpinBox": _qt(
        bases="QAbstractSpinBox",
        props="cleanText:ro displayIntegerBase maximum minimum prefix singleStep stepType suffix value",
        signals="textChanged(QString) valueChanged(int) valueChanged(QString)",
        slots="setValue(int)",
        methods="setRange setMinimum setMaximum setSingleStep setPrefix setSuffix setDisplayIntegerBase "
                "setStepType",
    ),
    "QDoubleSpinBox": _qt(
        bases="QAbstractSpinBox",
        props="cleanText:ro decimals maximum minimum prefix singleStep stepType suffix value",
        signals="textChanged(QString) valueChanged(double) valueChanged(QString)",
        slots="setValue(double)",
        methods="setRange setMinimum setMaximum setSingleStep setPrefix setSuffix setDecimals setStepType",
    ),
    "QAbstractSlider": _qt(
        bases="QWidget",
        props="invertedAppearance invertedControls maximum minimum orientation pageStep singleStep sliderDown "
              "sliderPosition tracking value",
        signals="actionTriggered(int) rangeChanged(int,int) sliderMoved(int) sliderPressed() sliderReleased() "
                "valueChanged(int)",
        slots="setOrientation(Qt::Orientation) setRange(int,int) setValue(int)",
        methods="setMinimum setMaximum setSingleStep setPageStep setTracking setSliderPosition triggerAction",
    ),
    "QSlider": _qt(
        bases="QAbstractSlider",
        props="tickInterval tickPosition",
        methods="setTickInterval setTickPosition",
        enums={"TickPosition": "NoTicks TicksAbove TicksLeft TicksBelow TicksRight TicksBothSides"},
    ),
    "QLineEdit": _qt(
        bases="QWidget",
        props="acceptableInput:ro alignment clearButtonEnabled cursorMoveStyle cursorPosition displayText:ro "
              "dragEnabled echoMode frame hasSelectedText:ro inputMask maxLength modified placeholderText readOnly "
              "redoAvailable:ro selectedText:ro text undoAvailable:ro",
        signals="cursorPositionChanged(int,int) editingFinished() inputRejected() returnPressed() "
                "selectionChanged() textChanged(QString) textEdited(QString)",
        slots="clear() copy() cut() paste() redo() selectAll() setText(QString) undo()",
        methods="setValidator validator setCompleter completer setReadOnly isReadOnly setPlaceholderText "
                "setMaxLength setEchoMode selectionStart deselect insert",
    ),
    "QProgressBar": _qt(
        bases="QWidget",
        props="alignment format invertedAppearance maximum minimum orientation text:ro textDirection textVisible "
              "value",
        signals="valueChanged(int)",
        slots="reset() setMaximum(int) setMinimum(int) setOrientation(Qt::Orientation) setRange(int,int) "
              "setValue(int)",
        methods="setFormat resetFormat setAlignment setTextVisible isTextVisible setInvertedAppearance "
                "setTextDirection",
    ),
    "QAbstractScrollArea": _qt(
        bases="QFrame",
        props="horizontalScrollBarPolicy sizeAdjustPolicy verticalScrollBarPolicy",
        methods="horizontalScrollBar verticalScrollBar viewport setViewport setHorizontalScrollBarPolicy "
                "setVerticalScrollBarPolicy setSizeAdjustPolicy maximumViewportSize addScrollBarWidget "
                "cornerWidget setCornerWidget",
    ),
    "QAbstractItemView": _qt(
        bases="QAbstractScrollArea",
        props="alternatingRowColors autoScroll autoScrollMargin defaultDropAction dragDropMode "
              "dragDropOverwriteMode dragEnabled editTriggers horizontalScrollMode iconSize selectionBehavior "
              "selectionMode showDropIndicator tabKeyNavigation textElideMode verticalScrollMode",
        signals="activated(QModelIndex) clicked(QModelIndex) doubleClicked(QModelIndex) entered(QModelIndex) "
                "iconSizeChanged(QSize) pressed(QModelIndex) viewportEntered()",
        slots="clearSelection() edit(QModelIndex) reset() scrollToBottom() scrollToTop() selectAll() "
              "setCurrentIndex(QModelIndex) setRootIndex(QModelIndex) update(QModelIndex)",
        methods="model setModel selectionModel setSelectionModel currentIndex rootIndex indexAt scrollTo "
                "setItemDelegate itemDelegate setIndexWidget indexWidget setEditTriggers setSelectionMode "
                "setSelectionBehavior setAlternatingRowColors visualRect openPersistentEditor "
                "closePersistentEditor sizeHintForRow sizeHintForColumn",
        enums={"EditTrigger": "NoEditTriggers CurrentChanged DoubleClicked SelectedClicked EditKeyPressed "
                              "AnyKeyPressed AllEditTriggers",
               "SelectionMode": "NoSelection SingleSelection MultiSelection ExtendedSelection ContiguousSelection",
               "SelectionBehavior": "SelectItems SelectRows SelectColumns",
               "ScrollHint": "EnsureVisible PositionAtTop PositionAtBottom PositionAtCenter"},
    ),
    "QTableView": _qt(
        bases="QAbstractItemView",
        props="cornerButtonEnabled gridStyle showGrid sortingEnabled wordWrap",
        slots="hideColumn(int) hideRow(int) resizeColumnToContents(int) resizeColumnsToContents() "
              "resizeRowToContents(int) resizeRowsToContents() selectColumn(int) selectRow(int) setShowGrid(bool) "
              "showColumn(int) showRow(int) sortByColumn(int,Qt::SortOrder)",
        methods="horizontalHeader verticalHeader setHorizontalHeader setVerticalHeader columnWidth rowHeight "
                "setColumnWidth setRowHeight setSpan clearSpans isRowHidden isColumnHidden setRowHidden "
                "setColumnHidden setSortingEnabled setWordWrap setGridStyle rowAt columnAt",
        returns={"horizontalHeader": "QHeaderView", "verticalHeader": "QHeaderView"},
    ),
    "QTableWidget": _qt(
        bases="QTableView",
        props="columnCount rowCount",
        signals="cellActivated(int,int) cellChanged(int,int) cellClicked(int,int) cellDoubleClicked(int,int) "
                "cellEntered(int,int) cellPressed(int,int) currentCellChanged(int,int,int,int) "
                "currentItemChanged(QTableWidgetItem*,QTableWidgetItem*) itemActivated(QTableWidgetItem*) "
                "itemChanged(QTableWidgetItem*) itemClicked(QTableWidgetItem*) itemDoubleClicked(QTableWidgetItem*) "
                "itemEntered(QTableWidgetItem*) itemPressed(QTableWidgetItem*) itemSelectionChanged()",
        slots="clear() clearContents() insertColumn(int) insertRow(int) removeColumn(int) removeRow(int) "
              "scrollToItem(const QTableWidgetItem*,QAbstractItemView::ScrollHint) "
              "scrollToItem(const QTableWidgetItem*)",
        methods="cellWidget setCellWidget removeCellWidget column row currentColumn currentRow currentItem "
                "setCurrentCell setCurrentItem item setItem takeItem itemAt findItems horizontalHeaderItem "
                "setHorizontalHeaderItem setHorizontalHeaderLabels setVerticalHeaderLabels verticalHeaderItem "
                "setVerticalHeaderItem selectedItems selectedRanges setRowCount setColumnCount sortItems editItem "
                "openPersistentEditor closePersistentEditor visualItemRect setItemPrototype itemPrototype",
        returns={"item": "QTableWidgetItem", "currentItem": "QTableWidgetItem", "itemAt": "QTableWidgetItem"},
    ),
    "QHeaderView": _qt(
        bases="QAbstractItemView",
        props="cascadingSectionResizes defaultAlignment defaultSectionSize firstSectionMovable highlightSections "
              "maximumSectionSize minimumSectionSize showSortIndicator stretchLastSection",
        signals="geometriesChanged() sectionClicked(int) sectionCountChanged(int,int) sectionDoubleClicked(int) "
                "sectionEntered(int) sectionHandleDoubleClicked(int) sectionMoved(int,int,int) sectionPressed(int) "
                "sectionResized(int,int,int) sortIndicatorChanged(int,Qt::SortOrder)",
        slots="headerDataChanged(Qt::Orientation,int,int) setOffset(int) setOffsetToLastSection() "
              "setOffsetToSectionPosition(int)",
        methods="setSectionResizeMode sectionResizeMode setStretchLastSection resizeSection resizeSections "
                "sectionSize count hideSection showSection setSectionHidden isSectionHidden setDefaultSectionSize "
                "setMinimumSectionSize setMaximumSectionSize setSortIndicator sortIndicatorSection "
                "sortIndicatorOrder setSortIndicatorShown isSortIndicatorShown setSectionsClickable "
                "setSectionsMovable setHighlightSections length logicalIndex visualIndex orientation "
                "setDefaultAlignment setCascadingSectionResizes",
        enums={"ResizeMode": "Interactive Stretch Fixed ResizeToContents Custom"},
    ),
    "QTableWidgetItem": _qt(
        qobject=False,
        methods="background checkState clone column data flags font foreground icon isSelected read row "
                "setBackground setCheckState setData setFlags setFont setForeground setIcon setSelected setSizeHint "
                "setStatusTip setText setTextAlignment setToolTip setWhatsThis sizeHint statusTip tableWidget text "
                "textAlignment toolTip type whatsThis write",
        enums={"ItemType": "Type UserType"},
    ),
    "QColor": _qt(
        qobject=False,
        methods="name red green blue alpha redF greenF blueF alphaF setRed setGreen setBlue setAlpha setRgb "
                "setRgbF rgb rgba getRgb getRgbF isValid lighter darker hue saturation value setHsv toHsv toRgb "
                "setNamedColor",
        static="fromRgb fromRgbF fromHsv fromHsvF colorNames isValidColor",
    ),
    # PythonQt hides QTimer's singleShot property (PythonQtClassInfo::lookForPropertyAndCache): use setSingleShot.
    "QTimer": _qt(
        bases="QObject",
        props="active:ro interval remainingTime:ro timerType",
        signals="timeout()",
        slots="start(int) start() stop()",
        methods="setInterval interval isActive isSingleShot setSingleShot timerId setTimerType timerType "
                "remainingTime",
        static="singleShot",
    ),
    "QSettings": _qt(
        bases="QObject",
        methods="allKeys applicationName beginGroup beginReadArray beginWriteArray childGroups childKeys clear "
                "contains endArray endGroup fileName format group isWritable organizationName remove scope "
                "setArrayIndex setValue status sync value setFallbacksEnabled fallbacksEnabled",
        static="defaultFormat setDefaultFormat setPath",
    ),
    "QDialog": _qt(
        bases="QWidget",
        props="modal sizeGripEnabled",
        signals="accepted() finished(int) rejected()",
        slots="accept() done(int) exec() open() reject()",
        methods="exec_ result setResult setModal isSizeGripEnabled setSizeGripEnabled",
    ),
    "QFileDialog": _qt(
        bases="QDialog",
        props="acceptMode confirmOverwrite defaultSuffix fileMode nameFilterDetailsVisible options readOnly "
              "resolveSymlinks supportedSchemes viewMode",
        signals="currentChanged(QString) currentUrlChanged(QUrl) directoryEntered(QString) "
                "directoryUrlEntered(QUrl) fileSelected(QString) filesSelected(QStringList) filterSelected(QString) "
                "urlSelected(QUrl) urlsSelected(QList<QUrl>)",
        methods="selectFile selectedFiles setNameFilter setNameFilters nameFilters setDirectory directory "
                "setFileMode setAcceptMode setOption testOption setOptions selectNameFilter selectedNameFilter "
                "setDefaultSuffix setViewMode",
        static="getOpenFileName getOpenFileNames getSaveFileName getExistingDirectory getOpenFileUrl "
               "getOpenFileUrls getSaveFileUrl getExistingDirectoryUrl",
        enums={"FileMode": "AnyFile ExistingFile Directory ExistingFiles",
               "AcceptMode": "AcceptOpen AcceptSave",
               "Option": "ShowDirsOnly DontResolveSymlinks DontConfirmOverwrite DontUseNativeDialog ReadOnly "
                         "HideNameFilterDetails DontUseCustomDirectoryIcons"},
    ),
    "QMessageBox": _qt(
        bases="QDialog",
        props="detailedText icon iconPixmap informativeText standardButtons text textFormat textInteractionFlags",
        signals="buttonClicked(QAbstractButton*)",
        methods="addButton button buttonRole buttons clickedButton defaultButton escapeButton setDefaultButton "
                "setEscapeButton setCheckBox checkBox removeButton setText setInformativeText setDetailedText "
                "setIcon setStandardButtons standardButton",
        static="about aboutQt critical information question warning",
        enums={"StandardButton": "NoButton Ok Save SaveAll Open Yes YesToAll No NoToAll Abort Retry Ignore Close "
                                 "Cancel Discard Help Apply Reset RestoreDefaults",
               "Icon": "NoIcon Information Warning Critical Question",
               "ButtonRole": "InvalidRole AcceptRole RejectRole DestructiveRole ActionRole HelpRole YesRole NoRole "
                             "ApplyRole ResetRole"},
    ),
    "QLayout": _qt(
        bases="QObject",
        props="sizeConstraint spacing",
        methods="addWidget addItem removeWidget removeItem count itemAt takeAt indexOf setContentsMargins "
                "contentsMargins setSpacing setSizeConstraint setAlignment setEnabled isEnabled parentWidget "
                "activate update setMenuBar menuBar replaceWidget",
    ),
    "QBoxLayout": _qt(
        bases="QLayout",
        methods="addLayout addSpacing addStretch addStrut addSpacerItem insertWidget insertLayout insertSpacing "
                "insertStretch insertItem setStretch stretch setStretchFactor direction setDirection",
    ),
    "QVBoxLayout": _qt(bases="QBoxLayout"),
    "QHBoxLayout": _qt(bases="QBoxLayout"),
    "QFormLayout": _qt(
        bases="QLayout",
        props="fieldGrowthPolicy formAlignment horizontalSpacing labelAlignment rowWrapPolicy verticalSpacing",
        methods="addRow insertRow removeRow takeRow rowCount setWidget setLayout setItem labelForField "
                "getItemPosition getWidgetPosition setRowVisible",
    ),
    "QGridLayout": _qt(
        bases="QLayout",
        props="horizontalSpacing verticalSpacing",
        methods="addLayout rowCount columnCount setRowStretch setColumnStretch setRowMinimumHeight "
                "setColumnMinimumWidth itemAtPosition",
    ),
    "QCoreApplication": _qt(
        bases="QObject",
        props="applicationName applicationVersion organizationDomain organizationName quitLockEnabled",
        signals="aboutToQuit() applicationNameChanged() applicationVersionChanged() organizationDomainChanged() "
                "organizationNameChanged()",
        slots="quit()",
        static="processEvents instance applicationDirPath applicationFilePath applicationPid arguments exit "
               "postEvent sendEvent sendPostedEvents setAttribute testAttribute libraryPaths addLibraryPath "
               "installTranslator removeTranslator translate",
    ),
    "QGuiApplication": _qt(
        bases="QCoreApplication",
        props="applicationDisplayName desktopFileName layoutDirection platformName:ro primaryScreen:ro "
              "quitOnLastWindowClosed windowIcon",
        static="clipboard focusWindow font setFont palette setPalette overrideCursor setOverrideCursor "
               "restoreOverrideCursor changeOverrideCursor keyboardModifiers mouseButtons screens topLevelWindows",
    ),
    "QApplication": _qt(
        bases="QGuiApplication",
        props="autoSipEnabled cursorFlashTime doubleClickInterval globalStrut keyboardInputInterval "
              "startDragDistance startDragTime styleSheet wheelScrollLines",
        slots="aboutQt() closeAllWindows() setAutoSipEnabled(bool) setStyleSheet(QString)",
        static="activeWindow allWidgets focusWidget topLevelWidgets widgetAt style setStyle beep alert "
               "activeModalWidget activePopupWidget desktop",
    ),
    "QOpenGLWidget": _qt(
        bases="QWidget",
        signals="aboutToCompose() aboutToResize() frameSwapped() resized()",
        methods="makeCurrent doneCurrent context isValid grabFramebuffer setFormat format setUpdateBehavior "
                "updateBehavior defaultFramebufferObject",
    ),
    # Qt's namespace, as qt.Qt in Python: the enum values a panel uses.
    "Qt": _qt(
        qobject=False,
        enums={
            "ItemDataRole": "DisplayRole DecorationRole EditRole ToolTipRole StatusTipRole WhatsThisRole "
                            "SizeHintRole FontRole TextAlignmentRole BackgroundRole ForegroundRole CheckStateRole "
                            "InitialSortOrderRole AccessibleTextRole AccessibleDescriptionRole UserRole",
            "CheckState": "Unchecked PartiallyChecked Checked",
            "ItemFlag": "NoItemFlags ItemIsSelectable ItemIsEditable ItemIsDragEnabled ItemIsDropEnabled "
                        "ItemIsUserCheckable ItemIsEnabled ItemIsAutoTristate ItemIsTristate ItemNeverHasChildren "
                        "ItemIsUserTristate",
            "AlignmentFlag": "AlignLeft AlignRight AlignHCenter AlignJustify AlignAbsolute AlignTop AlignBottom "
                             "AlignVCenter AlignBaseline AlignCenter AlignLeading AlignTrailing",
            "Orientation": "Horizontal Vertical",
            "TextInteractionFlag": "NoTextInteraction TextSelectableByMouse TextSelectableByKeyboard "
                                   "LinksAccessibleByMouse LinksAccessibleByKeyboard TextEditable "
                                   "TextEditorInteraction TextBrowserInteraction",
            "SortOrder": "AscendingOrder DescendingOrder",
            "CursorShape": "ArrowCursor WaitCursor BusyCursor PointingHandCursor",
            "TextFormat": "PlainText RichText AutoText MarkdownText",
            "ToolButtonStyle": "ToolButtonIconOnly ToolButtonTextOnly ToolButtonTextBesideIcon "
                               "ToolButtonTextUnderIcon ToolButtonFollowStyle",
            "ScrollBarPolicy": "ScrollBarAsNeeded ScrollBarAlwaysOff ScrollBarAlwaysOn",
            "TextElideMode": "ElideLeft ElideRight ElideMiddle ElideNone",
        },
    ),
    # Not Qt classes but Qt Designer pseudo-properties: what uic accepts on <layout> and <spacer> elements and as
    # <attribute> of item views (doc.qt.io/qt-5/designer-ui-file-format.html and uic's sources for Qt 5.15).
    "designer:layout": _qt(
        qobject=False,
        props="margin leftMargin topMargin rightMargin bottomMargin spacing horizontalSpacing verticalSpacing "
              "sizeConstraint stretch layoutStretch layoutRowStretch layoutColumnStretch layoutRowMinimumHeight "
              "layoutColumnMinimumWidth fieldGrowthPolicy rowWrapPolicy labelAlignment formAlignment",
    ),
    "designer:spacer": _qt(qobject=False, props="orientation sizeHint sizeType"),
    "designer:itemview_attributes": _qt(
        qobject=False,
        props="horizontalHeaderVisible horizontalHeaderCascadingSectionResizes horizontalHeaderDefaultSectionSize "
              "horizontalHeaderHighlightSections horizontalHeaderMinimumSectionSize horizontalHeaderShowSortIndicator "
              "horizontalHeaderStretchLastSection verticalHeaderVisible verticalHeaderCascadingSectionResizes "
              "verticalHeaderDefaultSectionSize verticalHeaderHighlightSections verticalHeaderMinimumSectionSize "
              "verticalHeaderShowSortIndicator verticalHeaderStretchLastSection",
    ),
    "designer:item": _qt(qobject=False, props="text toolTip statusTip whatsThis icon font textAlignment background "
                                               "foreground checkState flags"),
}

# Written from the VTK 9 documentation (vtk.org/doc/nightly/html): the VTK classes between Slicer's and Qt's.
HANDWRITTEN_VTK: dict[str, dict[str, Any]] = {
    "vtkObject": {
        "bases": [], "binding": "vtk",
        "methods": ["AddObserver", "RemoveObserver", "RemoveObservers", "RemoveAllObservers", "HasObserver",
                    "InvokeEvent", "Modified", "GetMTime", "GetClassName", "IsA", "IsTypeOf", "SafeDownCast",
                    "DebugOn", "DebugOff", "GetDebug", "SetDebug", "GetCommand", "Register", "UnRegister",
                    "GetReferenceCount", "NewInstance", "Print"],
        "enums": {}, "properties": {}, "signals": [], "slots": [], "static_methods": [], "returns": {},
    },
    "QVTKOpenGLNativeWidget": {
        "bases": ["QOpenGLWidget"], "binding": "pythonqt-qt",
        "methods": ["renderWindow", "setRenderWindow", "interactor", "setEnableHiDPI", "enableHiDPI",
                    "setUnscaledDPI", "unscaledDPI", "setDefaultCursor", "defaultCursor"],
        "static_methods": ["defaultFormat"],
        "enums": {}, "properties": {}, "signals": [], "slots": [], "returns": {},
    },
}

# unittest.TestCase (the base of ScriptedLoadableModuleTest), from the Python 3.12 documentation (Slicer 5.10's
# Python): the deprecated assert aliases that 3.12 removed are left out.
UNITTEST_TESTCASE = _words(
    "setUp tearDown setUpClass tearDownClass run skipTest subTest debug fail failureException longMessage maxDiff "
    "countTestCases defaultTestResult id shortDescription addCleanup enterContext doCleanups addClassCleanup "
    "enterClassContext doClassCleanups addTypeEqualityFunc assertEqual assertNotEqual assertTrue assertFalse "
    "assertIs assertIsNot assertIsNone assertIsNotNone assertIn assertNotIn assertIsInstance assertNotIsInstance "
    "assertRaises assertRaisesRegex assertWarns assertWarnsRegex assertLogs assertNoLogs assertAlmostEqual "
    "assertNotAlmostEqual assertGreater assertGreaterEqual assertLess assertLessEqual assertRegex assertNotRegex "
    "assertCountEqual assertMultiLineEqual assertSequenceEqual assertListEqual assertTupleEqual assertSetEqual "
    "assertDictEqual"
)

# Which C++ object a ScriptedLoadableModule* attribute holds. Written from Slicer's sources (not extracted: the
# Python assigns them from C++ calls): qSlicerScriptedLoadableModule.cxx and qSlicerScriptedLoadableModuleWidget.cxx
# pass themselves as ``parent``; ScriptedLoadableModuleWidget sets ``self.layout = self.parent.layout()``.
PYTHON_ATTRIBUTE_TYPES = {
    "slicer.ScriptedLoadableModule.ScriptedLoadableModule": {"parent": "qSlicerScriptedLoadableModule"},
    "slicer.ScriptedLoadableModule.ScriptedLoadableModuleWidget": {
        "parent": "qSlicerScriptedLoadableModuleWidget", "layout": "QLayout"},
}


# ------------------------------------------------------------------------------------------------------------------
# Reading the repositories
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class GitSource:
    """One repository at one revision, read through git (bare mirrors included)."""

    name: str
    repo: Path
    rev: str
    commit: str = ""
    _files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.commit = self._git("rev-parse", "--verify", f"{self.rev}^{{commit}}").strip()
        self._files = self._git("ls-tree", "-r", "--name-only", self.commit).splitlines()

    def _git(self, *args: str) -> str:
        result = subprocess.run(["git", "-C", str(self.repo), *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} in {self.repo}: {result.stderr.strip()}")
        return result.stdout

    def has(self, path: str) -> bool:
        return path in set(self._files)

    def files(self) -> list[str]:
        return self._files

    def read(self, path: str) -> str:
        return self._git("show", f"{self.commit}:{path}")

    def read_many(self, paths: list[str]) -> dict[str, str]:
        """Many files in one ``git cat-file --batch``."""
        if not paths:
            return {}
        request = "".join(f"{self.commit}:{path}\n" for path in paths).encode()
        result = subprocess.run(["git", "-C", str(self.repo), "cat-file", "--batch"], input=request,
                                capture_output=True, check=True)
        out, texts, position = result.stdout, {}, 0
        for path in paths:
            end = out.index(b"\n", position)
            header = out[position:end].split()
            position = end + 1
            if len(header) < 3 or header[1] == b"missing":
                continue
            size = int(header[2])
            texts[path] = out[position:position + size].decode("utf-8", errors="replace")
            position += size + 1
        return texts

    def describe(self) -> dict[str, str]:
        date = self._git("show", "-s", "--format=%cI", self.commit).strip()
        return {"upstream": UPSTREAM.get(self.name, ""), "read_from": str(self.repo), "revision": self.rev,
                "commit": self.commit, "commit_date": date}


def pinned_ctk_commit(slicer: GitSource) -> str:
    """The CTK commit of Slicer's superbuild (``Slicer_CTK_GIT_TAG`` in SuperBuild/External_CTK.cmake)."""
    text = slicer.read("SuperBuild/External_CTK.cmake")
    match = re.search(r"Slicer_\$\{proj\}_GIT_TAG\s*\"([0-9a-fA-F]{7,40}|[^\"]+)\"", text)
    if match is None:
        raise RuntimeError("no Slicer_${proj}_GIT_TAG in SuperBuild/External_CTK.cmake")
    return match.group(1)


# ------------------------------------------------------------------------------------------------------------------
# C++ headers: classes, Q_PROPERTYs, signals, slots, Q_INVOKABLEs, enums, public methods
# ------------------------------------------------------------------------------------------------------------------

_BUILTIN_TYPE_WORDS = {"int", "char", "double", "float", "bool", "long", "short", "unsigned", "signed", "void",
                       "const", "volatile", "struct", "class", "typename", "enum"}


def strip_comments_and_directives(text: str) -> str:
    """Remove // and /* */ comments (outside string literals) and preprocessor lines (all branches are kept)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "/" and text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif c == "/" and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            out.append(" ")
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        else:
            out.append(c)
            i += 1
    lines, skipping = [], False
    for line in "".join(out).splitlines():
        if skipping or line.lstrip().startswith("#"):
            skipping = line.rstrip().endswith("\\")
            lines.append("")
            continue
        lines.append(line)
    return "\n".join(lines)


def _matching(text: str, start: int, open_char: str, close_char: str) -> int:
    """Index just past the bracket that closes the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_char:
            depth += 1
        elif text[i] == close_char:
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def _split_top(text: str, separator: str = ",") -> list[str]:
    """Split on ``separator`` outside (), <>, {} and []."""
    parts, depth, current = [], 0, []
    for c in text:
        if c in "(<{[":
            depth += 1
        elif c in ")>}]":
            depth -= 1
        if c == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def normalize_type(text: str) -> str:
    """Qt's normalized form of a parameter type: no names, ``const T&`` as ``T``, no spaces but between words."""
    text = re.sub(r"\s+", " ", text.strip())
    const_ref = re.fullmatch(r"const (.+?) ?&", text)
    if const_ref:
        text = const_ref.group(1)
    text = re.sub(r" ?([*&<>,]) ?", r"\1", text)
    text = text.replace(">>", "> >") if text.count("<") > 1 else text
    return {"unsigned int": "uint", "unsigned char": "uchar", "unsigned long": "ulong",
            "unsigned short": "ushort"}.get(text, text)


def _parameter_type(parameter: str) -> tuple[str, bool]:
    """(normalized type, has default) of one C++ parameter declaration."""
    declaration, has_default = parameter, False
    depth = 0
    for i, c in enumerate(parameter):
        if c in "(<{[":
            depth += 1
        elif c in ")>}]":
            depth -= 1
        elif c == "=" and depth == 0:
            declaration, has_default = parameter[:i], True
            break
    declaration = declaration.strip()
    match = re.fullmatch(r"(.*?[\w>*&\s])\s*\b([A-Za-z_]\w*)\s*(\[\s*\d*\s*\])?", declaration)
    if match and match.group(1).strip() and match.group(2) not in _BUILTIN_TYPE_WORDS:
        prefix = match.group(1).strip()
        if prefix not in ("const", "unsigned", "signed") and not prefix.endswith("::"):
            declaration = prefix + ("*" if match.group(3) else "")
    return normalize_type(declaration), has_default


def signatures(name: str, parameters: str) -> list[str]:
    """Normalized signatures, with moc's clones for trailing default arguments (``f(int,bool=x)``: 2 signatures)."""
    types = [_parameter_type(p) for p in _split_top(parameters)]
    if types == [("void", False)]:
        types = []
    result = [f"{name}({','.join(t for t, _ in types)})"]
    while types and types[-1][1]:
        types = types[:-1]
        result.append(f"{name}({','.join(t for t, _ in types)})")
    return result


@dataclass
class CppClass:
    name: str
    bases: list[str]
    header: str
    properties: dict[str, dict[str, Any]] = field(default_factory=dict)
    signals: dict[str, str] = field(default_factory=dict)
    slots: dict[str, str] = field(default_factory=dict)
    invokables: dict[str, str] = field(default_factory=dict)
    public_methods: dict[str, str] = field(default_factory=dict)
    static_methods: list[str] = field(default_factory=list)
    enums: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self, source: str, binding: str) -> dict[str, Any]:
        data: dict[str, Any] = {"source": source, "header": self.header, "binding": binding, "bases": self.bases,
                                "properties": self.properties, "signals": self.signals, "slots": self.slots,
                                "invokables": self.invokables, "enums": self.enums}
        if binding == "vtk":
            data["methods"] = sorted({sig.split("(")[0] for sig in self.public_methods})
            data["static_methods"] = sorted(set(self.static_methods))
        else:
            # For messages only: PythonQt does not expose these (CTK and Slicer wrap constructors only).
            data["cpp_only_methods"] = sorted({sig.split("(")[0] for sig in self.public_methods})
        return data


_CLASS_RE = re.compile(r"\b(class|struct)\s+(?:[A-Z][A-Z0-9_]*\s+)*([A-Za-z_]\w*)\s*(?:final\s*)?(:[^;{]*)?\{")
_ACCESS_RE = re.compile(r"(public|protected|private)\s*(slots|Q_SLOTS)?\s*:(?!:)|(signals|Q_SIGNALS)\s*:(?!:)")
_MACRO_RE = re.compile(r"([A-Z][A-Z0-9_]+|vtk\w*Macro)\s*\(")
_OBJECT_MACRO_RE = re.compile(r"(Q_OBJECT|Q_GADGET|QVTK_OBJECT)\b")
_VTK_MACRO_METHODS = {
    "vtkGetMacro": ["Get"], "vtkSetMacro": ["Set"], "vtkGetStringMacro": ["Get"], "vtkSetStringMacro": ["Set"],
    "vtkGetObjectMacro": ["Get"], "vtkSetObjectMacro": ["Set"], "vtkBooleanMacro": ["On", "Off"],
    "vtkSetClampMacro": ["Set"], "vtkGetEnumMacro": ["Get"], "vtkSetEnumMacro": ["Set"],
    "vtkGetVector3Macro": ["Get"], "vtkSetVector3Macro": ["Set"], "vtkGetVector2Macro": ["Get"],
    "vtkSetVector2Macro": ["Set"], "vtkGetSmartPointerMacro": ["Get"], "vtkSetSmartPointerMacro": ["Set"],
}


def parse_header(text: str, header: str) -> dict[str, CppClass]:
    """Every class defined in a header, with the members Python can reach."""
    code = strip_comments_and_directives(text)
    classes: dict[str, CppClass] = {}
    for match in _CLASS_RE.finditer(code):
        name = match.group(2)
        if name in classes:  # the same class under another #if branch: the first one is Slicer's configuration
            continue
        bases = []
        for base in _split_top((match.group(3) or ":")[1:]):
            words = base.replace("virtual", " ").split()
            if words and words[0] == "public":
                bases.append(words[-1])
        body_start = match.end() - 1
        body = code[body_start + 1:_matching(code, body_start, "{", "}") - 1]
        cls = CppClass(name, bases, header)
        _parse_body(body, cls, "private" if match.group(1) == "class" else "public")
        classes[name] = cls
    return classes


def _parse_body(body: str, cls: CppClass, access: str) -> None:
    i, n, section = 0, len(body), "plain"
    while i < n:
        while i < n and body[i] in " \t\r\n;":
            i += 1
        if i >= n:
            break
        access_match = _ACCESS_RE.match(body, i)
        if access_match:
            if access_match.group(3):
                access, section = "public", "signals"
            else:
                access, section = access_match.group(1), "slots" if access_match.group(2) else "plain"
            i = access_match.end()
            continue
        macro = _MACRO_RE.match(body, i)
        if macro and not body.startswith("Q_INVOKABLE", i):
            end = _matching(body, macro.end() - 1, "(", ")")
            _macro(macro.group(1), body[macro.end():end - 1], cls, access)
            i = end
            continue
        keyword = _OBJECT_MACRO_RE.match(body, i)
        if keyword:
            i = keyword.end()
            continue
        # One declaration: up to ';' at depth 0, or a {...} block (inline body, enum, nested class).
        j, depth, statement_end, block = i, 0, n, ""
        while j < n:
            c = body[j]
            if c in "(<[":
                depth += 1
            elif c in ")>]":
                depth = max(0, depth - 1)
            elif c == ";" and depth == 0:
                statement_end = j + 1
                break
            elif c == "{" and depth == 0:
                close = _matching(body, j, "{", "}")
                block = body[j + 1:close - 1]
                statement_end = close
                break
            j += 1
        declaration = body[i:j].strip()
        i = statement_end
        if access != "public":
            continue
        _declaration(declaration, block, cls, section)


def _macro(name: str, arguments: str, cls: CppClass, access: str) -> None:
    if name == "Q_PROPERTY":
        match = re.match(r"\s*(.+?)\s+(\w+)\s+(READ|MEMBER|WRITE)\b(.*)$", arguments, re.S)
        if match:
            rest = " " + match.group(3) + match.group(4)
            cls.properties[match.group(2)] = {"type": normalize_type(match.group(1)),
                                              "writable": " WRITE " in rest or " MEMBER " in rest}
    elif name in _VTK_MACRO_METHODS and access == "public":
        first = _split_top(arguments)[0] if _split_top(arguments) else ""
        for affix in _VTK_MACRO_METHODS[name]:
            method = f"{affix}{first}" if affix in ("Get", "Set") else f"{first}{affix}"
            cls.public_methods[f"{method}(...)"] = ""
    elif name == "vtkTypeMacro" and access == "public":
        for method in ("SafeDownCast", "IsA", "GetClassName", "NewInstance", "IsTypeOf"):
            cls.public_methods[f"{method}(...)"] = ""


def _declaration(declaration: str, block: str, cls: CppClass, section: str) -> None:
    words = declaration.split()
    if not words or words[0] in ("friend", "typedef", "using", "template", "Q_DECLARE_PRIVATE"):
        return
    if words[0] == "enum":
        header = declaration.removeprefix("enum").replace("class", " ").strip()
        enum_name = header.split(":")[0].strip() or f"anonymous{len(cls.enums)}"
        values = [re.split(r"[\s=]", item.strip())[0] for item in _split_top(block)]
        cls.enums[enum_name] = [v for v in values if re.fullmatch(r"[A-Za-z_]\w*", v)]
        return
    if words[0] in ("class", "struct", "union") or "(" not in declaration:
        return
    invokable = "Q_INVOKABLE" in words
    static = "static" in words
    text = re.sub(r"\b(Q_INVOKABLE|Q_SLOT|Q_SIGNAL|virtual|static|explicit|inline|constexpr)\b", " ", declaration)
    open_paren = _first_call_paren(text)
    if open_paren < 0:
        return
    head = text[:open_paren].rstrip()
    name_match = re.search(r"(~?[A-Za-z_]\w*|operator\s*\S+)$", head)
    if name_match is None:
        return
    name = name_match.group(1)
    if name.startswith("~") or name.startswith("operator") or name == cls.name:
        return
    close = _matching(text, open_paren, "(", ")")
    return_type = normalize_type(head[:name_match.start()]) or "void"
    for signature in signatures(name, text[open_paren + 1:close - 1]):
        if section == "signals":
            cls.signals[signature] = return_type
        elif section == "slots":
            cls.slots[signature] = return_type
        elif invokable:
            cls.invokables[signature] = return_type
        else:
            cls.public_methods[signature] = return_type
    if static:
        cls.static_methods.append(name)


def _first_call_paren(text: str) -> int:
    depth = 0
    for i, c in enumerate(text):
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "(" and depth == 0:
            return i
    return -1


def parse_decorators(text: str, header: str) -> dict[str, dict[str, dict[str, str]]]:
    """PythonQt decorators (``*PythonQtDecorators.h``): per class, the instance methods (a slot whose first
    parameter is ``Class*``) and static methods (``static_Class_name``) they add. Constructors are left out."""
    added: dict[str, dict[str, dict[str, str]]] = {}
    for cls in parse_header(text, header).values():
        for signature, return_type in cls.slots.items():
            name, parameters = signature[:-1].split("(", 1)
            if name.startswith(("new_", "delete_")):
                continue
            static = re.fullmatch(r"static_([A-Za-z0-9]+)_(\w+)", name)
            if static:
                entry = added.setdefault(static.group(1), {"decorators": {}, "static_decorators": {}})
                entry["static_decorators"][f"{static.group(2)}({parameters})"] = return_type
                continue
            arguments = _split_top(parameters)
            if arguments and arguments[0].endswith("*"):
                target = arguments[0][:-1].removeprefix("const ")
                entry = added.setdefault(target, {"decorators": {}, "static_decorators": {}})
                entry["decorators"][f"{name}({','.join(arguments[1:])})"] = return_type
    return added


# ------------------------------------------------------------------------------------------------------------------
# Python: functions, classes, parameterNodeWrapper
# ------------------------------------------------------------------------------------------------------------------


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return _dotted(node.func) + "()"
    return type(node).__name__


def function_signature(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda,
                       drop_first: bool = False) -> dict[str, Any]:
    """Parameter names, kinds and whether each has a default; *args/**kwargs; where **kwargs goes."""
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    defaults = [False] * (len(positional) - len(args.defaults)) + [True] * len(args.defaults)
    parameters = []
    for index, (arg, has_default) in enumerate(zip(positional, defaults, strict=True)):
        kind = "positional_only" if index < len(args.posonlyargs) else "positional_or_keyword"
        parameters.append({"name": arg.arg, "kind": kind, "default": has_default})
    for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        parameters.append({"name": arg.arg, "kind": "keyword_only", "default": default is not None})
    if drop_first and parameters:
        parameters = parameters[1:]
    data: dict[str, Any] = {
        "parameters": parameters,
        "vararg": args.vararg.arg if args.vararg else None,
        "kwarg": args.kwarg.arg if args.kwarg else None,
    }
    if not isinstance(node, ast.Lambda):
        data["line"] = node.lineno
        decorators = [_dotted(d) for d in node.decorator_list]
        if decorators:
            data["decorators"] = decorators
        if args.kwarg:
            data.update(_kwargs_destinations(node, args.kwarg.arg))
    return data


def _kwargs_destinations(node: ast.FunctionDef | ast.AsyncFunctionDef, kwarg: str) -> dict[str, list[str]]:
    """Where a function's ``**kwargs`` go: functions called with ``**kwargs``, and classes whose instance gets
    them as attributes (``for key, value in kwargs.items(): ... setattr(obj, key, value)``, obj = mod.Class())."""
    forwarded, properties_of = set(), set()
    constructed: dict[str, str] = {}
    for sub in ast.walk(node):
        if isinstance(sub, ast.Assign) and isinstance(sub.value, ast.Call) and len(sub.targets) == 1:
            target = sub.targets[0]
            if isinstance(target, ast.Name) and isinstance(sub.value.func, ast.Attribute):
                constructed[target.id] = sub.value.func.attr
        if isinstance(sub, ast.Call):
            for keyword in sub.keywords:
                if keyword.arg is None and isinstance(keyword.value, ast.Name) and keyword.value.id == kwarg:
                    forwarded.add(_dotted(sub.func).removeprefix("slicer.util."))
            if isinstance(sub.func, ast.Name) and sub.func.id == "setattr" and sub.args:
                first = sub.args[0]
                if isinstance(first, ast.Name) and first.id in constructed:
                    properties_of.add(constructed[first.id])
    result: dict[str, list[str]] = {}
    if forwarded:
        result["kwargs_forwarded_to"] = sorted(forwarded)
    if properties_of:
        result["kwargs_set_as_properties_of"] = sorted(properties_of)
    return result


def python_class(node: ast.ClassDef) -> dict[str, Any]:
    methods: dict[str, Any] = {}
    attributes: set[str] = set()
    for item in node.body:
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
            decorators = {_dotted(d) for d in item.decorator_list}
            bound = not ({"staticmethod"} & decorators)
            signature = function_signature(item, drop_first=bound)
            if "property" in decorators:
                attributes.add(item.name)
                continue
            if "staticmethod" in decorators:
                signature["static"] = True
            if "classmethod" in decorators:
                signature["classmethod"] = True
            methods[item.name] = signature
            for sub in ast.walk(item):
                if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store) and \
                        isinstance(sub.value, ast.Name) and sub.value.id == "self":
                    attributes.add(sub.attr)
        elif isinstance(item, ast.Assign):
            attributes.update(t.id for t in item.targets if isinstance(t, ast.Name))
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            attributes.add(item.target.id)
    return {"line": node.lineno, "bases": [_dotted(b) for b in node.bases], "methods": methods,
            "attributes": sorted(attributes - set(methods))}


def python_module(text: str) -> dict[str, Any]:
    """Top-level functions, classes, ``__all__`` and string constants of a Python file."""
    tree = ast.parse(text)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    data: dict[str, Any] = {
        "functions": {name: function_signature(node) for name, node in functions.items()},
        "classes": {n.name: python_class(n) for n in tree.body if isinstance(n, ast.ClassDef)},
    }
    constants: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name == "__all__" and isinstance(node.value, ast.List | ast.Tuple):
                data["all"] = [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
            elif isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                constants[name] = node.value.value
    data["string_constants"] = constants
    return data


def _type_predicates(expression: ast.expr, subject: str) -> tuple[list[str], list[str]]:
    """From a canRepresent/canSerialize expression: the types compared exactly with ``subject`` (``type(widget)``
    or ``unannotatedType(datatype)`` / ``type_``), and the classes it must be a subclass of."""
    exact, subclass_of = [], []

    def names(node: ast.expr) -> list[str]:
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return [n for e in node.elts for n in names(e)]
        return [_dotted(node)]

    def is_subject(node: ast.expr) -> bool:
        return _dotted(node) == subject or (subject == "datatype" and _dotted(node) in ("unannotatedType()", "type_"))

    for node in ast.walk(expression):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq | ast.In):
            widget_type = isinstance(node.left, ast.Call) and _dotted(node.left.func) == "type"
            if (subject == "type()" and widget_type) or (subject == "datatype" and is_subject(node.left)):
                exact += names(node.comparators[0])
        elif isinstance(node, ast.Call) and _dotted(node.func) == "issubclass" and subject == "datatype":
            subclass_of += names(node.args[1])
        elif isinstance(node, ast.Call) and _dotted(node.func) == "isNodeOrUnionOfNodes" and subject == "datatype":
            subclass_of.append("slicer.vtkMRMLNode")
        elif isinstance(node, ast.Call) and _dotted(node.func) == "pack.isParameterPack" and subject == "datatype":
            subclass_of.append("parameterPack")
    return exact, subclass_of


def gui_connectors(text: str) -> list[dict[str, Any]]:
    """Each registered GUI connector: the widget classes (exact ``type(widget)``) and data types it takes."""
    tree = ast.parse(text)
    connectors = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        if not any(_dotted(d) in ("parameterNodeGuiConnector", "parameterNodeGuiConnector()")
                   for d in node.decorator_list):
            continue
        method = next((m for m in node.body if isinstance(m, ast.FunctionDef) and m.name == "canRepresent"), None)
        if method is None:
            continue
        widgets, _ = _type_predicates(method, "type()")
        exact, subclass_of = _type_predicates(method, "datatype")
        connectors.append({"name": node.name, "line": node.lineno,
                           "widget_classes": sorted({w.split(".")[-1] for w in widgets}),
                           "data_types": sorted(set(exact)), "data_subclass_of": sorted(set(subclass_of))})
    return connectors


def serializers(text: str) -> list[dict[str, Any]]:
    """Each registered serializer (``@parameterNodeSerializer``): the value types it takes."""
    tree = ast.parse(text)
    result = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef) or not any("parameterNodeSerializer" in _dotted(d)
                                                         for d in node.decorator_list):
            continue
        method = next((m for m in node.body if isinstance(m, ast.FunctionDef) and m.name == "canSerialize"), None)
        if method is None:
            continue
        exact, subclass_of = _type_predicates(method, "datatype")
        origins = sorted({_dotted(c.comparators[0]) for c in ast.walk(method) if isinstance(c, ast.Compare)
                          and _dotted(c.left) == "typing.get_origin()"})
        result.append({"name": node.name, "data_types": sorted(set(exact)),
                       "data_subclass_of": sorted(set(subclass_of)), "generic_origins": origins})
    return result


def wrapper_members(text: str) -> dict[str, Any]:
    """What ``@parameterNodeWrapper`` gives a class (``_processClass``): the members it sets
    (``checkedSetAttr(classtype, "name", value)``), with their signatures without ``self`` where the value is a
    function or a lambda; the ``__init__`` it installs, and the attributes that ``__init__`` sets on ``self``."""
    tree = ast.parse(text)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    members: dict[str, Any] = {}
    init: dict[str, Any] | None = None
    attributes: set[str] = set()
    for node in ast.walk(functions["_processClass"]):
        if not (isinstance(node, ast.Call) and _dotted(node.func) in ("checkedSetAttr", "setattr")
                and len(node.args) == 3 and isinstance(node.args[1], ast.Constant)):
            continue
        name, value = node.args[1].value, node.args[2]
        if not isinstance(name, str):
            continue
        signature: dict[str, Any] | None = None
        if isinstance(value, ast.Name) and value.id in functions:
            signature = function_signature(functions[value.id], drop_first=True)
            signature.pop("line", None)
            if name == "__init__":
                attributes = {sub.attr for sub in ast.walk(functions[value.id]) if isinstance(sub, ast.Attribute)
                              and isinstance(sub.ctx, ast.Store) and _dotted(sub.value) == "self"}
        elif isinstance(value, ast.Lambda):
            signature = function_signature(value, drop_first=True)
        if name == "__init__":
            init = signature
        elif not name.startswith("__"):
            members[name] = signature  # None: a value or a generated function, the name only
    return {"members": members, "init": init, "instance_attributes": sorted(attributes)}


def extract_parameter_node_wrapper(slicer: GitSource) -> dict[str, Any]:
    folder = "Base/Python/slicer/parameterNodeWrapper/"
    files = sorted(p for p in slicer.files() if p.startswith(folder) and p.endswith(".py"))
    texts = slicer.read_many(files)
    init = ast.parse(texts[folder + "__init__.py"])
    exports: set[str] = set()
    submodules: dict[str, Any] = {}
    for node in init.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            module = python_module(texts[f"{folder}{node.module}.py"])
            names = [a.name for a in node.names]
            exports.update(module.get("all", []) if names == ["*"] else names)
    for path in files:
        name = Path(path).stem
        if name == "__init__":
            continue
        module = python_module(texts[path])
        public = set(module.get("all", []))
        submodules[name] = {
            "all": module.get("all", []),
            "functions": {k: v for k, v in module["functions"].items() if k in public},
            "classes": {k: v for k, v in module["classes"].items() if k in public},
            "string_constants": {k: v for k, v in module["string_constants"].items() if k in public},
        }
    return {
        "exports": sorted(exports),
        "modules": submodules,
        "gui_connectors": gui_connectors(texts[folder + "guiConnectors.py"]),
        "serializers": serializers(texts[folder + "serializers.py"]),
        "wrapper_members": wrapper_members(texts[folder + "wrapper.py"]),
    }


def extract_slicer_package(slicer: GitSource) -> dict[str, Any]:
    """The ``slicer`` Python package: its submodules and the attributes the application sets (documented in
    ``__init__.py`` as ``.. py:attribute::``)."""
    init = slicer.read("Base/Python/slicer/__init__.py")
    attributes = re.findall(r"\.\. py:attribute:: (\w+)", init)
    prefix = "Base/Python/slicer/"
    submodules = set()
    for path in slicer.files():
        if path.startswith(prefix) and "/tests/" not in path:
            first = path[len(prefix):].split("/")[0]
            submodules.add(first.removesuffix(".in").removesuffix(".py"))
    submodules -= {"__init__", "release", "tests"}
    return {"application_attributes": attributes, "submodules": sorted(submodules)}


# ------------------------------------------------------------------------------------------------------------------
# Assembling the manifest
# ------------------------------------------------------------------------------------------------------------------


def header_index(source: GitSource, folders: tuple[str, ...]) -> dict[str, str]:
    """class name -> header path (one class per header, named like the file)."""
    index: dict[str, str] = {}
    for path in source.files():
        if path.endswith(".h") and path.startswith(folders) and "/Testing/" not in path:
            index.setdefault(Path(path).stem, path)
    return index


def extract_classes(slicer: GitSource, ctk: GitSource) -> tuple[dict[str, Any], list[str]]:
    """The classes of WIDGET_CLASSES and VTK_CLASSES and all their bases found in the sources; the external bases."""
    sources = {"slicer": (slicer, header_index(slicer, SLICER_HEADER_DIRS)),
               "ctk": (ctk, header_index(ctk, CTK_HEADER_DIRS))}
    decorators: dict[str, dict[str, dict[str, str]]] = {}
    for label, (source, _) in sources.items():
        paths = [p for p in source.files() if p.endswith("PythonQtDecorators.h") and "/Testing/" not in p
                 and p.startswith(SLICER_HEADER_DIRS if label == "slicer" else CTK_HEADER_DIRS)]
        for path, text in source.read_many(paths).items():
            for target, members in parse_decorators(text, path).items():
                entry = decorators.setdefault(target, {"decorators": {}, "static_decorators": {}})
                for kind in entry:
                    entry[kind].update(members[kind])
    result: dict[str, Any] = {}
    external: set[str] = set()
    pending = [(name, "pythonqt") for name in WIDGET_CLASSES] + [(name, "vtk") for name in VTK_CLASSES]
    while pending:
        name, binding = pending.pop(0)
        if name in result:
            continue
        found = [(label, src, index[name]) for label, (src, index) in sources.items() if name in index]
        if not found:
            external.add(name)
            continue
        label, source, path = found[0]
        parsed = parse_header(source.read(path), path)
        if name not in parsed:
            raise RuntimeError(f"{path} does not define class {name}")
        data = parsed[name].to_json(label, binding)
        data.update(decorators.get(name, {"decorators": {}, "static_decorators": {}}))
        result[name] = data
        pending += [(base, binding) for base in parsed[name].bases]
    return dict(sorted(result.items())), sorted(external)


def mrml_hierarchy(slicer: GitSource) -> dict[str, list[str]]:
    """vtkMRML* class -> its public bases, for every vtkMRML*.h of the MRML libraries and loadable modules."""
    paths = [p for p in slicer.files() if re.search(r"/vtkMRML\w*\.h$", p) and "/Testing/" not in p
             and p.startswith(("Libs/MRML/Core/", "Modules/Loadable/"))]
    hierarchy: dict[str, list[str]] = {}
    pattern = re.compile(r"\bclass\s+(?:[A-Z][A-Z0-9_]*\s+)*(vtkMRML\w+)\s*:\s*public\s+(\w+)")
    for text in slicer.read_many(paths).values():
        for match in pattern.finditer(strip_comments_and_directives(text)):
            hierarchy.setdefault(match.group(1), [match.group(2)])
    return dict(sorted(hierarchy.items()))


def namespace_names(source: GitSource, prefixes: tuple[str, ...], folders: tuple[str, ...]) -> list[str]:
    names = {Path(p).stem for p in source.files()
             if p.endswith(".h") and p.startswith(folders) and Path(p).stem.startswith(prefixes)
             and "/Testing/" not in p and not Path(p).stem.endswith(("_p", "Private", "Export"))}
    return sorted(names)


def slicer_module_names(slicer: GitSource) -> list[str]:
    """The modules Slicer itself ships (folders of Modules/Loadable, Scripted and CLI): ``slicer.modules.<lower>``."""
    names = {m.group(1) for p in slicer.files() if (m := re.match(r"Modules/(?:Loadable|Scripted|CLI)/(\w+)/", p))}
    return sorted(names)


def build_manifest(slicer: GitSource, ctk: GitSource, pytorch: GitSource, ctk_note: str) -> dict[str, Any]:
    util = python_module(slicer.read("Base/Python/slicer/util.py"))
    slm = python_module(slicer.read("Base/Python/slicer/ScriptedLoadableModule.py"))
    torch_utils = python_module(pytorch.read("PyTorchUtils/PyTorchUtils.py"))
    classes, external = extract_classes(slicer, ctk)
    missing = [name for name in external if name not in HANDWRITTEN_QT and name not in HANDWRITTEN_VTK]
    if missing:
        raise RuntimeError(f"bases neither in the sources nor hand-written: {missing}")
    return {
        "about": "Names and signatures of the Slicer/CTK/SlicerPyTorch API the MaskMed module uses, extracted by "
                 "Testing/slicer_api/generate_manifest.py; read by Testing/test_slicer_api_conformance.py. "
                 "Do not edit: regenerate. The 'handwritten' section is written by hand (in the generator).",
        "sources": {
            "slicer": slicer.describe(),
            "ctk": {**ctk.describe(), "note": ctk_note},
            "slicerpytorch": pytorch.describe(),
        },
        "python": {
            "slicer": extract_slicer_package(slicer),
            "slicer.util": {"file": "Base/Python/slicer/util.py", "functions": util["functions"],
                            "classes": util["classes"]},
            "slicer.ScriptedLoadableModule": {"file": "Base/Python/slicer/ScriptedLoadableModule.py",
                                              "classes": slm["classes"]},
            "slicer.parameterNodeWrapper": {"folder": "Base/Python/slicer/parameterNodeWrapper",
                                            **extract_parameter_node_wrapper(slicer)},
            "PyTorchUtils": {"file": "PyTorchUtils/PyTorchUtils.py", "classes": torch_utils["classes"]},
        },
        "classes": classes,
        "external_bases": external,
        "mrml_node_hierarchy": mrml_hierarchy(slicer),
        "namespaces": {
            "slicer": namespace_names(slicer, SLICER_NAMESPACE_PREFIXES, SLICER_HEADER_DIRS + ("Libs/",)),
            "ctk": namespace_names(ctk, ("ctk",), ("Libs/",)),
            "slicer_modules": slicer_module_names(slicer),
        },
        "handwritten": {
            "note": "Written by hand, not extracted. qt: from the Qt 5.15 documentation (Qt's classes are not in "
                    "the sources above; 'designer:*' entries are Qt Designer pseudo-properties); vtk: from the VTK "
                    "9 documentation; unittest_testcase: from the Python 3.12 documentation; "
                    "python_attribute_types: what Slicer's C++ assigns to ScriptedLoadableModule* attributes.",
            "qt": HANDWRITTEN_QT,
            "vtk": HANDWRITTEN_VTK,
            "unittest_testcase": UNITTEST_TESTCASE,
            "python_attribute_types": PYTHON_ATTRIBUTE_TYPES,
        },
    }


def to_json(value: Any, level: int = 0, width: int = 118) -> str:
    """JSON that reads and diffs well: objects one member a line, what fits on a line inline, long lists of
    names wrapped."""
    pad = " " * level
    inline = json.dumps(value, ensure_ascii=False)
    if len(inline) + level <= width:
        return inline
    if isinstance(value, dict):
        members = [f"{pad} {json.dumps(k)}: {to_json(v, level + 1, width)}" for k, v in value.items()]
        return "{\n" + ",\n".join(members) + "\n" + pad + "}"
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        lines, line = [], ""
        for item in (json.dumps(v, ensure_ascii=False) for v in value):
            if line and len(line) + len(item) + level + 3 > width:
                lines.append(line)
                line = ""
            line = f"{line}, {item}" if line else item
        lines.append(line)
        return "[\n" + ",\n".join(f"{pad} {line}" for line in lines) + "\n" + pad + "]"
    if isinstance(value, list):
        return "[\n" + ",\n".join(f"{pad} {to_json(v, level + 1, width)}" for v in value) + "\n" + pad + "]"
    return inline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slicer-repo", type=Path, default=MIRRORS / "Slicer+Slicer" / "repo")
    parser.add_argument("--slicer-rev", default="v5.10.0")
    parser.add_argument("--ctk-repo", type=Path, default=MIRRORS / "commontk+CTK" / "repo")
    parser.add_argument("--ctk-rev", default=PINNED,
                        help="a revision, or 'pinned': the commit Slicer's SuperBuild/External_CTK.cmake names "
                             "(the repository's HEAD if that commit is absent)")
    parser.add_argument("--pytorch-repo", type=Path, default=MIRRORS / "fepegar+SlicerPyTorch" / "repo")
    parser.add_argument("--pytorch-rev", default="HEAD")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    options = parser.parse_args(argv)

    slicer = GitSource("slicer", options.slicer_repo, options.slicer_rev)
    ctk_rev, ctk_note = options.ctk_rev, f"revision given on the command line: {options.ctk_rev}"
    if ctk_rev == PINNED:
        pinned = pinned_ctk_commit(slicer)
        try:
            ctk = GitSource("ctk", options.ctk_repo, pinned)
            ctk_note = f"the commit Slicer {options.slicer_rev} pins in SuperBuild/External_CTK.cmake"
        except RuntimeError:
            ctk = GitSource("ctk", options.ctk_repo, "HEAD")
            ctk_note = (f"Slicer {options.slicer_rev} pins CTK {pinned}, which this repository lacks: "
                        "its HEAD was used instead")
    else:
        ctk = GitSource("ctk", options.ctk_repo, ctk_rev)
    pytorch = GitSource("slicerpytorch", options.pytorch_repo, options.pytorch_rev)
    manifest = build_manifest(slicer, ctk, pytorch, ctk_note)
    options.output.write_text(to_json(manifest) + "\n", encoding="utf-8")
    print(f"wrote {options.output}: {len(manifest['classes'])} classes; Slicer {slicer.commit[:12]}, "
          f"CTK {ctk.commit[:12]}, SlicerPyTorch {pytorch.commit[:12]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
