"""The Slicer module, checked without Slicer: .ui, module source, CMake lists, Extensions Index entry, icon.

The Slicer application cannot run here, so these tests read the files: the panel's .ui is valid Qt Designer
XML holding every widget the Python code reaches through ``self.ui.<name>``; the module file compiles and
does nothing but define things at import time; the Logic never touches Qt; CMake lists every file the
module ships; the Extensions Index entry follows the catalog schema; the icon is a 128 x 128 PNG.
"""

from __future__ import annotations

import ast
import json
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_NAME = "MaskMedSegmentation"
MODULE_DIR = REPO / MODULE_NAME
MODULE_FILE = MODULE_DIR / f"{MODULE_NAME}.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / f"{MODULE_NAME}.ui"
ICON_FILE = MODULE_DIR / "Resources" / "Icons" / f"{MODULE_NAME}.png"
LOGIC_DIR = MODULE_DIR / "MaskMedSegmentationLib"
WIDGETS_DIR = MODULE_DIR / "MaskMedSegmentationWidgets"
SELF_TEST_FILE = MODULE_DIR / "Testing" / "Python" / "MaskMedSegmentationSelfTest.py"
WIDGET_LINES_GOAL = 600  # the panel file stays readable: bigger Qt pieces go to MaskMedSegmentationWidgets/
INDEX_JSON = REPO / f"{MODULE_NAME}.json"

# Widgets that Qt itself provides (no <customwidget> entry needed).
QT_WIDGETS = {
    "QWidget", "QFrame", "QLabel", "QPushButton", "QToolButton", "QComboBox", "QSpinBox", "QDoubleSpinBox",
    "QCheckBox", "QRadioButton", "QProgressBar", "QTableWidget", "QLineEdit", "QTextEdit", "QPlainTextEdit",
    "QGroupBox", "QSlider", "QListWidget", "QTreeWidget", "QTabWidget", "QStackedWidget", "QScrollArea",
    "QSplitter", "QTextBrowser",
}

# What the brief promises the rest of the project (and the self-test) can reach by name: name -> class.
REQUIRED_WIDGETS = {
    "inputVolumeSelector": "qMRMLNodeComboBox",
    "outputSegmentationSelector": "qMRMLNodeComboBox",
    "modelComboBox": "QComboBox",
    "deviceComboBox": "QComboBox",
    "segmentButton": "QPushButton",
    "progressBar": "QProgressBar",
    "statusLabel": "QLabel",
    "queryConfidenceSlider": "ctkSliderWidget",
    "classConfidenceSlider": "ctkSliderWidget",
    "classTable": "QTableWidget",
    "queryTable": "QTableWidget",
    "fineTuneStartButton": "QPushButton",
    "fineTuneMinutesSpinBox": "QSpinBox",
    "installDependenciesButton": "QPushButton",
    "dependencyStatusLabel": "QLabel",
}


@pytest.fixture(scope="module")
def ui() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


@pytest.fixture(scope="module")
def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"), filename=str(MODULE_FILE))


def _widgets(ui: ET.Element) -> dict[str, str]:
    """Every named widget of the .ui: name -> class."""
    return {w.get("name"): w.get("class") for w in ui.iter("widget")}


def _property(widget: ET.Element, name: str) -> ET.Element | None:
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop[0]
    return None


def _cmake_set(text: str, variable: str) -> list[str]:
    """The items of ``set(VARIABLE item item ...)`` with ${MODULE_NAME} substituted."""
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.DOTALL)
    assert match, f"set({variable} ...) not found"
    return [item.replace("${MODULE_NAME}", MODULE_NAME) for item in match.group(1).split()]


# ----- the .ui ------------------------------------------------------------------------------------------------


