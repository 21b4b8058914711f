"""The module uses only the Slicer, CTK, Qt and SlicerPyTorch API that exists (in Slicer 5.10 and its CTK).

Reads the panel, the Widgets package, the self-test, the PyTorch install step (with ``ast``) and the .ui (with
ElementTree), and checks each use against ``Testing/slicer_api/manifest.json`` (names and signatures extracted from
those projects' sources by ``Testing/slicer_api/generate_manifest.py``; Qt's classes written by hand from the Qt 5.15
documentation). A finding names file:line. Needs nothing but the manifest: no Slicer, no network, no mirrors.

What is checked:

* ``slicer.util.X(...)``, ``self.X(...)`` inherited from ScriptedLoadableModule* / VTKObservationMixin, the
  parameterNodeWrapper validators and ``PyTorchUtilsLogic`` methods: the name exists, positional arguments fit,
  every keyword is a parameter (or, through ``**kwargs``, a parameter of the function they go to or a Q_PROPERTY of
  the widget they are set on), no required parameter is missing;
* names under ``slicer.``, ``qt.``, ``ctk.``, ``slicer.util.``, imports from ``slicer.*``; ``self.X`` in the
  classes deriving from Slicer's;
* on every object whose class is known (``self.ui.<name>`` from the .ui, ``qt.QTimer()``, ``slicer.app``, what
  their methods return, and what is passed on to the Widgets package and handlers): ``.connect("signal(args)")``
  names a signal, attribute reads and writes are Q_PROPERTYs (writes: writable ones), calls are public slots,
  Q_INVOKABLEs, PythonQt decorators or (for Qt's own classes) public methods; a Q_PROPERTY is not called;
* the .ui: every widget class, ``<property>`` (dynamic ``stdset="0"`` ones only from the parameterNodeWrapper's
  property names), layout/spacer/item-view pseudo-property, enum value, ``<customwidget>`` base and
  ``<connection>`` signal and slot; every SlicerParameterName field has a parameterNodeWrapper serializer and a GUI
  connector for its widget class (connectors match the exact widget class).

Objects whose class cannot be told statically (MRML nodes, Logic objects) are not checked.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import re
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from xml.parsers import expat

import pytest

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "Testing" / "slicer_api" / "manifest.json"
GENERATOR = REPO / "Testing" / "slicer_api" / "generate_manifest.py"
MODULE = "MaskMedSegmentation"
MODULE_DIR = REPO / MODULE
UI_PATH = f"{MODULE}/Resources/UI/{MODULE}.ui"
SOURCE_PATHS = [
    f"{MODULE}/{MODULE}.py",
    # every file of the Widgets package, so that a piece moved out of the panel is checked like the panel
    *sorted(f"{MODULE}/{MODULE}Widgets/{path.name}" for path in (MODULE_DIR / f"{MODULE}Widgets").glob("*.py")),
    f"{MODULE}/Testing/Python/{MODULE}SelfTest.py",
    f"{MODULE}/{MODULE}Lib/installer.py",
]
PYTHON_MODULES = ("slicer.util", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "PyTorchUtils")
# PythonQt gives a returned object its most derived class: a scripted module's widget representation (declared
# qSlicerAbstractModuleWidget*) is a qSlicerScriptedLoadableModuleWidget (qSlicerScriptedLoadableModule.cxx).
DOWNCASTS = {("qSlicerScriptedLoadableModule", "widgetRepresentation"): "qSlicerScriptedLoadableModuleWidget"}
BUILTIN_TYPES = {"int", "float", "str", "bool", "list", "dict", "tuple"}

Type = tuple[str, ...]  # ("qt", class), ("ui",), ("py", project class), ("api", "slicer.util.X"), ...


# ----------------------------------------------------------------------------------------------------------------
# The manifest
# ----------------------------------------------------------------------------------------------------------------


def normalize_signature(signature: str) -> str:
    """Qt's normalized form, as the manifest stores it: ``f( const QString & )`` -> ``f(QString)``."""
    name, _, rest = signature.strip().partition("(")
    params = []
    for param in filter(None, (p.strip() for p in rest.rstrip(") ").split(","))):
        param = re.sub(r"\s+", " ", param)
        const_ref = re.fullmatch(r"const (.+?) ?&", param)
        param = re.sub(r" ?([*&<>]) ?", r"\1", const_ref.group(1) if const_ref else param)
        params.append(param)
    return f"{name.strip()}({','.join(params)})"


def _name(signature: str) -> str:
    return signature.split("(")[0]


def _arity(signature: str) -> int:
    inside, depth, count = signature[signature.index("(") + 1:-1], 0, 0
    for c in inside:
        depth += (c == "<") - (c == ">")
        count += c == "," and depth == 0
    return count + 1 if inside else 0


