"""One way for every dock to run long work: a core generator in a napari worker thread.

:func:`start_worker` runs a generator (or a plain function) in a thread with superqt's
``create_worker`` and calls back on the main thread for each yielded item, when it returns, fails
or is cancelled. :class:`TaskPanel` is the dock-side face of it: a progress bar, a status line and
a Cancel/Stop button that show while the work runs. Only the callbacks touch layers and widgets;
the generator never does.

Cancelling (``worker.quit()``) takes effect between two yields, and the generator is then closed in
its own thread, so the core's cleanup (``finally`` blocks) runs there and an item is either yielded
whole or not at all. A :class:`~napari_unet.errors.UserInputError` raised by the work ends it as
"failed" with a notification of its message; any other exception (a bug) is shown with its
traceback.
"""

from __future__ import annotations

import atexit
import gc
import inspect
import os
import sys
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import FunctionWorker, GeneratorWorker
from qtpy.QtCore import QThreadPool, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget
from superqt.utils import create_worker

from napari_unet._widgets._notify import notify_error
from napari_unet._widgets._qtobject import is_alive
from napari_unet.arrays.lazy import own_reads

__all__ = ["DONE", "CANCELLED", "FAILED", "TaskPanel", "start_worker", "wait_for_workers"]

#: How a run ended, as passed to ``on_finish`` and :attr:`TaskPanel.finished`.
DONE, CANCELLED, FAILED = "done", "cancelled", "failed"

Worker = GeneratorWorker | FunctionWorker


@dataclass(frozen=True)
class _Failure:
    """Returned in place of a result when the work raised an exception.

    Returning it (rather than letting the worker see the exception) keeps every failure on one
    path: superqt's worker would take a RuntimeError, such as a torch out-of-memory error, for a
    deleted worker and end silently.
    """

    error: Exception


#: niceness added to worker threads (Linux): the event loop wins the CPU whenever it needs it
WORKER_NICENESS = 10


def lower_thread_priority(niceness: int = WORKER_NICENESS) -> None:
    """Run the calling thread (and the threads it starts later) at ``niceness`` or lower priority.

    On Linux, niceness is per thread and inherited by threads created afterwards, such as the
    compute threads torch starts for this thread. A worker at lower priority still uses every
    idle core, but the main thread gets the CPU at once when it has painting or input to handle,
    so the viewer stays fluid on a machine with few cores. Elsewhere this does nothing.
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
            os.setpriority(os.PRIO_PROCESS, tid, min(niceness, 19))
    except OSError:
        pass


def _guarded_generator(func: Callable[..., Generator], lower: bool, *args: Any, **kwargs: Any) -> Generator:
    """Run ``func``'s generator, turning an exception into a :class:`_Failure` return value."""
    if lower:
        lower_thread_priority()
    try:
        return (yield from func(*args, **kwargs))
    except Exception as exc:
        return _Failure(exc)


def _guarded_function(func: Callable[..., Any], lower: bool, *args: Any, **kwargs: Any) -> Any:
    """Call ``func``, turning an exception into a :class:`_Failure` return value."""
    if lower:
        lower_thread_priority()
    try:
        return func(*args, **kwargs)
    except Exception as exc:
        return _Failure(exc)


#: workers started by :func:`start_worker` whose threads have not ended: waited for at exit
_LIVE: set[Any] = set()
#: the longest the interpreter's exit waits for running work (a training step, a preview)
EXIT_WAIT_S = 30.0


class _EndsQuietly:
    """Worker behaviour: records when its thread has ended, and survives a deleted signals object.

    When the interpreter exits while a worker still computes (a live preview, say), Qt objects
    are deleted under it and its last ``emit`` raises RuntimeError ("WorkerBaseSignals has been
    deleted"); PyQt turns an exception escaping ``run`` into an abort. Nobody is left to tell,
    so the error is dropped; :func:`wait_for_workers` (run at exit) makes it rare.
    """

    def _track(self) -> None:
        self.ended = threading.Event()
        _LIVE.add(self)

    def start(self) -> None:
        """Run in a thread of its own, started by the calling (main) thread.

        Niceness and torch's thread count are settings of a thread: a pooled thread that ran a
        preview at niceness 19 with one torch thread would keep both for the next training run
        (measured: 20x slower), and one that trained at niceness 10 would build the next trainer
        at low priority.
        """
        self._worker_set.add(self)
        self._finished.connect(self._set_discard)
        _fresh_threads().start(self)

    def run(self) -> None:
        try:
            super().run()  # type: ignore[misc]
        except RuntimeError:
            pass  # the signals object is gone: the application is exiting
        finally:
            _LIVE.discard(self)
            self.ended.set()


