"""Running the engine tests with ``async def`` handlers on the async worker, unchanged.

`asyncified(Machine)` is the same machine (same name, states and options) whose every handler
is an ``async def`` that awaits the original body in a thread (so a body that blocks, as test
handlers do on events, blocks no other task). `AsyncHandlersWorker` has the thread `Worker`'s
interface (start/stop/run, a context manager, the same attributes) and runs an `AsyncWorker`
on an event loop of its own over asyncified machines. The `handlers` fixture (tests/conftest.py)
puts it in place of a test module's `Worker`, so each engine test runs for both kinds.

A transactional step stays a plain ``def``: its transaction is a sync connection (an async one
is refused at import), and the async worker runs it in its thread pool.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

import attrs

from statemachine import AsyncWorker, Machine, Store
from statemachine._declarations import RouteDeclaration, StepDeclaration
from statemachine._validation import DECLARATIONS

T = TypeVar("T")

_made: dict[type, type] = {}


def _async(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)  # annotations and signature are the original's (validation reads them)
    async def handler(*args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    return handler


def asyncified(cls: type[Machine]) -> type[Machine]:
    """`cls` with async handlers: a subclass under the same machine name."""
    if cls in _made:
        return _made[cls]
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            if isinstance(value, DECLARATIONS):
                found[attr] = value
    steps: dict[int, Any] = {}
    replaced: dict[str, Any] = {}
    for attr, decl in found.items():
        if isinstance(decl, RouteDeclaration):
            continue
        if isinstance(decl, StepDeclaration) and decl.transactional:
            new = decl
        else:
            new = attrs.evolve(decl, fn=_async(decl.fn))
        steps[id(decl)] = new
        replaced[attr] = new
    for attr, decl in found.items():
        if isinstance(decl, RouteDeclaration):
            replaced[attr] = attrs.evolve(decl, fn=_async(decl.fn),
                                          steps=tuple(steps[id(s)] for s in decl.steps))
    made = type(cls.__name__, (cls,), {**replaced, "name": cls.name,
                                        "__module__": cls.__module__,
                                        "__qualname__": cls.__qualname__})
    _made[cls] = made
    return made


def asyncified_instance(machine: Machine | type[Machine]) -> Machine:
    """An instance of `asyncified(type(machine))` sharing `machine`'s attributes."""
    if isinstance(machine, type):
        return asyncified(machine)()
    made = asyncified(type(machine)).__new__(asyncified(type(machine)))
    made.__dict__ = machine.__dict__  # the same dependencies, seen by both
    return made


class AsyncHandlersWorker:
    """`Worker`'s interface over an `AsyncWorker` running asyncified machines on its own loop."""

    def __init__(self, store: Store, machines: Iterable[Machine | type[Machine]],
                 **options: Any) -> None:
        options.setdefault("concurrency", 4)  # the thread worker's default, for the same tests
        self.inner = AsyncWorker(store, [asyncified_instance(m) for m in machines], **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running = threading.Event()  # inside run()

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="test-loop",
                                            daemon=True)
            self._thread.start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _close_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = None
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    def start(self) -> None:
        self._on_loop(self.inner.start())

    def stop(self, grace: float | None = None) -> None:
        if self._running.is_set():  # as `Worker.stop` from another thread: run() stops
            self.inner._core._stopping.set()
            self.inner.wake()
            return
        if self._loop is None:
            return
        try:
            self._on_loop(self.inner.stop(grace))
        finally:
            self._close_loop()

    def run(self, *, install_signal_handlers: bool = True) -> None:
        self._running.set()
        try:
            self._on_loop(self.inner.run(install_signal_handlers=False))
        finally:
            self._running.clear()
            self._close_loop()

    def __enter__(self) -> AsyncHandlersWorker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __getattr__(self, name: str) -> Any:
        # transitions, abandoned, name, health(), wake(); then the thread worker's own.
        try:
            return getattr(self.inner, name)
        except AttributeError:
            return getattr(self.inner._core, name)