class Api:
    """Lookups in the manifest: C++/Qt classes walked through their bases, Python functions and classes."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.m = manifest
        self.classes: dict[str, dict[str, Any]] = {**manifest["handwritten"]["qt"], **manifest["handwritten"]["vtk"],
                                                   **manifest["classes"]}
        self.python = manifest["python"]
        self.pnw = self.python["slicer.parameterNodeWrapper"]

    # ---- C++ / Qt classes
    def known(self, cls: str) -> bool:
        return cls in self.classes

    def ancestors(self, cls: str) -> list[str]:
        order, pending = [], [cls]
        while pending:
            name = pending.pop(0)
            if name in order or name not in self.classes:
                continue
            order.append(name)
            pending += self.classes[name].get("bases", [])
        return order

    def unresolved_bases(self, cls: str) -> list[str]:
        return [b for c in self.ancestors(cls) for b in self.classes[c].get("bases", []) if b not in self.classes]

    def prop(self, cls: str, name: str) -> dict[str, Any] | None:
        for c in self.ancestors(cls):
            found = self.classes[c].get("properties", {}).get(name)
            if found is not None:
                return found
        return None

    def signals(self, cls: str) -> set[str]:
        return {s for c in self.ancestors(cls) for s in self.classes[c].get("signals", [])}

    def slots(self, cls: str) -> set[str]:
        return {s for c in self.ancestors(cls) for s in self.classes[c].get("slots", [])}

    def callables(self, cls: str) -> dict[str, set[int] | None]:
        """Python-callable member names -> parameter counts of their overloads (None: not known, Qt's methods)."""
        result: dict[str, set[int] | None] = {}
        for c in self.ancestors(cls):
            data = self.classes[c]
            for kind in ("signals", "slots", "invokables", "decorators", "static_decorators"):
                for signature in data.get(kind, []):
                    counts = result.setdefault(_name(signature), set())
                    if counts is not None:
                        counts.add(_arity(signature))
            for kind in ("methods", "static_methods"):
                for name in data.get(kind, []):
                    result[name] = None
        return result

    def enum_values(self, cls: str) -> set[str]:
        return {v for c in self.ancestors(cls) for values in self.classes[c].get("enums", {}).values() for v in values}

    def enum_types(self, cls: str) -> set[str]:
        return {name for c in self.ancestors(cls) for name in self.classes[c].get("enums", {})}

    def return_class(self, cls: str, method: str) -> str | None:
        for c in self.ancestors(cls):
            data = self.classes[c]
            if method in data.get("returns", {}):
                return data["returns"][method]
            for kind in ("slots", "invokables", "decorators", "static_decorators"):
                entries = data.get(kind, {})
                if isinstance(entries, dict):
                    for signature, result in entries.items():
                        if _name(signature) == method:
                            return str(result).rstrip("*").strip()
        return None

    def cpp_only(self, cls: str, name: str) -> bool:
        return any(name in self.classes[c].get("cpp_only_methods", []) for c in self.ancestors(cls))

    # ---- Python
    def python_entry(self, qualname: str) -> tuple[str, dict[str, Any]] | None:
        """("function" | "class", data) of ``slicer.util.loadUI``, ``slicer.parameterNodeWrapper.Choice``, ..."""
        module, _, name = qualname.rpartition(".")
        if module == "slicer.parameterNodeWrapper":
            for sub in self.pnw["modules"].values():
                if name in sub["classes"]:
                    return "class", sub["classes"][name]
                if name in sub["functions"]:
                    return "function", sub["functions"][name]
            return None
        data = self.python.get(module)
        if data is None:
            return None
        if name in data.get("functions", {}):
            return "function", data["functions"][name]
        if name in data.get("classes", {}):
            return "class", data["classes"][name]
        return None

    def module_names(self, module: str) -> set[str]:
        if module == "slicer.parameterNodeWrapper":
            return set(self.pnw["exports"])
        data = self.python[module]
        return set(data.get("functions", {})) | set(data.get("classes", {}))

    def class_chain(self, qualname: str) -> list[tuple[str, dict[str, Any]]]:
        """The Python class and its bases (names resolved in its module, then slicer.ScriptedLoadableModule)."""
        chain, pending = [], [qualname]
        while pending:
            qual = pending.pop(0)
            entry = self.python_entry(qual)
            if entry is None or entry[0] != "class" or any(q == qual for q, _ in chain):
                continue
            chain.append((qual, entry[1]))
            module = qual.rpartition(".")[0]
            for base in entry[1]["bases"]:
                if base == "unittest.TestCase":
                    chain.append((base, {"methods": {}, "attributes": self.m["handwritten"]["unittest_testcase"],
                                         "bases": []}))
                for candidate in (f"{module}.{base}", f"slicer.ScriptedLoadableModule.{base}"):
                    if self.python_entry(candidate):
                        pending.append(candidate)
                        break
        return chain

    def python_member(self, qualname: str, name: str) -> tuple[str, dict[str, Any] | None] | None:
        """(owner, signature or None for an attribute) of a member of a Python class or its bases."""
        for qual, data in self.class_chain(qualname):
            if name in data.get("methods", {}):
                return qual, data["methods"][name]
            if name in data.get("attributes", []):
                return qual, None
        return None

    def attribute_type(self, qualname: str, name: str) -> str | None:
        types = self.m["handwritten"]["python_attribute_types"]
        for qual, _ in self.class_chain(qualname):
            if name in types.get(qual, {}):
                return types[qual][name]
        return None

    def accepts_keyword(self, signature: dict[str, Any], keyword: str, seen: frozenset[str] = frozenset()) -> bool:
        """Whether a call may pass ``keyword``: a parameter, or, through ``**kwargs``, a parameter of the function
        they are forwarded to or a Q_PROPERTY of the object they are set on (slicer.util's message functions)."""
        if any(p["name"] == keyword and p["kind"] != "positional_only" for p in signature["parameters"]):
            return True
        if not signature.get("kwarg"):
            return False
        targets = signature.get("kwargs_forwarded_to", [])
        classes = signature.get("kwargs_set_as_properties_of", [])
        if not targets and not classes:
            return True  # **kwargs the manifest cannot follow
        for target in targets:
            entry = self.python_entry(f"slicer.util.{target}")
            if entry is None or entry[0] != "function" or target in seen:
                if entry is None:
                    return True  # forwarded outside slicer.util: not followed
                continue
            if self.accepts_keyword(entry[1], keyword, seen | {target}):
                return True
        return any(self.prop(cls, keyword) is not None for cls in classes)


@cache
def load_api() -> Api:
    return Api(json.loads(MANIFEST.read_text(encoding="utf-8")))


# ----------------------------------------------------------------------------------------------------------------
# The .ui
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Ui:
    root: ET.Element
    lines: dict[int, int]
    widgets: dict[str, str]  # object name -> class
    root_class: str

    def line(self, element: ET.Element) -> int:
        return self.lines.get(id(element), 0)


def parse_ui(text: str) -> Ui:
    root = ET.fromstring(text)
    start_lines: list[int] = []
    parser = expat.ParserCreate()
    parser.StartElementHandler = lambda name, attributes: start_lines.append(parser.CurrentLineNumber)
    parser.Parse(text.encode("utf-8"), True)
    lines = {id(element): line for element, line in zip(root.iter(), start_lines, strict=True)}
    widgets = {w.get("name", ""): w.get("class", "") for w in root.iter("widget")}
    top = root.find("widget")
    assert top is not None, "the .ui has no top-level widget"
    return Ui(root, lines, widgets, top.get("class", ""))


# ----------------------------------------------------------------------------------------------------------------
# The Python sources: scopes and a small static type inference
# ----------------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Scope:
    node: ast.AST
    parent: Scope | None
    file: str
    cls: str | None  # the project class whose method this is (or encloses it)
    params: list[str] = field(default_factory=list)
    assigns: dict[str, list[tuple[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    returns: list[ast.expr] = field(default_factory=list)


@dataclass
class ProjectClass:
    name: str
    file: str
    node: ast.ClassDef
    bases: list[Type]
    methods: dict[str, Scope] = field(default_factory=dict)
    attrs: dict[str, list[tuple[ast.expr, Scope]]] = field(default_factory=lambda: defaultdict(list))
    class_attrs: set[str] = field(default_factory=set)
    wrapped: bool = False  # @parameterNodeWrapper
    fields: dict[str, ast.expr] = field(default_factory=dict)


class Analysis:
    """The module's files, their scopes, and the inferred types of their expressions."""

    def __init__(self, sources: dict[str, str], ui: Ui, api: Api) -> None:
        self.api, self.ui = api, ui
        self.trees = {path: ast.parse(text, filename=path) for path, text in sources.items()}
        self.module_scopes: dict[str, Scope] = {}
        self.scope_of: dict[int, Scope] = {}  # id(expression node) -> the scope it is evaluated in
        self.function_scopes: dict[int, Scope] = {}  # id(FunctionDef/Lambda) -> its scope
        self.parents: dict[int, ast.AST] = {}
        self.classes: dict[str, ProjectClass] = {}
        self.module_functions: dict[tuple[str, str], Scope] = {}
        self.calls: list[tuple[ast.Call, Scope]] = []
        self.calls_by_name: dict[str, list[tuple[ast.Call, Scope]]] = defaultdict(list)
        # Inference results of this round and of the last one (what a cycle reads): see solve().
        self._memo: dict[tuple[Any, ...], Any] = {}
        self._previous: dict[tuple[Any, ...], Any] = {}
        self._busy: set[tuple[Any, ...]] = set()
        for path, tree in self.trees.items():
            for node in ast.walk(tree):
                for child in ast.iter_child_nodes(node):
                    self.parents[id(child)] = node
            scope = Scope(tree, None, path, None)
            self.module_scopes[path] = scope
            self._collect(tree.body, scope)

    # ---- collecting scopes, assignments and calls
    def _collect(self, body: list[ast.stmt], scope: Scope) -> None:
        for statement in body:
            self._statement(statement, scope)

    def _statement(self, node: ast.stmt, scope: Scope) -> None:
        if isinstance(node, ast.ClassDef):
            self._class(node, scope)
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in node.decorator_list:
                self._expressions(decorator, scope)
            self._function(node, scope, scope.cls)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                scope.assigns[local].append(("import", (node, alias)))
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                self._bind(target, node.value, scope)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            self._bind(node.target, node.value, scope)
        elif isinstance(node, ast.For | ast.AsyncFor):
            if isinstance(node.target, ast.Name):
                scope.assigns[node.target.id].append(("iterate", node.iter))
        elif isinstance(node, ast.Return) and node.value is not None:
            scope.returns.append(node.value)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                self._statement(child, scope)
            elif isinstance(child, ast.expr):
                self._expressions(child, scope)
            elif isinstance(child, ast.excepthandler | ast.withitem | ast.match_case | ast.comprehension):
                for sub in ast.iter_child_nodes(child):
                    if isinstance(sub, ast.stmt):
                        self._statement(sub, scope)
                    elif isinstance(sub, ast.expr):
                        self._expressions(sub, scope)

    def _expressions(self, node: ast.expr, scope: Scope) -> None:
        """Give every expression node its scope; lambdas open their own."""
        if isinstance(node, ast.Lambda):
            self._function(node, scope, scope.cls)
            return
        self.scope_of[id(node)] = scope
        if isinstance(node, ast.Call):
            self.calls.append((node, scope))
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            self.calls_by_name[called].append((node, scope))
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self._expressions(child, scope)
            elif isinstance(child, ast.comprehension | ast.keyword):
                for sub in ast.iter_child_nodes(child):
                    if isinstance(sub, ast.expr):
                        self._expressions(sub, scope)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda, parent: Scope,
                  cls: str | None) -> None:
        args = node.args
        for default in [*args.defaults, *[d for d in args.kw_defaults if d is not None]]:
            self._expressions(default, parent)
        scope = Scope(node, parent, parent.file, cls)
        scope.params = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
        self.function_scopes[id(node)] = scope
        if isinstance(node, ast.Lambda):
            self._expressions(node.body, scope)
            scope.returns.append(node.body)
        else:
            self._collect(node.body, scope)
            if parent.parent is None:
                self.module_functions[(parent.file, node.name)] = scope

    def _class(self, node: ast.ClassDef, scope: Scope) -> None:
        project = ProjectClass(node.name, scope.file, node, [])
        project.wrapped = any(isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list)
        self.classes[node.name] = project
        for expression in [*node.bases, *node.decorator_list]:
            self._expressions(expression, scope)
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                for decorator in item.decorator_list:
                    self._expressions(decorator, scope)
                self._function(item, scope, node.name)
                project.methods[item.name] = self.function_scopes[id(item)]
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                project.fields[item.target.id] = item.annotation
                project.class_attrs.add(item.target.id)
                self._expressions(item.annotation, scope)
                if item.value is not None:
                    self._expressions(item.value, scope)
            elif isinstance(item, ast.Assign):
                project.class_attrs.update(t.id for t in item.targets if isinstance(t, ast.Name))
                self._expressions(item.value, scope)
            elif isinstance(item, ast.stmt) and not isinstance(item, ast.Expr | ast.Pass):
                self._statement(item, scope)

    def _bind(self, target: ast.expr, value: ast.expr, scope: Scope) -> None:
        if isinstance(target, ast.Tuple | ast.List):
            if isinstance(value, ast.Tuple | ast.List) and len(value.elts) == len(target.elts):
                for sub_target, sub_value in zip(target.elts, value.elts, strict=True):
                    self._bind(sub_target, sub_value, scope)
            return
        if isinstance(target, ast.Name):
            scope.assigns[target.id].append(("value", value))
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
            method = _enclosing_method(scope)
            if method is not None and method.cls is not None:
                self.classes[method.cls].attrs[target.attr].append((value, scope))

    def solve(self, rounds: int = 8) -> None:
        """Infer every variable, parameter, attribute and return until nothing changes: within a round each is
        computed once, and a cycle (a parameter typed from a call that needs it) reads the last round's result."""
        for project in self.classes.values():
            scope = self.module_scopes[project.file]
            project.bases = [t for t in (self.infer(b, scope) for b in project.node.bases) if t is not None]
        for _ in range(rounds):
            self._memo = {}
            for scope in [*self.module_scopes.values(), *self.function_scopes.values()]:
                for name in [*scope.params, *scope.assigns]:
                    self._variable(scope, name)
            for project in self.classes.values():
                for attr in project.attrs:
                    self._project_attribute(project.name, attr)
            for call, scope in self.calls:
                self.infer(call, scope)
            if self._memo == self._previous:
                break
            self._previous = self._memo

    def _cached(self, key: tuple[Any, ...], compute: Any, empty: Any) -> Any:
        if key in self._memo:
            return self._memo[key]
        if key in self._busy:
            return self._previous.get(key, empty)
        self._busy.add(key)
        try:
            value = compute()
        finally:
            self._busy.discard(key)
        self._memo[key] = value
        return value

    # ---- inference
    def lookup(self, name: str, scope: Scope) -> Type | None:
        current: Scope | None = scope
        while current is not None:
            if name in current.params or name in current.assigns:
                return self._variable(current, name)
            if current.parent is None and (current.file, name) in self.module_functions:
                return ("pyfunc", current.file, name)
            current = current.parent
        if name in self.classes:
            return ("pyclass", name)
        return None

    def _variable(self, scope: Scope, name: str) -> Type | None:
        return self._cached(("var", id(scope), name), lambda: self._compute_variable(scope, name), None)

    def _compute_variable(self, scope: Scope, name: str) -> Type | None:
        types: set[Type] = set()
        if name in scope.params:
            types |= self.param_types(scope, name)
        for kind, source in scope.assigns.get(name, []):
            if kind == "import":
                found = self._import_type(*source)
            elif kind == "iterate":
                found = self._element_type(source, scope)
            else:
                found = self.infer(source, scope)
            if found is not None:
                types.add(found)
        return types.pop() if len(types) == 1 else None

    def _element_type(self, iterable: ast.expr, scope: Scope) -> Type | None:
        if isinstance(iterable, ast.Tuple | ast.List | ast.Set):
            types = {self.infer(e, scope) for e in iterable.elts}
            return types.pop() if len(types) == 1 else None
        return None

    def _import_type(self, node: ast.Import | ast.ImportFrom, alias: ast.alias) -> Type | None:
        if isinstance(node, ast.Import):
            name = alias.name
            return ("module", name) if name in ("qt", "ctk", "vtk", "slicer", "PyTorchUtils") else ("pymodule", name)
        module = node.module or ""
        if module in PYTHON_MODULES:
            kind = self.api.python_entry(f"{module}.{alias.name}")
            return ("apiclass" if kind and kind[0] == "class" else "apifunc", f"{module}.{alias.name}")
        if module == "slicer":
            return self._slicer_attribute(alias.name)
        if alias.name in self.classes:  # a project class imported by name (`from .lossplot import LossPlot`)
            return ("pyclass", alias.name)
        return ("pymodule", f"{module}.{alias.name}")

    def _slicer_attribute(self, name: str) -> Type | None:
        if name == "app":
            return ("qt", "qSlicerApplication")
        if name == "mrmlScene":
            return ("qt", "vtkMRMLScene")
        if name in ("util", "modules", "parameterNodeWrapper", "ScriptedLoadableModule"):
            return ("module", f"slicer.{name}")
        if self.api.known(name):
            return ("qtclass", name)
        return ("extclass", name)

    def param_types(self, scope: Scope, name: str) -> set[Type]:
        """Types of a parameter: ``self`` of a method, handlers' signal arguments, arguments at the call sites."""
        return self._cached(("param", id(scope), name), lambda: self._compute_param(scope, name), set())

    def _compute_param(self, scope: Scope, name: str) -> set[Type]:
        index = scope.params.index(name)
        method = isinstance(scope.node, ast.FunctionDef) and scope.cls is not None and \
            not any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in scope.node.decorator_list)
        if method and index == 0 and scope.cls is not None:
            return {("py", scope.cls)}
        types: set[Type] = set()
        called = getattr(scope.node, "name", "<lambda>")
        if called == "__init__" and scope.cls:
            called = scope.cls
        for call, caller in [*self.calls_by_name.get(called, []), *self.calls_by_name.get("connect", [])]:
            target = self.call_target(call, caller)
            if target is not None and target[0] is scope:
                position = index - target[1]
                if 0 <= position < len(call.args) and not isinstance(call.args[position], ast.Starred):
                    found = self.infer(call.args[position], caller)
                    if found is not None:
                        types.add(found)
                for keyword in call.keywords:
                    if keyword.arg == name:
                        found = self.infer(keyword.value, caller)
                        if found is not None:
                            types.add(found)
            # a handler connected to a signal: its arguments are the signal's
            if isinstance(call.func, ast.Attribute) and call.func.attr == "connect" and len(call.args) == 2 and \
                    isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
                handler = self.handler_target(call.args[1], caller)
                if handler is not None and handler[0] is scope:
                    arguments = normalize_signature(call.args[0].value)
                    inside = arguments[arguments.index("(") + 1:-1]
                    values = [a for a in inside.split(",") if a]
                    position = index - handler[1]
                    if 0 <= position < len(values) and self.api.known(values[position].rstrip("*")):
                        types.add(("qt", values[position].rstrip("*")))
        return types

    def handler_target(self, expression: ast.expr, scope: Scope) -> tuple[Scope, int] | None:
        if isinstance(expression, ast.Lambda):
            return self.function_scopes[id(expression)], 0
        found = self.infer(expression, scope)
        if found and found[0] == "pymethod":
            return self.classes[found[1]].methods[found[2]], 1
        return None

    def call_target(self, call: ast.Call, scope: Scope) -> tuple[Scope, int] | None:
        """The project function a call runs, and how many leading parameters are bound (``self``)."""
        found = self.infer(call.func, scope)
        if found is None:
            return None
        if found[0] == "pymethod":
            method = self.classes[found[1]].methods[found[2]]
            static = any(isinstance(d, ast.Name) and d.id == "staticmethod"
                         for d in getattr(method.node, "decorator_list", []))
            return method, 0 if static else 1
        if found[0] == "pyclass" and "__init__" in self.classes[found[1]].methods:
            return self.classes[found[1]].methods["__init__"], 1
        if found[0] == "pyfunc":
            return self.module_functions[(found[1], found[2])], 0
        return None

    def infer(self, node: ast.expr, scope: Scope) -> Type | None:
        if isinstance(node, ast.Name):
            return self.lookup(node.id, scope)
        if isinstance(node, ast.Attribute):
            return self._attribute_type(node, scope)
        if isinstance(node, ast.Call):
            return self._call_type(node, scope)
        if isinstance(node, ast.IfExp):
            types = {self.infer(node.body, scope), self.infer(node.orelse, scope)} - {None}
            return types.pop() if len(types) == 1 else None
        return None

    def _attribute_type(self, node: ast.Attribute, scope: Scope) -> Type | None:
        owner = self.infer(node.value, scope)
        if owner is None:
            return ("pyclass", node.attr) if node.attr in self.classes else None
        kind, attr = owner[0], node.attr
        if kind == "module":
            module = owner[1]
            if module == "slicer":
                return self._slicer_attribute(attr)
            if module == "qt":
                return ("qtclass", attr) if self.api.known(attr) else None
            if module == "ctk":
                return ("qtclass", attr) if self.api.known(attr) else ("extclass", attr)
            if module == "slicer.modules":
                return ("qt", "qSlicerScriptedLoadableModule") if attr == MODULE.lower() else None
            if module in PYTHON_MODULES or module == "PyTorchUtils":
                entry = self.api.python_entry(f"{module}.{attr}")
                if entry:
                    return ("apiclass" if entry[0] == "class" else "apifunc", f"{module}.{attr}")
            return None
        if kind == "ui":
            return ("qt", self.ui.widgets[attr]) if attr in self.ui.widgets else None
        if kind == "py":
            return self._project_attribute(owner[1], attr)
        if kind in ("pymodule", "pyfunc") or attr in self.classes:
            return ("pyclass", attr) if attr in self.classes else None
        return None

    def _project_attribute(self, cls: str, attr: str) -> Type | None:
        return self._cached(("attr", cls, attr), lambda: self._compute_project_attribute(cls, attr), None)

    def _compute_project_attribute(self, cls: str, attr: str) -> Type | None:
        project = self.classes[cls]
        if attr in project.methods:
            return ("pymethod", cls, attr)
        types = {self.infer(value, scope) for value, scope in project.attrs.get(attr, [])} - {None}
        if len(types) == 1:
            return types.pop()
        for base in project.bases:
            if base[0] == "apiclass":
                declared = self.api.attribute_type(base[1], attr)
                if declared:
                    return ("qt", declared)
        return None

    def _call_type(self, node: ast.Call, scope: Scope) -> Type | None:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "super" and scope.cls:
            return ("super", scope.cls)
        if isinstance(func, ast.Attribute):
            owner = self.infer(func.value, scope)
            if owner and owner[0] == "qt":
                down = DOWNCASTS.get((owner[1], func.attr))
                if down:
                    return ("qt", down)
                if func.attr == "self" and any(c == "qSlicerScriptedLoadableModuleWidget"
                                               for c in self.api.ancestors(owner[1])):
                    widget = f"{MODULE}Widget"
                    return ("py", widget) if widget in self.classes else None
                result = self.api.return_class(owner[1], func.attr)
                return ("qt", result) if result and self.api.known(result) else None
        found = self.infer(func, scope)
        if found is None:
            return None
        if found[0] == "qtclass":
            return ("qt", found[1])
        if found[0] == "pyclass":
            return ("py", found[1])
        if found[0] == "apiclass":
            return ("api", found[1])
        if found == ("apifunc", "slicer.util.loadUI"):
            return ("qt", self.ui.root_class)
        if found == ("apifunc", "slicer.util.childWidgetVariables"):
            return ("ui",)
        if found[0] in ("pymethod", "pyfunc"):
            target = self.call_target(node, scope)
            if target is None:
                return None
            return self._cached(("return", id(target[0])), lambda: self._return_type(target[0]), None)
        return None

    def _return_type(self, scope: Scope) -> Type | None:
        types = {self.infer(value, scope) for value in scope.returns} - {None}
        return types.pop() if len(types) == 1 else None


def _enclosing_method(scope: Scope) -> Scope | None:
    current: Scope | None = scope
    while current is not None and not isinstance(current.node, ast.FunctionDef | ast.AsyncFunctionDef):
        current = current.parent
    return current


# ----------------------------------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------------------------------


def _suggest(name: str, candidates: Iterator[str] | set[str] | list[str]) -> str:
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


class Checker:
    def __init__(self, analysis: Analysis) -> None:
        self.a = analysis
        self.api = analysis.api
        self.findings: list[str] = []

    def report(self, path: str, line: int, message: str) -> None:
        self.findings.append(f"{path}:{line}: {message}")

    # ---- Python
    def check_python(self) -> None:
        for path, tree in self.a.trees.items():
            for node in ast.walk(tree):
                scope = self.a.scope_of.get(id(node))
                if isinstance(node, ast.ImportFrom):
                    self._check_import(path, node)
                if scope is None:
                    continue
                if isinstance(node, ast.Attribute):
                    self._check_attribute(path, node, scope)
                elif isinstance(node, ast.Call):
                    self._check_call(path, node, scope)

    def _check_import(self, path: str, node: ast.ImportFrom) -> None:
        module = node.module or ""
        for alias in node.names:
            if module in PYTHON_MODULES and alias.name not in self.api.module_names(module):
                self.report(path, node.lineno, f"{module} has no {alias.name}"
                            + _suggest(alias.name, self.api.module_names(module)))
            elif module == "slicer" and not self._slicer_name(alias.name):
                self.report(path, node.lineno, f"slicer has no {alias.name}")

    def _slicer_name(self, name: str) -> bool:
        slicer = self.api.python["slicer"]
        return (name in slicer["application_attributes"] or name in slicer["submodules"]
                or name in self.api.m["namespaces"]["slicer"])

    def _check_attribute(self, path: str, node: ast.Attribute, scope: Scope) -> None:
        owner = self.a.infer(node.value, scope)
        if owner is None:
            return
        attr, line = node.attr, node.lineno
        parent = self.a.parents.get(id(node))
        called = isinstance(parent, ast.Call) and parent.func is node
        stored = isinstance(node.ctx, ast.Store)
        kind = owner[0]
        if kind == "module":
            module = owner[1]
            if module == "slicer" and not self._slicer_name(attr):
                self.report(path, line, f"slicer.{attr} does not exist in Slicer"
                            + _suggest(attr, self.api.m["namespaces"]["slicer"]))
            elif module == "qt" and not self.api.known(attr):
                self.report(path, line, f"qt.{attr} is not a Qt class in the manifest (hand-written Qt section)")
            elif module == "ctk" and attr not in self.api.m["namespaces"]["ctk"]:
                self.report(path, line, f"ctk.{attr} does not exist in CTK")
            elif module in PYTHON_MODULES and attr not in self.api.module_names(module):
                self.report(path, line, f"{module}.{attr} does not exist"
                            + _suggest(attr, self.api.module_names(module)))
            elif module == "slicer.modules" and not self._slicer_module(attr):
                self.report(path, line, f"slicer.modules.{attr}: no such module (the lower-case name of a module "
                                        f"Slicer ships, of {MODULE} or of PyTorchUtils)")
            elif module == "PyTorchUtils" and self.api.python_entry(f"PyTorchUtils.{attr}") is None:
                self.report(path, line, f"PyTorchUtils.{attr} does not exist")
        elif kind == "ui":
            if attr not in self.a.ui.widgets:
                self.report(path, line, f"the .ui has no widget named {attr}" + _suggest(attr, self.a.ui.widgets))
        elif kind == "qtclass":
            cls = owner[1]
            names = self.api.enum_values(cls) | self.api.enum_types(cls) | set(self.api.callables(cls))
            if attr not in names:
                self.report(path, line, f"{cls}.{attr}: no such enum value or static method" + _suggest(attr, names))
        elif kind == "qt":
            self._check_member(path, line, owner[1], attr, called, stored, parent)
        elif kind in ("api", "apiclass"):
            if self.api.python_member(owner[1], attr) is None:
                self.report(path, line, f"{owner[1]} has no member {attr}")
        elif kind == "py":
            self._check_project_member(path, line, owner[1], attr)
        elif kind == "super":
            project = self.a.classes[owner[1]]
            bases = [b[1] for b in project.bases if b[0] == "apiclass"]
            if bases and not any(self.api.python_member(b, attr) for b in bases):
                self.report(path, line, f"super().{attr}: not a member of {', '.join(bases)}")

    def _slicer_module(self, attr: str) -> bool:
        """slicer.modules.<name> (lower case), <Name>Instance and <Name>Widget (scripted modules)."""
        modules = {*self.api.m["namespaces"]["slicer_modules"], MODULE}
        modules |= {name for name, data in self.api.python["PyTorchUtils"]["classes"].items()
                    if "ScriptedLoadableModule" in data["bases"]}
        lower = {m.lower() for m in modules}
        suffixes = ("Instance", "Widget")
        return attr in lower or any(attr.endswith(s) and attr.removesuffix(s) in modules for s in suffixes)

    def _check_project_member(self, path: str, line: int, cls: str, attr: str) -> None:
        project = self.a.classes[cls]
        if project.wrapped:
            wrapper = self.api.pnw["wrapper_members"]
            allowed = set(project.fields) | set(wrapper["members"]) | set(wrapper["instance_attributes"])
            if attr not in allowed and attr not in project.methods:
                self.report(path, line, f"{cls} (a parameterNodeWrapper) has no field or member {attr}"
                            + _suggest(attr, allowed))
            return
        bases = [b[1] for b in project.bases if b[0] == "apiclass"]
        if not bases or attr in project.methods or attr in project.attrs or attr in project.class_attrs:
            return
        if not any(self.api.python_member(b, attr) for b in bases):
            self.report(path, line, f"{attr} is defined neither by {cls} nor by {', '.join(bases)}")

    def _check_member(self, path: str, line: int, cls: str, attr: str, called: bool, stored: bool,
                      parent: ast.AST | None) -> None:
        api = self.api
        if not api.known(cls):
            return  # reported where the class comes from (the .ui)
        prop = api.prop(cls, attr)
        callables = api.callables(cls)
        enums = api.enum_values(cls)
        if stored:
            if prop is None:
                self.report(path, line, f"{cls}.{attr} = ...: {attr} is not a Q_PROPERTY of {cls} or its bases"
                            + self._why(cls, attr))
            elif not prop.get("writable", True):
                self.report(path, line, f"{cls}.{attr} = ...: the Q_PROPERTY {attr} is read-only")
            return
        if called:
            if prop is not None:  # PythonQt looks properties up before methods: the value is returned
                self.report(path, line, f"{cls}.{attr} is a Q_PROPERTY: PythonQt returns its value, read it "
                                        f"without calling it")
                return
            if attr in callables:
                counts = callables[attr]
                if counts is not None and isinstance(parent, ast.Call) and not parent.keywords and \
                        not any(isinstance(a, ast.Starred) for a in parent.args) and len(parent.args) not in counts:
                    self.report(path, line, f"{cls}.{attr}() takes {sorted(counts)} arguments, not {len(parent.args)}")
                return
            self.report(path, line, f"{cls}.{attr}(): {self._not_callable(cls)}" + self._why(cls, attr)
                        + _suggest(attr, set(callables)))
            return
        if prop is None and attr not in callables and attr not in enums:
            self.report(path, line, f"{cls}.{attr}: not a Q_PROPERTY (or member) of {cls} or its bases"
                        + self._why(cls, attr) + _suggest(attr, {*self._properties(cls), *callables}))

    def _not_callable(self, cls: str) -> str:
        bindings = {self.api.classes[c].get("binding") for c in self.api.ancestors(cls)}
        if bindings == {"vtk"}:
            return f"not a public method of {cls} or its bases (VTK-wrapped)"
        return (f"not a signal, public slot, Q_INVOKABLE or PythonQt decorator of {cls} or its bases, nor a public "
                "method of their Qt classes in the manifest")

    def _properties(self, cls: str) -> set[str]:
        return {p for c in self.api.ancestors(cls) for p in self.api.classes[c].get("properties", {})}

    def _why(self, cls: str, attr: str) -> str:
        if self.api.cpp_only(cls, attr):
            return " (a C++ method that is no slot or Q_INVOKABLE: PythonQt does not expose it)"
        missing = self.api.unresolved_bases(cls)
        return f" (bases not in the manifest: {', '.join(missing)})" if missing else ""

    def _check_call(self, path: str, node: ast.Call, scope: Scope) -> None:
        func = node.func
        # .connect("signal(args)", handler) on an object of known class
        if isinstance(func, ast.Attribute) and func.attr == "connect" and node.args and \
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            owner = self.a.infer(func.value, scope)
            if owner and owner[0] == "qt":
                signature = normalize_signature(node.args[0].value)
                signals = self.api.signals(owner[1])
                if signature not in signals:
                    self.report(path, node.lineno, f"{owner[1]} has no signal {signature}"
                                + _suggest(signature, signals) + self._why(owner[1], _name(signature)))
            return
        if isinstance(func, ast.Name) and func.id in ("hasattr", "getattr") and len(node.args) >= 2 and \
                isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str) and \
                self.a.infer(node.args[0], scope) == ("module", "slicer.modules") and \
                not self._slicer_module(node.args[1].value):
            self.report(path, node.lineno, f"slicer.modules has no module {node.args[1].value!r}")
        found = self.a.infer(func, scope)
        signature: dict[str, Any] | None = None
        what, bound_self = "", 0
        if found and found[0] == "apifunc":
            entry = self.api.python_entry(found[1])
            signature, what = (entry[1], found[1]) if entry else (None, "")
        elif found and found[0] == "apiclass":
            member = self.api.python_member(found[1], "__init__")
            signature, what = (member[1], found[1]) if member else (None, "")
        elif isinstance(func, ast.Attribute):
            owner = self.a.infer(func.value, scope)
            if owner is None:
                return
            if owner[0] == "apiclass":  # Base.method(self, ...)
                member = self.api.python_member(owner[1], func.attr)
                if member and member[1] is not None:
                    signature, what = member[1], f"{member[0]}.{func.attr}"
                    static = member[1].get("static", False)
                    bound_self = 0 if static else 1
            elif owner[0] == "api" or (owner[0] == "super"):
                bases = [owner[1]] if owner[0] == "api" else \
                    [b[1] for b in self.a.classes[owner[1]].bases if b[0] == "apiclass"]
                for base in bases:
                    member = self.api.python_member(base, func.attr)
                    if member and member[1] is not None:
                        signature, what = member[1], f"{member[0]}.{func.attr}"
                        break
            elif owner[0] == "py":
                project = self.a.classes[owner[1]]
                if project.wrapped and func.attr not in project.methods:
                    signature = self.api.pnw["wrapper_members"]["members"].get(func.attr)
                    what = f"parameterNodeWrapper {func.attr}"
                elif func.attr not in project.methods:
                    for base in (b[1] for b in project.bases if b[0] == "apiclass"):
                        member = self.api.python_member(base, func.attr)
                        if member and member[1] is not None:
                            signature, what = member[1], f"{member[0]}.{func.attr}"
                            break
        if found and found[0] == "pyclass" and self.a.classes[found[1]].wrapped:
            signature, what = self.api.pnw["wrapper_members"]["init"], f"{found[1]} (a parameterNodeWrapper)"
        if signature is not None:
            self._check_arguments(path, node, signature, what, bound_self)

    def _check_arguments(self, path: str, node: ast.Call, signature: dict[str, Any], what: str,
                         bound_self: int) -> None:
        parameters = signature["parameters"]
        positional = [p for p in parameters if p["kind"] != "keyword_only"]
        starred = any(isinstance(a, ast.Starred) for a in node.args)
        count = len(node.args) - bound_self
        if not starred and count > len(positional) and not signature.get("vararg"):
            self.report(path, node.lineno, f"{what}() takes at most {len(positional)} positional arguments, "
                                           f"{count} given")
        given = {p["name"] for p in positional[:max(count, 0)]}
        double_starred = any(k.arg is None for k in node.keywords)
        for keyword in node.keywords:
            if keyword.arg is None:
                continue
            if keyword.arg in given:
                self.report(path, keyword.lineno, f"{what}(): {keyword.arg} given twice")
            if not self.api.accepts_keyword(signature, keyword.arg):
                names = [p["name"] for p in parameters]
                self.report(path, keyword.lineno, f"{what}() has no parameter {keyword.arg} (it takes "
                                               f"{', '.join(names) or 'none'}"
                            + (", **" + signature["kwarg"] if signature.get("kwarg") else "") + ")"
                            + _suggest(keyword.arg, names))
            given.add(keyword.arg)
        if not starred and not double_starred:
            missing = [p["name"] for p in parameters if not p["default"] and p["name"] not in given]
            if missing:
                self.report(path, node.lineno, f"{what}() is missing {', '.join(missing)}")

    # ---- the parameter node and its widgets
    def check_parameter_node(self) -> None:
        wrapped = [c for c in self.a.classes.values() if c.wrapped]
        fields = {name: (c, annotation) for c in wrapped for name, annotation in c.fields.items()}
        for cls in wrapped:
            for name, annotation in cls.fields.items():
                base = self._unannotated(annotation, self.a.module_scopes[cls.file])
                if base is None or not self._serializable(base):
                    self.report(cls.file, annotation.lineno, f"{cls.name}.{name}: no parameterNodeWrapper "
                                                             f"serializer for {ast.unparse(annotation)}")
        parameter_property = self.api.pnw["modules"]["wrapper"]["string_constants"]["SlicerParameterNamePropertyName"]
        for widget in self.a.ui.root.iter("widget"):
            bound = next((p for p in widget.findall("property") if p.get("name") == parameter_property), None)
            if bound is None:
                continue
            value = bound.find("string")
            name = (value.text or "").strip() if value is not None else ""
            line = self.a.ui.line(value if value is not None else bound)
            if name not in fields:
                self.report(UI_PATH, line, f"{widget.get('name')}: {parameter_property} {name!r} is no parameter "
                                           "node field")
                continue
            cls, annotation = fields[name]
            base = self._unannotated(annotation, self.a.module_scopes[cls.file])
            widget_class = widget.get("class", "")
            if base is None or not any(self._connector_fits(c, widget_class, base)
                                       for c in self.api.pnw["gui_connectors"]):
                self.report(UI_PATH, line, f"{widget.get('name')}: no parameterNodeWrapper GUI connector binds a "
                                           f"{widget_class} to {name}: {ast.unparse(annotation)}")

    def _unannotated(self, annotation: ast.expr, scope: Scope) -> Type | None:
        if isinstance(annotation, ast.Subscript) and _dotted_name(annotation.value) in ("Annotated",
                                                                                        "typing.Annotated"):
            inner = annotation.slice
            return self._unannotated(inner.elts[0] if isinstance(inner, ast.Tuple) else inner, scope)
        if isinstance(annotation, ast.Name) and annotation.id in BUILTIN_TYPES:
            return ("builtin", annotation.id)
        found = self.a.infer(annotation, scope)
        if found and found[0] in ("qtclass", "extclass") and found[1].startswith("vtkMRML"):
            return ("node", found[1])
        if found and found[0] == "pymodule":
            return ("python", found[1])  # e.g. pathlib.Path from `from pathlib import Path`
        return None

    def _is_node(self, cls: str) -> bool:
        hierarchy = self.api.m["mrml_node_hierarchy"]
        seen = set()
        while cls in hierarchy and cls not in seen:
            seen.add(cls)
            if cls == "vtkMRMLNode":
                return True
            cls = hierarchy[cls][0]
        return cls == "vtkMRMLNode"

    def _type_matches(self, base: Type, exact: list[str], subclass_of: list[str]) -> bool:
        if base[0] == "node":
            return "slicer.vtkMRMLNode" in subclass_of and self._is_node(base[1])
        return base[1] in exact

    def _serializable(self, base: Type) -> bool:
        return any(self._type_matches(base, s["data_types"], s["data_subclass_of"])
                   for s in self.api.pnw["serializers"])

    def _connector_fits(self, connector: dict[str, Any], widget_class: str, base: Type) -> bool:
        return widget_class in connector["widget_classes"] and \
            self._type_matches(base, connector["data_types"], connector["data_subclass_of"])

    # ---- the .ui
    def check_ui(self) -> None:
        ui, api = self.a.ui, self.api
        dynamic = {v for sub in self.api.pnw["modules"].values() for v in sub["string_constants"].values()}
        for element in ui.root.iter():
            tag = element.tag
            if tag == "widget":
                self._check_ui_widget(element, dynamic)
            elif tag == "layout":
                cls = element.get("class", "")
                if not api.known(cls):
                    self.report(UI_PATH, ui.line(element), f"layout class {cls} is not in the manifest")
                for prop in element.findall("property"):
                    name = prop.get("name", "")
                    if api.prop(cls, name) is None and api.prop("designer:layout", name) is None:
                        self.report(UI_PATH, ui.line(prop), f"{cls} has no property {name}")
            elif tag == "spacer":
                for prop in element.findall("property"):
                    if api.prop("designer:spacer", prop.get("name", "")) is None:
                        self.report(UI_PATH, ui.line(prop), f"a spacer has no property {prop.get('name')}")
            elif tag in ("enum", "set"):
                for value in (element.text or "").split("|"):
                    self._check_enum_value(value.strip(), ui.line(element))
        for custom in ui.root.iter("customwidget"):
            cls, extends = custom.findtext("class", ""), custom.findtext("extends", "")
            extends_element = custom.find("extends")
            if not api.known(cls):
                self.report(UI_PATH, ui.line(custom), f"custom widget {cls} is not in the manifest")
            elif extends not in api.ancestors(cls):
                line = ui.line(extends_element if extends_element is not None else custom)
                self.report(UI_PATH, line, f"custom widget {cls} does not derive from {extends} "
                                                      f"(its bases: {' -> '.join(api.ancestors(cls)[1:])})")
        for connection in ui.root.iter("connection"):
            line = ui.line(connection)
            signal_line, slot_line = (ui.line(_child(connection, tag)) for tag in ("signal", "slot"))
            sender, receiver = connection.findtext("sender", ""), connection.findtext("receiver", "")
            signal = normalize_signature(connection.findtext("signal", ""))
            slot = normalize_signature(connection.findtext("slot", ""))
            sender_class, receiver_class = ui.widgets.get(sender), ui.widgets.get(receiver)
            if sender_class is None or receiver_class is None:
                self.report(UI_PATH, line, f"connection between unknown widgets {sender} and {receiver}")
                continue
            if signal not in api.signals(sender_class):
                self.report(UI_PATH, signal_line, f"{sender} ({sender_class}) has no signal {signal}"
                            + _suggest(signal, api.signals(sender_class)))
            if slot not in api.slots(receiver_class) | api.signals(receiver_class):
                self.report(UI_PATH, slot_line, f"{receiver} ({receiver_class}) has no slot {slot}"
                            + _suggest(slot, api.slots(receiver_class)))

    def _check_ui_widget(self, widget: ET.Element, dynamic: set[str]) -> None:
        ui, api = self.a.ui, self.api
        cls, name = widget.get("class", ""), widget.get("name", "")
        if not api.known(cls):
            self.report(UI_PATH, ui.line(widget), f"{name}: widget class {cls} is not in the manifest "
                                                  "(add it to WIDGET_CLASSES in generate_manifest.py)")
            return
        for prop in widget.findall("property"):
            prop_name = prop.get("name", "")
            if prop.get("stdset") == "0":
                # Dynamic properties: only the ones parameterNodeWrapper reads (SlicerParameterName, and
                # SlicerPackParameterName for parameter packs); any other is a typo of a real property.
                if prop_name not in dynamic:
                    self.report(UI_PATH, ui.line(prop), f"{name}: dynamic property {prop_name} is not one "
                                                        f"parameterNodeWrapper reads ({', '.join(sorted(dynamic))})")
            elif api.prop(cls, prop_name) is None:
                self.report(UI_PATH, ui.line(prop), f"{name}: {cls} has no Q_PROPERTY {prop_name}"
                            + _suggest(prop_name, self._properties(cls)))
        for attribute in widget.findall("attribute"):
            attr_name = attribute.get("name", "")
            if "QAbstractItemView" in api.ancestors(cls):
                if api.prop("designer:itemview_attributes", attr_name) is None:
                    self.report(UI_PATH, ui.line(attribute), f"{name}: no item view attribute {attr_name}")
            else:
                self.report(UI_PATH, ui.line(attribute), f"{name}: attribute {attr_name} is not checked for {cls}")
        for item in [*widget.findall("column"), *widget.findall("row"), *widget.findall("item")]:
            for prop in item.findall("property"):
                if api.prop("designer:item", prop.get("name", "")) is None:
                    self.report(UI_PATH, ui.line(prop), f"{name}: an item has no property {prop.get('name')}")

    def _check_enum_value(self, value: str, line: int) -> None:
        if "::" not in value:
            return
        scope, _, name = value.rpartition("::")
        if not self.api.known(scope):
            self.report(UI_PATH, line, f"enum {value}: {scope} is not in the manifest")
        elif name not in self.api.enum_values(scope):
            self.report(UI_PATH, line, f"enum {value}: {scope} has no such value"
                        + _suggest(name, self.api.enum_values(scope)))


def _child(element: ET.Element, tag: str) -> ET.Element:
    """The child ``tag`` of ``element``, or ``element`` itself (for a line number)."""
    child = element.find(tag)
    return child if child is not None else element


def _dotted_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted_name(node.value)}.{node.attr}"
    return ""