class _ClosingGeneratorWorker(_EndsQuietly, GeneratorWorker):
    """A generator worker that closes its generator in the worker thread when it stops.

    napari's worker stops iterating when asked to quit but leaves the generator suspended; closing
    it here runs the core's cleanup in this thread instead of whenever it is garbage collected.
    """

    def work(self) -> Any:
        try:
            return super().work()
        finally:
            self._gen.close()


class _QuietFunctionWorker(_EndsQuietly, FunctionWorker):
    """A function worker that ends quietly (see :class:`_EndsQuietly`)."""


#: one pool per running worker (a new pool has no thread to reuse); pruned on the main thread
_POOLS: list[QThreadPool] = []


def _fresh_threads() -> QThreadPool:
    """A new one-thread pool, so the work gets a new thread; pools of ended work are dropped."""
    _POOLS[:] = [p for p in _POOLS if p.activeThreadCount()]
    pool = QThreadPool()
    pool.setMaxThreadCount(1)
    pool.setExpiryTimeout(0)
    _POOLS.append(pool)
    return pool


#: how many running workers hold the collector's freeze (see :func:`_hold_collector`)
_GC_HOLDS = [0]


def _hold_collector() -> None:
    """Leave the objects that exist now out of Python's full garbage collections while work runs.

    A full collection walks every tracked object of the process (about 440 000 with napari, torch
    and the docks loaded: 0.2-0.3 s) holding the GIL, so the event loop stops for it whichever
    thread set it off; while training two came in 20 s. The last worker to end gives the objects
    back (:func:`_release_collector`), so whatever became garbage meanwhile is collected then.
    """
    _GC_HOLDS[0] += 1
    if _GC_HOLDS[0] == 1:  # only the first: a preview started every few seconds during training
        gc.freeze()  # would otherwise freeze that moment's young garbage each time, until the end


def _release_collector() -> None:
    """One worker ended: when none is left, the frozen objects rejoin the collections."""
    _GC_HOLDS[0] = max(0, _GC_HOLDS[0] - 1)
    if _GC_HOLDS[0] == 0:
        gc.unfreeze()


def wait_for_workers(timeout_s: float = EXIT_WAIT_S) -> bool:
    """Ask every running worker to stop and wait up to ``timeout_s`` for their threads to end.

    Registered to run when the interpreter exits, before Qt objects are deleted, so no work is
    left emitting into a deleted object. A generator stops after its current item; a function
    runs to its end. True when every worker ended in time.
    """
    deadline = time.monotonic() + timeout_s
    workers = list(_LIVE)
    for worker in workers:
        worker.quit()
    return all(w.ended.wait(max(0.0, deadline - time.monotonic())) for w in workers)


atexit.register(wait_for_workers)


# ``*args`` and ``**kwargs`` are ``func``'s own arguments, passed on untouched; the keywords are
# the callbacks and switches every dock names at its call, so they stay keywords (a settings
# object would have to be built at each of the docks' calls for nothing).
def start_worker(
    func: Callable[..., Any],
    *args: Any,
    on_yield: Callable[[Any], None] | None = None,
    on_done: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finish: Callable[[str], None] | None = None,
    start: bool = True,
    lower_priority: bool = True,
    **kwargs: Any,
) -> Worker:
    """Run ``func(*args, **kwargs)`` in a worker thread; callbacks run on the main thread.

    ``func`` is a generator function (each yielded item goes to ``on_yield``) or a plain function.
    ``on_done(result)`` follows a normal end, ``on_error(exc)`` a failure (already notified), and
    ``on_finish(outcome)`` always comes last with DONE, CANCELLED or FAILED. ``worker.quit()``
    cancels between two yields.

    The worker belongs to the dock that started it, not to a viewer window: napari's own
    ``create_worker`` registers work with whichever viewer is current, and closing that window
    would cancel it; the docks stop their own work when they are closed.

    The thread runs at :data:`WORKER_NICENESS` from the start unless ``lower_priority`` is False:
    then ``func`` lowers it itself (:func:`lower_thread_priority`) once its setup is done. Setup
    that holds the GIL (imports, numpy and scipy calls) must not run at low priority on a busy
    machine: other programs then keep the low-priority thread off the CPU while it holds the GIL,
    and the event loop waits for it, for seconds.

    A dask array among ``args`` and ``kwargs`` reaches ``func`` wrapped by
    :func:`napari_unet.arrays.lazy.own_reads`: its reads in the thread keep out of napari's dask cache,
    which napari's slicing uses on the main thread and which is not thread-safe.
    """
    args = tuple(own_reads(a) for a in args)
    kwargs = {k: own_reads(v) for k, v in kwargs.items()}
    worker = _create(func, args, kwargs, lower_priority)
    if on_yield is not None and isinstance(worker, GeneratorWorker):
        worker.yielded.connect(on_yield)
    _connect_outcome(worker, on_done, on_error, on_finish)
    worker._track()
    if start:
        worker.start()
    return worker


