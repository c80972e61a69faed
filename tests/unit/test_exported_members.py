"""The public surface is what ``statemachine.__all__`` says, and it says so in reprs and pickles.

`surface_problems` lists what is wrong with a package's exports; it is run on `statemachine`
(and must find nothing) and on a package built broken on purpose (and must find each fault), so
a check that stopped checking would fail here too.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
import re
import types
import typing
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest

import statemachine
from statemachine import errors, testing
from statemachine._serde import make_state_converter

API = (Path(__file__).resolve().parents[2] / "docs" / "reference" / "api.md").read_text("utf-8")
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)


def documented_names(markdown: str) -> set[str]:
    """The identifiers a reference page names: in code spans (`` `Worker` ``, `` `later(...)` ``)
    and, in its code blocks (the tree of errors, signatures), the capitalized words (class names:
    the tree's descriptions are prose, and its lower-case words are not names)."""
    names = set(re.findall(r"`([A-Za-z_]\w*)", FENCE.sub("", markdown)))
    for block in FENCE.findall(markdown):
        body = block.split("\n", 1)[1]  # not the fence's language
        names |= set(re.findall(r"(?<![\w.])([A-Z]\w*)", body))
    return names


def private_modules(package: types.ModuleType) -> list[types.ModuleType]:
    """Every module under `package` whose path has a private part (``statemachine._store._base``),
    imported."""
    found = []
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        parts = info.name.split(".")[1:]
        if any(p.startswith("_") and not p.startswith("__") for p in parts):
            found.append(importlib.import_module(info.name))
    return found


def defined_in(module: types.ModuleType, package: str) -> set[str]:
    """The public classes and functions `module` defines (not those it imports), including the
    ones the package re-exports under its own name."""
    return {name for name, obj in vars(module).items()
            if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
            and getattr(obj, "__module__", None) in (module.__name__, package)}


def surface_problems(package: types.ModuleType, modules: Iterable[types.ModuleType],
                     documented: set[str], errors_all: Iterable[str]) -> list[str]:
    """What is wrong with `package`'s exports, one line per fault (empty when nothing is)."""
    exported = list(getattr(package, "__all__", []))
    problems = []
    if exported != sorted(exported):
        problems.append(f"__all__ is not sorted: {exported}")
    if len(set(exported)) != len(exported):
        problems.append("__all__ names something twice")
    problems += [f"{n} is in __all__ but not defined" for n in exported if not hasattr(package, n)]
    problems += [f"{n} is public in the package but not in __all__"
                 for n, obj in vars(package).items()
                 if not n.startswith("_") and not isinstance(obj, types.ModuleType)
                 and n not in exported]
    problems += [f"error {n} is not exported" for n in errors_all if n not in exported]
    for module in modules:
        problems += [f"{n} (defined in {module.__name__}, named in the docs) is not exported"
                     for n in sorted(defined_in(module, package.__name__) & documented)
                     if n not in exported]
    for n in exported:
        module = getattr(getattr(package, n, None), "__module__", None)
        if module != package.__name__:
            problems.append(f"{n}.__module__ is {module!r}, not {package.__name__!r}")
    return problems


# -- the real package ----------------------------------------------------------------------------

def test_statemachine_exports_exactly_its_public_surface() -> None:
    modules = [m for m in private_modules(statemachine)
               if not m.__name__.startswith("statemachine.testing.")]  # its own surface, below
    problems = surface_problems(statemachine, modules, documented_names(API), errors.__all__)
    assert problems == []


def test_testing_exports_exactly_its_public_surface() -> None:
    problems = surface_problems(testing, private_modules(testing), documented_names(API), [])
    assert problems == []


def test_the_new_errors_are_exported() -> None:
    for name in ("DatabaseUnavailable", "InvalidArgument", "UnknownState"):
        assert getattr(statemachine, name) is getattr(errors, name)


def test_reprs_name_the_public_path() -> None:
    assert repr(statemachine.Worker) == "<class 'statemachine.Worker'>"
    assert repr(statemachine.WorkflowNotFound) == "<class 'statemachine.WorkflowNotFound'>"
    assert statemachine.step.__module__ == "statemachine"


def test_testing_stays_its_own_public_module() -> None:
    assert "FakeClock" in testing.__all__
    assert testing.FakeClock.__module__ == "statemachine.testing"
    assert "FakeClock" not in statemachine.__all__


def exported_objects() -> list[tuple[str, object]]:
    return [(n, getattr(statemachine, n)) for n in statemachine.__all__]


@pytest.mark.parametrize(("name", "obj"), exported_objects(), ids=statemachine.__all__)
def test_every_exported_class_and_function_pickles_by_its_public_name(
        name: str, obj: object) -> None:
    assert pickle.loads(pickle.dumps(obj)) is obj
    assert f"statemachine\n{name}".encode() in pickle.dumps(obj, protocol=0)


EXPORTED_CLASSES = [(n, o) for n, o in exported_objects() if isinstance(o, type)]


def defining_module(cls: type) -> types.ModuleType:
    """The module whose source says ``class <name>`` for `cls` (its ``__module__`` no longer
    tells)."""
    for module in [errors, *private_modules(statemachine)]:
        if vars(module).get(cls.__name__) is cls and re.search(
                rf"^class {cls.__name__}\b", Path(module.__file__ or "").read_text("utf-8"), re.M):
            return module
    raise AssertionError(f"no module of statemachine defines {cls.__name__}")


@pytest.mark.parametrize(("name", "cls"), EXPORTED_CLASSES, ids=[n for n, _ in EXPORTED_CLASSES])
def test_annotations_of_exported_classes_still_resolve(name: str, cls: type) -> None:
    """``get_type_hints`` (and so attrs and cattrs) resolves a class's string annotations through
    its ``__module__``: the rename must not leave behind strings it can no longer resolve. Only
    those that did not resolve where the class is defined either (names imported for type
    checking alone) may stay strings."""
    namespace = vars(defining_module(cls))
    left = {k: v for k, v in inspect.get_annotations(cls).items() if isinstance(v, str)}
    resolvable = []
    for key, text in left.items():
        try:
            eval(text, dict(namespace), dict(vars(cls)))  # what typing does with a string
        except NameError:
            continue
        resolvable.append(f"{key}: {text}")
    assert not resolvable, f"left as strings, though they resolve where {name} is defined"
    if not left:
        hints = typing.get_type_hints(cls)
        assert not any(isinstance(h, str) for h in hints.values()), hints


WID = uuid.UUID("1e0f5b8a-7c2d-4e3f-9a1b-2c3d4e5f6a7b")
ERRORS_WITH_FIELDS = [
    statemachine.WorkflowNotFound("no workflow", workflow_id=WID),
    statemachine.InvalidOperation("cannot retry", workflow_id=WID, status="running"),
    statemachine.UnknownMachine("unknown", machine="order"),
    statemachine.UnknownState("unknown", machine="order", state="Lost", workflow_id=WID),
    statemachine.InvalidArgument("bad", workflow_id=WID, state="Charged"),
    statemachine.DatabaseUnavailable("gone", sqlstate="08006"),
    statemachine.LeaseLost("lost", workflow_id=WID, state="Charged", version=3),
    statemachine.InvalidDefinition("bad machine", machine="order", state="Charged"),
]


@pytest.mark.parametrize("error", ERRORS_WITH_FIELDS, ids=lambda e: type(e).__name__)
def test_errors_pickle_with_their_fields(error: statemachine.StateMachineError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)


def test_retry_after_pickles_with_its_delay() -> None:
    copy = pickle.loads(pickle.dumps(statemachine.RetryAfter(2.5, "Retry-After: 2.5")))
    assert (copy.seconds, str(copy)) == (2.5, "Retry-After: 2.5")


@attrs.frozen
class Shipped:
    order_id: str
    at: datetime


VALUES: list[tuple[object, object]] = [
    (statemachine.RetryPolicy(max_attempts=5, initial_delay=0.5), statemachine.RetryPolicy),
    (statemachine.Failure("ValueError", "boom", 2, "Traceback ...", permanent=True),
     statemachine.Failure),
    (statemachine.ChildResult(WID, "order", "done", "Confirmed", {"order_id": "A1"}, None, None),
     statemachine.ChildResult),
    (statemachine.Delayed(Shipped("A1", datetime(2030, 1, 1, tzinfo=UTC)), after=3.0),
     statemachine.Delayed[Shipped]),
]


@pytest.mark.parametrize(("value", "as_type"), VALUES, ids=[type(v).__name__ for v, _ in VALUES])
def test_exported_records_round_trip_through_pickle_and_cattrs(
        value: object, as_type: object) -> None:
    """cattrs reads attrs field types through the class's ``__module__`` too."""
    assert pickle.loads(pickle.dumps(value)) == value
    converter = make_state_converter()
    converter.register_structure_hook(uuid.UUID, lambda v, _: uuid.UUID(v))
    converter.register_unstructure_hook(uuid.UUID, str)
    data = converter.unstructure(value)
    if isinstance(value, statemachine.RetryPolicy):
        del data["permanent"]  # exception classes are not data
    assert converter.structure(data, as_type) == value


# -- the check itself can fail -------------------------------------------------------------------

def broken_package() -> tuple[types.ModuleType, types.ModuleType]:
    """A package ``pkg`` with a private module ``pkg._impl``, wrong in every way the check knows."""
    impl = types.ModuleType("pkg._impl")
    pkg = types.ModuleType("pkg")

    class Kept:
        pass

    class Forgotten:  # named in the docs, defined privately, not exported
        pass

    def helper() -> None:
        pass

    for obj in (Kept, Forgotten, helper):
        obj.__module__ = impl.__name__
        setattr(impl, obj.__name__, obj)
    Kept.__module__ = "pkg"
    pkg.Kept = Kept  # type: ignore[attr-defined]
    pkg.helper = helper  # type: ignore[attr-defined]  # keeps its private __module__
    pkg.stray = 1  # type: ignore[attr-defined]  # public, but not in __all__
    pkg.__all__ = ["helper", "Kept", "Missing"]  # type: ignore[attr-defined]
    return pkg, impl


def test_the_check_reports_every_kind_of_fault() -> None:
    pkg, impl = broken_package()
    problems = surface_problems(pkg, [impl], {"Forgotten", "Kept"}, ["Kept", "SomeError"])
    assert problems == [
        "__all__ is not sorted: ['helper', 'Kept', 'Missing']",
        "Missing is in __all__ but not defined",
        "stray is public in the package but not in __all__",
        "error SomeError is not exported",
        "Forgotten (defined in pkg._impl, named in the docs) is not exported",
        "helper.__module__ is 'pkg._impl', not 'pkg'",
        "Missing.__module__ is None, not 'pkg'",
    ]


def test_documented_names_come_from_code_spans_and_code_blocks() -> None:
    page = ("Use `Worker(store)` and `later`, not Prose.\n\n"
            "```text\nStateMachineError\n└── Lost        when the row changed\n```\n")
    assert documented_names(page) == {"Worker", "later", "StateMachineError", "Lost"}