def conformance_findings(sources: dict[str, str], ui_text: str, api: Api | None = None) -> list[str]:
    """Every use of the Slicer/CTK/Qt/SlicerPyTorch API in ``sources`` and the .ui that the manifest lacks."""
    api = api or load_api()
    analysis = Analysis(sources, parse_ui(ui_text), api)
    analysis.solve()
    checker = Checker(analysis)
    checker.check_python()
    checker.check_parameter_node()
    checker.check_ui()
    return sorted(set(checker.findings), key=lambda f: (f.split(":")[0], int(f.split(":")[1]), f))


def _project_sources() -> tuple[dict[str, str], str]:
    sources = {path: (REPO / path).read_text(encoding="utf-8") for path in SOURCE_PATHS}
    return sources, (REPO / UI_PATH).read_text(encoding="utf-8")


@cache
def _project_findings() -> tuple[str, ...]:
    return tuple(conformance_findings(*_project_sources()))


# ----------------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------------


def test_manifest_records_its_sources():
    manifest = load_api().m
    assert manifest["sources"]["slicer"]["revision"] == "v5.10.0"
    for source in ("slicer", "ctk", "slicerpytorch"):
        assert re.fullmatch(r"[0-9a-f]{40}", manifest["sources"][source]["commit"]), source
    assert "Qt 5.15" in manifest["handwritten"]["note"]
    # every base class resolves: extracted from the sources, or written by hand
    api = load_api()
    for cls in manifest["classes"]:
        assert not api.unresolved_bases(cls), (cls, api.unresolved_bases(cls))