def _create(func: Callable[..., Any], args: tuple, kwargs: dict[str, Any], lower_priority: bool) -> Worker:
    """An unstarted worker for ``func``: a generator worker that closes its generator in its
    thread, or a function worker; either way an exception of the work comes back as a
    :class:`_Failure` result."""
    if inspect.isgeneratorfunction(func):
        guarded: Callable[..., Any] = _guarded_generator
        worker_class: type = _ClosingGeneratorWorker
    else:
        guarded, worker_class = _guarded_function, _QuietFunctionWorker
    return create_worker(
        guarded,
        func,
        lower_priority,
        *args,
        _worker_class=worker_class,
        _ignore_errors=True,
        **kwargs,
    )


def _connect_outcome(
    worker: Worker,
    on_done: Callable[[Any], None] | None,
    on_error: Callable[[BaseException], None] | None,
    on_finish: Callable[[str], None] | None,
) -> None:
    """Connect the worker's end to the callbacks (a failure is notified first; ``on_finish``
    comes last with DONE, CANCELLED or FAILED), and hold the garbage collector's freeze while it
    runs (:func:`_hold_collector`). The slots are closures, so the worker's signals keep them."""
    # set by returned/errored; a run that ends with neither was cancelled
    outcome: dict[str, str | None] = {"value": None}

    def returned(result: Any) -> None:
        outcome["value"] = FAILED if isinstance(result, _Failure) else DONE
        if isinstance(result, _Failure):
            notify_error(result.error)
            if on_error is not None:
                on_error(result.error)
        elif on_done is not None:
            on_done(result)

    def errored(exc: BaseException) -> None:
        # not reached for exceptions of the work itself (see _Failure); napari shows the rest
        outcome["value"] = FAILED
        if on_error is not None:
            on_error(exc)

    held = [False, False]  # holding the freeze; frozen again after the work's setup

    def hold() -> None:
        if not held[0]:
            held[0] = True
            _hold_collector()

    def settled(_item: Any) -> None:
        # the first item comes after the work's setup (a trainer's imports and weight maps), whose
        # long-lived objects full collections would otherwise walk for the rest of the run
        if held[0] and not held[1]:
            held[1] = True
            if _GC_HOLDS[0] == 1:
                gc.freeze()

    def finished() -> None:
        try:
            if on_finish is not None:
                on_finish(outcome["value"] or CANCELLED)
        finally:  # after on_finish: napari collects when the dock removes a layer there
            if held[0]:
                held[0] = False
                _release_collector()

    worker.returned.connect(returned)
    worker.errored.connect(errored)
    worker.started.connect(hold)
    if isinstance(worker, GeneratorWorker):
        worker.yielded.connect(settled)
    worker.finished.connect(finished)


@dataclass
class _RunState:
    """The worker a panel is running and how to cancel it."""

    worker: Worker | None = None
    cancel: Callable[[], None] | None = None


ProgressFn = Callable[[Any], "tuple[int, int] | tuple[int, int, str] | None"]