def test_ui_is_qt_designer_xml_with_a_mrml_top_widget(ui):
    assert ui.tag == "ui" and ui.get("version") == "4.0"
    top = ui.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget" and top.get("name") == MODULE_NAME
    names = [w.get("name") for w in ui.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"


def test_ui_declares_every_custom_widget_it_uses(ui):
    declared = {c.findtext("class") for c in ui.iter("customwidget")}
    for custom in ui.iter("customwidget"):
        assert custom.findtext("extends") and custom.findtext("header"), custom.findtext("class")
    used = set(_widgets(ui).values())
    undeclared = used - declared - QT_WIDGETS
    assert not undeclared, f"widgets without a <customwidget> entry: {sorted(undeclared)}"
    # Each declared widget extends Qt or another declared widget.
    for custom in ui.iter("customwidget"):
        assert custom.findtext("extends") in QT_WIDGETS | declared | {"QPushButton"}


def test_ui_required_widgets_and_their_settings(ui):
    widgets = _widgets(ui)
    for name, cls in REQUIRED_WIDGETS.items():
        assert widgets.get(name) == cls, f"{name}: expected {cls}, found {widgets.get(name)}"
    by_name = {w.get("name"): w for w in ui.iter("widget")}
    for slider in ("queryConfidenceSlider", "classConfidenceSlider"):
        assert float(_property(by_name[slider], "minimum").text) == 0.0
        assert float(_property(by_name[slider], "maximum").text) == 1.0
        assert 0.0 <= float(_property(by_name[slider], "value").text) <= 1.0
    volumes = [s.text for s in _property(by_name["inputVolumeSelector"], "nodeTypes")]
    assert volumes == ["vtkMRMLScalarVolumeNode"]
    output = by_name["outputSegmentationSelector"]
    assert [s.text for s in _property(output, "nodeTypes")] == ["vtkMRMLSegmentationNode"]
    for flag in ("addEnabled", "noneEnabled", "renameEnabled", "removeEnabled"):
        assert _property(output, flag).text == "true", flag
    collapsible = [w.findtext("property/string") for w in ui.iter("widget") if w.get("class") == "ctkCollapsibleButton"]
    for section in ("Inputs", "Results", "Fine-tune", "Dependencies"):
        assert section in collapsible, section


def test_ui_gives_every_mrml_widget_the_scene(ui):
    """Slicer convention: the top widget's mrmlSceneChanged(vtkMRMLScene*) feeds each MRML widget's setMRMLScene."""
    mrml = {name for name, cls in _widgets(ui).items() if cls == "qMRMLNodeComboBox"}
    fed = {
        c.findtext("receiver")
        for c in ui.iter("connection")
        if c.findtext("sender") == MODULE_NAME
        and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert mrml and mrml <= fed, f"no scene connection for {sorted(mrml - fed)}"
    names = set(_widgets(ui))
    for connection in ui.iter("connection"):
        assert connection.findtext("sender") in names and connection.findtext("receiver") in names


def test_every_ui_name_the_python_uses_exists(ui, module_tree):
    """``self.ui.<name>`` in the panel and ``widget.ui.<name>`` in the self-test."""
    self_test = ast.parse(SELF_TEST_FILE.read_text(encoding="utf-8"))
    used = {
        node.attr
        for tree in (module_tree, self_test)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
    }
    assert used, "the module reads no self.ui.<name>"
    missing = used - set(_widgets(ui))
    assert not missing, f"self.ui names missing from {UI_FILE.name}: {sorted(missing)}"


# ----- the module file ------------------------------------------------------------------------------------------


def test_module_file_compiles():
    compile(MODULE_FILE.read_text(encoding="utf-8"), str(MODULE_FILE), "exec")


def test_slicer_only_files_compile_and_the_panel_stays_small():
    """The Qt pieces and the self-test run only inside Slicer: here they are at least compiled. The self-test
    class the module runs ("Reload and Test") is the one the self-test file defines."""
    for path in [SELF_TEST_FILE, *sorted(WIDGETS_DIR.glob("*.py"))]:
        compile(path.read_text(encoding="utf-8"), str(path), "exec")
    assert 'MaskMedSegmentationSelfTest("runTest")' in MODULE_FILE.read_text(encoding="utf-8")
    assert "class MaskMedSegmentationSelfTest(ScriptedLoadableModuleTest)" in SELF_TEST_FILE.read_text()
    lines = len(MODULE_FILE.read_text(encoding="utf-8").splitlines())
    assert lines < WIDGET_LINES_GOAL, f"{MODULE_FILE.name} has {lines} lines"


def test_module_defines_the_slicer_classes(module_tree):
    classes = {node.name: [ast.unparse(b) for b in node.bases] for node in module_tree.body
               if isinstance(node, ast.ClassDef)}
    assert classes[MODULE_NAME] == ["ScriptedLoadableModule"]
    assert classes[f"{MODULE_NAME}Widget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert classes[f"{MODULE_NAME}Test"] == ["ScriptedLoadableModuleTest"]
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert 'self.parent.title = "MaskMed Segmentation"' in source
    assert "Decoupled Mask and Class Prediction for Medical Image Segmentation" in source
    assert "TotalSegmentator" in source


def test_module_import_does_nothing_but_define(module_tree):
    """Importing the module (Slicer does it at startup) must not import torch/the Logic or install anything."""
    for node in module_tree.body:
        if isinstance(node, ast.Expr):
            assert isinstance(node.value, ast.Constant) and isinstance(node.value.value, str), ast.unparse(node)
            continue
        assert isinstance(node, (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign, ast.FunctionDef,
                                 ast.ClassDef)), f"statement at import time: {ast.unparse(node)[:80]}"
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            calls = [n for n in ast.walk(node) if isinstance(n, ast.Call)]
            assert all(ast.unparse(c.func).startswith("os.path.") for c in calls), ast.unparse(node)
        if isinstance(node, ast.Import):
            top = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            top = {(node.module or "").split(".")[0]}
        else:
            continue
        lazy_only = {"torch", "MaskMedSegmentationLib", "maskmed_core", "PyTorchUtils", "SampleData"}
        assert not top & lazy_only, ast.unparse(node)


# ----- the parameter node ----------------------------------------------------------------------------------------
# slicer.parameterNodeWrapper is not in the slicer-core wheel, so the binding is checked here from the sources; the
# in-Slicer self-test (test_PanelStateIsSavedWithTheScene) saves and reloads a scene through it.

# The wrapper's GUI connectors (Slicer: Base/Python/slicer/parameterNodeWrapper/guiConnectors.py): widget class ->
# the parameter type it represents; ctkSliderWidget also needs a bounded range (WithinRange) or it raises.
CONNECTOR_TYPES = {"qMRMLNodeComboBox": "vtkMRML", "ctkSliderWidget": "float", "QDoubleSpinBox": "float",
                   "QSpinBox": "int", "QSlider": "int", "ctkDirectoryButton": "Path", "ctkPathLineEdit": "Path",
                   "QCheckBox": "bool", "QLineEdit": "str"}
# Kept in step by the widget's own code: their combo boxes list what is found at run time; radio buttons have no
# connector.
WIDGET_SYNCED = {"modelPath", "device", "fineTuneFromScene"}


def _parameter_node_class(module_tree: ast.Module) -> ast.ClassDef:
    (cls,) = [node for node in module_tree.body if isinstance(node, ast.ClassDef)
              and any(ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list)]
    return cls


def _parameter_fields(module_tree: ast.Module) -> dict[str, ast.AnnAssign]:
    return {node.target.id: node for node in _parameter_node_class(module_tree).body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}


def test_parameter_node_holds_the_panel_state(module_tree):
    cls = _parameter_node_class(module_tree)
    assert cls.name == f"{MODULE_NAME}ParameterNode"
    assert set(_parameter_fields(module_tree)) == {
        "inputVolume", "outputSegmentation", "modelPath", "device", "queryThreshold", "classThreshold",
        "largestComponent", "testTimeAugmentation", "fineTuneFromScene", "fineTuneDatasetFolder",
        "fineTuneOutputFolder", "fineTuneMinutes"}
    source = MODULE_FILE.read_text(encoding="utf-8")
    for call in ("connectGui(self.ui)", "disconnectGui(self._parameterNodeGuiTag)",
                 f"{MODULE_NAME}ParameterNode(super().getParameterNode())"):
        assert call in source, call


def test_every_slicer_parameter_name_in_the_ui_is_a_field_its_widget_can_represent(ui, module_tree):
    fields = _parameter_fields(module_tree)
    bound = {}
    for widget in ui.iter("widget"):
        name = _property(widget, "SlicerParameterName")
        if name is None:
            continue
        field = fields.get(name.text)
        assert field is not None, f"{widget.get('name')}: SlicerParameterName {name.text!r} is not a parameter"
        annotation = ast.unparse(field.annotation)
        base = annotation.removeprefix("Annotated[").split(",")[0].rstrip("]")
        expected = CONNECTOR_TYPES.get(widget.get("class"))
        assert expected is not None, f"no parameterNodeWrapper connector for a {widget.get('class')}"
        assert base.startswith(expected), f"{widget.get('name')} ({widget.get('class')}) cannot show a {base}"
        if widget.get("class") == "ctkSliderWidget":
            assert "WithinRange(" in annotation, f"{name.text}: a slider needs a bounded range"
        assert name.text not in bound, f"{name.text} is bound twice"
        bound[name.text] = widget.get("name")
    assert set(fields) - set(bound) == WIDGET_SYNCED, "every other parameter is bound to its widget in the .ui"
    source = MODULE_FILE.read_text(encoding="utf-8")
    for name in WIDGET_SYNCED:
        assert f"_parameterNode.{name} = " in source, f"the widget never writes {name}"
        assert f"parameters.{name}" in source, f"the widget never reads {name} into its widgets"


def test_parameter_node_defaults_are_the_logic_defaults(module_tree, ui):
    import sys

    sys.path.insert(0, str(MODULE_DIR))
    import MaskMedSegmentationLib as Logic

    fields = _parameter_fields(module_tree)
    defaults = {name: ast.literal_eval(field.value) for name, field in fields.items()
                if field.value is not None and isinstance(field.value, ast.Constant)}
    assert defaults["queryThreshold"] == Logic.DEFAULT_QUERY_THRESHOLD
    assert defaults["classThreshold"] == Logic.DEFAULT_CLASS_THRESHOLD
    by_name = {w.get("name"): w for w in ui.iter("widget")}
    assert float(_property(by_name["queryConfidenceSlider"], "value").text) == Logic.DEFAULT_QUERY_THRESHOLD
    assert float(_property(by_name["classConfidenceSlider"], "value").text) == Logic.DEFAULT_CLASS_THRESHOLD
    assert int(_property(by_name["fineTuneMinutesSpinBox"], "value").text) == defaults["fineTuneMinutes"]
    assert defaults["device"] == "auto"


def test_the_logic_thresholds_and_the_panel_devices_are_maskmed_cores(module_tree):
    """The Logic repeats maskmed_core's threshold defaults (it imports before maskmed_core is installed), and the
    panel offers a subset of the devices maskmed_core accepts: one fact each, the copies checked against it."""
    import sys

    from maskmed_core.devices import DEVICES
    from maskmed_core.model.semantic import DEFAULT_CLASS_THRESHOLD, DEFAULT_QUERY_THRESHOLD

    sys.path.insert(0, str(MODULE_DIR))
    import MaskMedSegmentationLib as Logic

    assert (Logic.DEFAULT_QUERY_THRESHOLD, Logic.DEFAULT_CLASS_THRESHOLD) == (DEFAULT_QUERY_THRESHOLD,
                                                                              DEFAULT_CLASS_THRESHOLD)
    panel_devices = next(ast.literal_eval(node.value) for node in module_tree.body if isinstance(node, ast.Assign)
                         and any(getattr(target, "id", None) == "DEVICES" for target in node.targets))
    assert panel_devices and set(panel_devices) <= set(DEVICES)


# ----- the Logic stays Qt-free ------------------------------------------------------------------------------------


def _qt_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names
                      if a.name.split(".")[0] in ("qt", "ctk") or a.name in ("slicer.util", "slicer.app")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in ("qt", "ctk") or node.module.startswith(("slicer.util", "slicer.app")):
                found.append(node.module)
            elif node.module == "slicer":
                found += [f"slicer.{a.name}" for a in node.names if a.name in ("util", "app")]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "slicer"
              and node.attr in ("util", "app")):
            found.append(f"slicer.{node.attr}")
    return found


def test_logic_imports_no_qt():
    if not LOGIC_DIR.is_dir():
        pytest.skip("MaskMedSegmentation/MaskMedSegmentationLib/ does not exist yet")
    offenders = {p.name: _qt_uses(p) for p in sorted(LOGIC_DIR.rglob("*.py"))}
    offenders = {name: uses for name, uses in offenders.items() if uses}
    assert not offenders, f"Logic files using qt/ctk/slicer.util/slicer.app: {offenders}"


# ----- CMake and the Extensions Index entry ----------------------------------------------------------------------


def test_module_cmake_lists_every_script_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = _cmake_set(text, "MODULE_PYTHON_SCRIPTS")
    resources = _cmake_set(text, "MODULE_PYTHON_RESOURCES")
    on_disk = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    assert not on_disk - set(scripts), f"not in MODULE_PYTHON_SCRIPTS: {sorted(on_disk - set(scripts))}"
    shipped = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()}
    assert not shipped - set(resources), f"not in MODULE_PYTHON_RESOURCES: {sorted(shipped - set(resources))}"
    # Every listed file must exist (slicerMacroBuildScriptedModule stops on a missing one). The Logic files
    # are listed by name ahead of time, so they are only checked once the Logic folder exists.
    listed = [f for f in scripts + resources if LOGIC_DIR.is_dir() or not f.startswith("MaskMedSegmentationLib/")]
    missing = [f for f in listed if not (MODULE_DIR / f).is_file()]
    assert not missing, f"listed in CMakeLists.txt but missing: {missing}"
    assert f"{MODULE_NAME}.py" in scripts
    assert re.search(r"slicerMacroBuildScriptedModule\(.*WITH_GENERIC_TESTS", text, re.DOTALL)
    assert re.search(r"if\(BUILD_TESTING\).*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text,
                     re.DOTALL)
    # maskmed_core travels with the module: its sources, op sources and resources.
    assert "maskmed_core/*.py" in text and "maskmed_core/ops/csrc/*" in text and "maskmed_core/resources/*" in text


def test_top_level_cmake_is_a_slicer_extension():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for pattern in (
        r"^cmake_minimum_required\(",
        r"^project\(MaskMedSegmentation\)",
        r'set\(EXTENSION_CATEGORY "Segmentation"\)',
        r'set\(EXTENSION_DEPENDS "PyTorch"\)',
        r"find_package\(Slicer REQUIRED\)",
        r"include\(\$\{Slicer_USE_FILE\}\)",
        r"add_subdirectory\(MaskMedSegmentation\)",
        r"include\(\$\{Slicer_EXTENSION_GENERATE_CONFIG\}\)",
        r"include\(\$\{Slicer_EXTENSION_CPACK\}\)",
    ):
        assert re.search(pattern, text, re.MULTILINE), pattern
    for key in ("HOMEPAGE", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert re.search(rf'set\(EXTENSION_{key} "[^"]+"\)', text), key


def test_the_minimum_slicer_version_is_the_same_everywhere(module_tree):
    """MINIMUM_SLICER_VERSION (the module file) is what CMake refuses below and what the README names."""
    (value,) = [node.value.value for node in module_tree.body if isinstance(node, ast.Assign)
                and ast.unparse(node.targets[0]) == "MINIMUM_SLICER_VERSION"]
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert f'set(MASKMED_MINIMUM_SLICER_VERSION "{value}")' in cmake
    assert "VERSION_LESS MASKMED_MINIMUM_SLICER_VERSION" in cmake
    assert f"3D Slicer {value} or later" in (REPO / "README.md").read_text(encoding="utf-8")


def test_extensions_index_entry_follows_the_catalog_schema():
    entry = json.loads(INDEX_JSON.read_text(encoding="utf-8"))
    # slicer-extension-catalog-entry-schema-v1.0.1: these keys only (additionalProperties: false).
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier"}
    assert set(entry) <= allowed, set(entry) - allowed
    for key in ("$schema", "category", "scm_url"):
        assert entry.get(key), key
    assert "slicer-extension-catalog-entry-schema" in entry["$schema"]
    assert entry["category"] == "Segmentation"
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_revision"] == "main"
    assert entry.get("tier", 5) in (1, 3, 5)
    assert entry["scm_url"].startswith("https://")


# ----- the icon -----------------------------------------------------------------------------------------------------


def test_icon_is_a_128_pixel_png():
    data = ICON_FILE.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks, idat = 8, [], b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, f"bad CRC in {kind!r}"
        chunks.append(kind)
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND"
    assert (width, height) == (128, 128)
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    rows = zlib.decompress(idat)
    assert len(rows) == height * (1 + width * channels * depth // 8)