def test_manifest_is_what_the_generator_writes(tmp_path):
    """Where the source mirrors are on this machine: regenerating from the recorded commits gives the manifest."""
    spec = importlib.util.spec_from_file_location("generate_manifest", GENERATOR)
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = generator  # dataclasses look their module up there
    try:
        spec.loader.exec_module(generator)
    finally:
        sys.modules.pop(spec.name, None)
    recorded = load_api().m["sources"]
    repositories = {name: Path(recorded[name]["read_from"]) for name in ("slicer", "ctk", "slicerpytorch")}
    if not all(path.exists() for path in repositories.values()):
        pytest.skip("the Slicer, CTK and SlicerPyTorch mirrors are not on this machine")
    output = tmp_path / "manifest.json"
    generator.main([
        "--slicer-repo", str(repositories["slicer"]), "--slicer-rev", recorded["slicer"]["commit"],
        "--ctk-repo", str(repositories["ctk"]), "--ctk-rev", recorded["ctk"]["commit"],
        "--pytorch-repo", str(repositories["slicerpytorch"]), "--pytorch-rev", recorded["slicerpytorch"]["commit"],
        "--output", str(output)])
    regenerated = json.loads(output.read_text(encoding="utf-8"))
    committed = dict(load_api().m)
    for manifest in (regenerated, committed):
        manifest.pop("sources")
    assert regenerated == committed, "manifest.json is stale: run Testing/slicer_api/generate_manifest.py"