class TaskPanel(QWidget):
    """Progress bar, status line and Cancel/Stop button for one dock's long task.

    :meth:`start` runs work through :func:`start_worker`; while it runs the progress bar and the
    cancel button show and :attr:`running` is true. ``progress(item)`` maps each yielded item to
    ``(done, total)`` or ``(done, total, text)``; total 0 shows a busy bar. ``cancel`` replaces the
    default cancellation (``worker.quit()``), e.g. to let a trainer finish its step and checkpoint.
    """

    #: emitted on the main thread for each yielded item, after the dock's ``on_yield`` handled it
    yielded = Signal(object)
    #: emitted on the main thread after the work's own callbacks, with DONE, CANCELLED or FAILED
    finished = Signal(str)

    def __init__(self, cancel_text: str = "Cancel", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._cancel_text = cancel_text
        self._state = _RunState()
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(True)
        self.cancel_button = QPushButton(cancel_text)
        self.cancel_button.clicked.connect(self.cancel)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.progress_bar, 1)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.status)
        self._show_running(False)
        self.destroyed.connect(_stop_on_destroy(self))

    @property
    def worker(self) -> Worker | None:
        """The running worker, or None when idle."""
        return self._state.worker

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the work has finished and its callbacks have run."""
        return self._state.worker is not None

    def _show_running(self, running: bool) -> None:
        self.progress_bar.setVisible(running)
        self.cancel_button.setVisible(running)
        self.cancel_button.setEnabled(running)
        self.cancel_button.setText(self._cancel_text)

    def set_progress(self, done: int, total: int, text: str | None = None) -> None:
        """Show ``done`` of ``total`` (total 0: busy) and, if given, a status text."""
        if total <= 0:
            self.progress_bar.setRange(0, 0)
        else:
            self.progress_bar.setRange(0, int(total))
            self.progress_bar.setValue(min(int(done), int(total)))
        if text is not None:
            self.status.setText(text)

    # start_worker's parameters (its reason applies) and what this panel shows: ``progress``,
    # ``cancel``, ``cancellable`` and ``message``; the docks name each at their call.
    def start(
        self,
        func: Callable[..., Any],
        *args: Any,
        on_yield: Callable[[Any], None] | None = None,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        progress: ProgressFn | None = None,
        cancel: Callable[[], None] | None = None,
        cancellable: bool = True,
        message: str = "",
        lower_priority: bool = True,
        **kwargs: Any,
    ) -> Worker:
        """Run ``func`` as :func:`start_worker` does, showing progress here; one task at a time.

        ``cancellable=False`` hides the cancel button (for work that cannot stop halfway, such as
        an atomic write).
        """
        if self._state.worker is not None:
            raise RuntimeError("a task is already running in this panel")

        def yielded(item: Any) -> None:
            if not is_alive(self):  # the dock was closed; the work is being stopped
                return
            if on_yield is not None:
                on_yield(item)
            if progress is not None:
                shown = progress(item)
                if shown is not None:
                    self.set_progress(*shown)
            self.yielded.emit(item)

        def guard(callback: Callable[[Any], None] | None) -> Callable[[Any], None] | None:
            if callback is None:
                return None

            def call(value: Any) -> None:
                if is_alive(self):
                    callback(value)

            return call

        self.set_progress(0, 0, message)
        self._show_running(True)
        self.cancel_button.setVisible(cancellable)
        worker = start_worker(
            func,
            *args,
            on_yield=yielded,
            on_done=guard(on_done),
            on_error=guard(on_error),
            on_finish=self._finished,
            start=False,
            lower_priority=lower_priority,
            **kwargs,
        )
        self._state.worker, self._state.cancel = worker, cancel
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running work to stop (between two steps); a no-op when idle."""
        state = self._state
        if state.worker is None:
            return
        self.cancel_button.setEnabled(False)
        self.cancel_button.setText("Stopping…")
        if state.cancel is not None:
            state.cancel()
        else:
            state.worker.quit()

    def _finished(self, outcome: str) -> None:
        self._state.worker = self._state.cancel = None
        if not is_alive(self):
            return
        self._show_running(False)
        self.finished.emit(outcome)


def _stop_on_destroy(panel: TaskPanel) -> Callable[..., None]:
    """A slot that stops the panel's work when the panel (its dock) is destroyed.

    It holds only the panel's run state, not the panel, so it does not keep the dock alive.
    """
    state = panel._state

    def stop(*_: Any) -> None:
        if state.worker is not None:
            if state.cancel is not None:
                state.cancel()
            state.worker.quit()

    return stop
