"""Import the Slicer module file, its Widgets package and its self-test for real, outside the Slicer application.

Run as a script (``python Testing/slicer_module_load.py``; Testing/test_slicer_module_import.py runs it in a fresh
process, under this Python and under Python 3.9), so the stand-ins never leak into other tests. Kept to Python 3.9
syntax: it must run where Slicer 5.6-5.8 would.

What is real: every MRML and VTK name. Slicer's own Python module names (``MRMLCorePython``,
``vtkSlicerSegmentationsModuleMRMLPython``, ...) are the modules of the ``slicer-core`` wheel under those names, and
``slicer`` and ``slicer.util`` are slicer-core's, so importing a class from a module that does not define it fails here
as it does in Slicer. What is stood in: only what the application alone has, Qt, CTK, the scripted-module base
classes and the parameter node wrapper; the stand-in wrapper evaluates the parameter node's annotations as the real
one does (``typing.get_type_hints``), so an annotation the running Python cannot evaluate fails here too.

Without slicer-core (Python 3.9: the wheel is built for newer Pythons only), ``slicer`` and ``vtk`` are stood in as
well, and the script checks that the module still imports and that its panel shows why this Slicer is too old.
Prints one line per check and exits 0 when all hold, 1 with the reason otherwise.
"""

import importlib
import pkgutil
import sys
import types
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "MaskMedSegmentation"


class StandIn:
    """Any attribute, any call, any operator: a Qt/CTK object the module touches at import or setup."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = StandIn()
        setattr(self, name, value)
        return value

    def __call__(self, *args, **kwargs):
        return StandIn(*args)

    def __or__(self, other):
        return self


class StandInModule(types.ModuleType):
    """A module whose every public name is a stand-in class (``qt.QLabel``, ``ctk.ctkSliderWidget``)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        stand_in_class = type(name, (StandIn,), {})
        setattr(self, name, stand_in_class)
        return stand_in_class


class RecordingLayout:
    """The module panel's layout: remembers the widgets added to it."""

    def __init__(self):
        self.widgets = []

    def addWidget(self, widget):  # noqa: N802 (Qt's name)
        self.widgets.append(widget)


def _scripted_loadable_module():
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def getParameterNode(self):  # noqa: N802
            return StandIn()

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent
            self.layout = RecordingLayout()

        def setup(self):
            pass

        def resourcePath(self, filename):  # noqa: N802
            return str(MODULE_DIR / "Resources" / filename)

    class ScriptedLoadableModuleTest:
        def __init__(self, methodName="runTest"):  # noqa: N803
            self.methodName = methodName

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    return module


def _parameter_node_wrapper():
    module = types.ModuleType("slicer.parameterNodeWrapper")

    def parameterNodeWrapper(cls):  # noqa: N802
        # The real decorator reads the annotations with typing.get_type_hints(include_extras=True) when the class is
        # defined; so does this one, and every default must be an instance of its annotation's base type.
        hints = typing.get_type_hints(cls, include_extras=True)
        for name, hint in hints.items():
            base = getattr(hint, "__origin__", hint)
            if name in vars(cls) and isinstance(base, type) and not isinstance(vars(cls)[name], base):
                raise TypeError(f"{cls.__name__}.{name}: default {vars(cls)[name]!r} is not a {base.__name__}")
        cls.parameterNames = tuple(hints)
        return cls

    module.parameterNodeWrapper = parameterNodeWrapper
    module.Choice = StandIn
    module.WithinRange = StandIn
    return module


def _alias_slicer_python_modules():
    """Slicer's ``<Library>Python`` module names -> slicer-core's ``slicer_core.<Library>``."""
    import slicer_core

    for info in pkgutil.iter_modules(slicer_core.__path__):
        if not info.name.startswith("lib"):  # libX.so are the C++ libraries behind the Python modules
            sys.modules.setdefault(info.name + "Python", importlib.import_module("slicer_core." + info.name))


def install_stand_ins(real_mrml):
    """Put the stand-ins into sys.modules; ``real_mrml``: slicer-core provides slicer, slicer.util and vtk."""
    for name in ("qt", "ctk"):
        sys.modules[name] = StandInModule(name)
    if real_mrml:
        _alias_slicer_python_modules()
        import slicer
    else:
        slicer = StandInModule("slicer")
        slicer.__path__ = []
        util = types.ModuleType("slicer.util")

        class VTKObservationMixin:
            def __init__(self):
                pass

        util.VTKObservationMixin = VTKObservationMixin
        slicer.util = util
        slicer.app = StandIn()
        slicer.app.applicationVersion = "5.8.1"
        sys.modules.update({"slicer": slicer, "slicer.util": util, "vtk": StandInModule("vtk")})
    for name, module in (("ScriptedLoadableModule", _scripted_loadable_module()),
                         ("parameterNodeWrapper", _parameter_node_wrapper())):
        sys.modules["slicer." + name] = module
        setattr(slicer, name, module)
    sys.path.insert(0, str(MODULE_DIR))


def _check(text):
    print(f"ok: {text}")


def main():
    try:
        import slicer_core  # noqa: F401
        real_mrml = True
    except ImportError:
        real_mrml = False
    install_stand_ins(real_mrml)
    module = importlib.import_module("MaskMedSegmentation")
    _check(f"MaskMedSegmentation.py imports on Python {sys.version.split()[0]}"
           + (" against slicer-core's MRML" if real_mrml else " (MRML stood in)"))
    parent = StandIn()
    module.MaskMedSegmentation(parent)
    assert parent.title == "MaskMed Segmentation", parent.title
    _check("the module class registers its title")
    names = module.MaskMedSegmentationParameterNode.parameterNames
    assert "inputVolume" in names and "outputSegmentation" in names, names
    _check(f"the parameter node's {len(names)} annotations evaluate")
    supported = sys.version_info >= module.MINIMUM_PYTHON
    if supported:
        importlib.import_module("MaskMedSegmentationWidgets")
        _check("the MaskMedSegmentationWidgets package imports")
        path = MODULE_DIR / "Testing" / "Python" / "MaskMedSegmentationSelfTest.py"
        spec = importlib.util.spec_from_file_location("MaskMedSegmentationSelfTest", path)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        _check("the self-test imports")
        assert module.unsupportedSlicerMessage() is None
        _check("no 'Slicer too old' message on this Python")
    else:
        widget = module.MaskMedSegmentationWidget()
        widget.setup()
        shown = [w.args[0] for w in widget.layout.widgets if w.args]
        assert shown and module.MINIMUM_SLICER_VERSION in shown[0], shown
        widget.enter()
        widget.cleanup()
        _check(f"on Python {sys.version_info[0]}.{sys.version_info[1]} the panel shows: {shown[0]}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:
        print(f"FAILED: {type(error).__name__}: {error}")
        sys.exit(1)