def test_module_uses_only_api_in_the_manifest():
    findings = _project_findings()
    assert not findings, "uses not in Testing/slicer_api/manifest.json:\n" + "\n".join(findings)


def test_the_checker_sees_the_module():
    """Guards against a check that passes because it resolves nothing: the objects it must type are typed."""
    sources, ui_text = _project_sources()
    analysis = Analysis(sources, parse_ui(ui_text), load_api())
    analysis.solve()
    typed: dict[str, set[Type]] = defaultdict(set)
    for path, tree in analysis.trees.items():
        for node in ast.walk(tree):
            scope = analysis.scope_of.get(id(node))
            if scope is not None and isinstance(node, ast.Attribute | ast.Name):
                found = analysis.infer(node, scope)
                if found is not None:
                    typed[f"{Path(path).name}:{ast.unparse(node)}"].add(found)
    expected = {
        f"{MODULE}.py:self.ui.queryConfidenceSlider": ("qt", "ctkSliderWidget"),
        f"{MODULE}.py:uiWidget": ("qt", "qMRMLWidget"),
        f"{MODULE}.py:self.pollTimer": ("qt", "QTimer"),
        f"{MODULE}.py:combo": ("qt", "QComboBox"),
        f"{MODULE}.py:self.layout": ("qt", "QLayout"),
        f"{MODULE}.py:self.parent": ("qt", "qSlicerScriptedLoadableModuleWidget"),
        f"{MODULE}.py:self._parameterNode": ("py", "MaskMedSegmentationParameterNode"),
        "dependencypanel.py:self.ui.installDependenciesButton": ("qt", "QPushButton"),
        "finetunepanel.py:self.ui.fineTuneProgressBar": ("qt", "QProgressBar"),
        "finetunepanel.py:self.pollTimer": ("qt", "QTimer"),
        "lossplot.py:frame": ("qt", "QFrame"),
        "lossplot.py:self.view": ("qt", "qMRMLPlotView"),
        "resulttables.py:table": ("qt", "QTableWidget"),
        "resulttables.py:item": ("qt", "QTableWidgetItem"),
        f"{MODULE}SelfTest.py:widget": ("py", f"{MODULE}Widget"),
        f"{MODULE}SelfTest.py:widget.ui.classTable": ("qt", "QTableWidget"),
        f"{MODULE}SelfTest.py:slicer.app": ("qt", "qSlicerApplication"),
        "installer.py:PyTorchUtils.PyTorchUtilsLogic": ("apiclass", "PyTorchUtils.PyTorchUtilsLogic"),
    }
    for key, value in expected.items():
        assert value in typed.get(key, set()), (key, typed.get(key))


def _replace_once(text: str, old: str, new: str) -> tuple[str, int]:
    """``text`` with the first ``old`` replaced, and the 1-based line of the change."""
    index = text.index(old)
    return text[:index] + new + text[index + len(old):], text.count("\n", 0, index) + 1


PANEL, SELF_TEST, INSTALLER = SOURCE_PATHS[0], SOURCE_PATHS[-2], SOURCE_PATHS[-1]
DEPENDENCIES, FINE_TUNE, LOSS_PLOT, RESULT_TABLES = (
    f"{MODULE}/{MODULE}Widgets/{name}.py" for name in ("dependencypanel", "finetunepanel", "lossplot", "resulttables")
)
PLANTED = [
    # (file, original text, planted mistake, words the finding must contain)
    (PANEL, 'slider.connect("valueChanged(double)"', 'slider.connect("valueChange(double)"',
     ["ctkSliderWidget has no signal valueChange(double)", "valueChanged(double)"]),
    (DEPENDENCIES, 'windowTitle="Install MaskMed dependencies"):', 'windowTitel="Install MaskMed dependencies"):',
     ["slicer.util.confirmOkCancelDisplay() has no parameter windowTitel"]),
    (UI_PATH, '<property name="caption">', '<property name="captionText">',
     ["ctkDirectoryButton has no Q_PROPERTY captionText", "caption"]),
    (PANEL, "slicer.util.loadUI(", "slicer.util.loadUi(", ["slicer.util.loadUi does not exist", "loadUI"]),
    (PANEL, "slicer.util.setSliceViewerLayers(background=", "slicer.util.setSliceViewerLayers(backgroundNode=",
     ["has no parameter backgroundNode"]),
    (PANEL, "self.ui.resultsCollapsibleButton.collapsed = False", "self.ui.resultsCollapsibleButton.collapse = False",
     ["ctkCollapsibleButton.collapse = ...: collapse is not a Q_PROPERTY"]),
    (PANEL, "combo.setItemData(combo.count - 1", "combo.setItemData(combo.count() - 1",
     ["QComboBox.count is a Q_PROPERTY"]),
    (PANEL, "self.ui.progressBar.value = 0", "self.ui.progressBar.text = 0",
     ["QProgressBar.text = ...: the Q_PROPERTY text is read-only"]),
    (PANEL, "combo.setCurrentIndex(", "combo.setCurrentIndx(", ["QComboBox.setCurrentIndx(): not a signal"]),
    (PANEL, "self.removeObservers()", "self.removeAllObservers()", ["removeAllObservers is defined neither"]),
    (PANEL, "self.parent.title = ", "self.parent.titel = ", ["qSlicerScriptedLoadableModule.titel = ..."]),
    (PANEL, "WithinRange(0.0, 1.0)", "WithinRange(0.0)", ["WithinRange() is missing maximum"]),
    (PANEL, "parameterNode.connectGui(self.ui)", "parameterNode.connectGUI(self.ui)",
     ["has no field or member connectGUI"]),
    (FINE_TUNE, 'ui.fineTuneStartButton.connect("clicked()"', 'ui.fineTuneStartButton.connect("click()"',
     ["QPushButton has no signal click()", "clicked()"]),
    (LOSS_PLOT, "slicer.qMRMLPlotView()", "slicer.qMRMLPlotViewer()",
     ["slicer.qMRMLPlotViewer does not exist in Slicer"]),
    (DEPENDENCIES, 'hasattr(slicer.modules, "pytorchutils")', 'hasattr(slicer.modules, "PyTorchUtils")',
     ["slicer.modules has no module 'PyTorchUtils'"]),
    (LOSS_PLOT, "self.view.setMRMLScene(slicer.mrmlScene)", "self.view.setMRMLScene()",
     ["qMRMLPlotView.setMRMLScene() takes [1] arguments, not 0"]),
    (RESULT_TABLES, "item.checkState() == qt.Qt.Checked", "item.checkState() == qt.Qt.Checkd",
     ["Qt.Checkd: no such enum value"]),
    (SELF_TEST, 'self.delayDisplay("MaskMed self-test: segment', 'self.delayDisplay(msg="MaskMed self-test: segment',
     ["ScriptedLoadableModuleTest.delayDisplay() has no parameter msg"]),
    (SELF_TEST, "slicer.app.processEvents()", "slicer.app.processEvent()", ["qSlicerApplication.processEvent()"]),
    (INSTALLER, "torchVersionRequirement=versionRequirement", "torchVersion=versionRequirement",
     ["PyTorchUtilsLogic.installTorch() has no parameter torchVersion"]),
    (UI_PATH, "<slot>setMRMLScene(vtkMRMLScene*)</slot>", "<slot>setMRMLScene(vtkMRMLNode*)</slot>",
     ["inputVolumeSelector (qMRMLNodeComboBox) has no slot setMRMLScene(vtkMRMLNode*)"]),
    (UI_PATH, "<string>fineTuneMinutes</string>", "<string>modelPath</string>",
     ["no parameterNodeWrapper GUI connector binds a QSpinBox to modelPath"]),
    (UI_PATH, "<enum>QAbstractItemView::SingleSelection</enum>", "<enum>QAbstractItemView::SingleSelect</enum>",
     ["enum QAbstractItemView::SingleSelect"]),
    (UI_PATH, '<property name="SlicerParameterName" stdset="0">', '<property name="SlicerParameter" stdset="0">',
     ["dynamic property SlicerParameter is not one parameterNodeWrapper reads"]),
    (UI_PATH, "<extends>ctkMenuButton</extends>", "<extends>QToolButton</extends>",
     ["qMRMLSegmentationShow3DButton does not derive from QToolButton"]),
]


@pytest.mark.parametrize("path, original, planted, expected", PLANTED, ids=[p[2][:40] for p in PLANTED])
def test_a_planted_mistake_is_found(path, original, planted, expected):
    sources, ui_text = _project_sources()
    if path == UI_PATH:
        ui_text, line = _replace_once(ui_text, original, planted)
    else:
        sources[path], line = _replace_once(sources[path], original, planted)
    before = set(_project_findings())
    new = [f for f in conformance_findings(sources, ui_text) if f not in before]
    assert new, f"{path}: {planted!r} was not found"
    assert any(f.startswith(f"{path}:{line}:") and all(word in f for word in expected) for f in new), \
        f"expected {expected} at {path}:{line}, got:\n" + "\n".join(new)
