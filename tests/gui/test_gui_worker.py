"""The shared worker helper: order of callbacks, cancel between yields, every failure reported."""

from __future__ import annotations

import os
import threading
import time

import pytest

from napari_unet._widgets._session import Session, session_for
from napari_unet._widgets._worker import CANCELLED, DONE, FAILED, TaskPanel, start_worker
from napari_unet.errors import UserInputError

pytestmark = pytest.mark.gui

TIMEOUT = 20_000


def run(qtbot, func, *args, **callbacks):
    """Start ``func`` with start_worker and wait for on_finish; returns what the callbacks saw."""
    seen = {"yielded": [], "done": [], "error": [], "finish": []}
    worker = start_worker(
        func,
        *args,
        on_yield=seen["yielded"].append,
        on_done=seen["done"].append,
        on_error=seen["error"].append,
        on_finish=seen["finish"].append,
        start=False,
    )
    for name, cb in callbacks.items():
        getattr(worker, name).connect(cb)
    worker.start()
    qtbot.waitUntil(lambda: bool(seen["finish"]), timeout=TIMEOUT)
    return seen, worker


def test_yields_then_result_then_finish(qtbot):
    def count(n):
        yield from range(n)
        return "finished"

    seen, _ = run(qtbot, count, 4)
    assert seen == {"yielded": [0, 1, 2, 3], "done": ["finished"], "error": [], "finish": [DONE]}


def test_plain_function_runs_in_a_thread(qtbot):
    main = threading.get_ident()
    seen, _ = run(qtbot, lambda: threading.get_ident())
    assert seen["done"][0] != main and seen["finish"] == [DONE]


def test_cancel_stops_between_yields_and_closes_the_generator_in_its_thread(qtbot):
    cleanup = {}

    def slow():
        try:
            for i in range(1000):
                time.sleep(0.005)
                yield i
        finally:
            cleanup["thread"] = threading.get_ident()

    holder = {}

    def first(_item):
        holder["worker"].quit()

    seen = {"yielded": [], "finish": []}
    worker = start_worker(slow, on_yield=seen["yielded"].append, on_finish=seen["finish"].append, start=False)
    holder["worker"] = worker
    worker.yielded.connect(first)
    worker.start()
    qtbot.waitUntil(lambda: bool(seen["finish"]), timeout=TIMEOUT)
    assert seen["finish"] == [CANCELLED]
    assert 1 <= len(seen["yielded"]) < 1000
    assert seen["yielded"] == list(range(len(seen["yielded"])))  # whole items, in order
    assert cleanup["thread"] != threading.get_ident()  # the generator's finally ran there


def test_user_error_is_a_notification_with_its_message(qtbot, notes):
    def bad():
        yield 1
        raise UserInputError("the annotations have no labelled pixel; paint some labels first")

    seen, _ = run(qtbot, bad)
    assert seen["finish"] == [FAILED] and seen["yielded"] == [1] and not seen["done"]
    assert isinstance(seen["error"][0], UserInputError)
    assert "the annotations have no labelled pixel; paint some labels first" in notes()


def test_runtime_error_is_reported_not_mistaken_for_a_cancel(qtbot, notes):
    def oom():
        yield 1
        raise RuntimeError("CUDA out of memory")

    seen, _ = run(qtbot, oom)
    assert seen["finish"] == [FAILED]
    assert any("CUDA out of memory" in m for m in notes())


def test_task_panel_shows_progress_and_hides_when_done(qtbot):
    panel = TaskPanel("Stop")
    qtbot.addWidget(panel)
    outcomes = []
    panel.finished.connect(outcomes.append)
    assert panel.progress_bar.isHidden() and panel.cancel_button.isHidden()

    def steps():
        for i in range(3):
            time.sleep(0.01)
            yield i

    panel.start(steps, progress=lambda i: (i + 1, 3, f"step {i + 1}"))
    assert panel.running and not panel.cancel_button.isHidden()
    assert panel.cancel_button.text() == "Stop"
    with pytest.raises(RuntimeError, match="already running"):
        panel.start(steps)
    qtbot.waitUntil(lambda: bool(outcomes), timeout=TIMEOUT)
    assert outcomes == [DONE] and not panel.running
    assert panel.progress_bar.value() == 3 and panel.status.text() == "step 3"
    assert panel.progress_bar.isHidden()


def test_task_panel_custom_cancel_is_called(qtbot):
    panel = TaskPanel("Stop")
    qtbot.addWidget(panel)
    stop = threading.Event()
    outcomes = []
    panel.finished.connect(outcomes.append)

    def until_stopped():
        while not stop.is_set():
            time.sleep(0.005)
            yield 0
        return "stopped cleanly"

    done = []
    panel.start(until_stopped, cancel=stop.set, on_done=done.append)
    panel.cancel()
    qtbot.waitUntil(lambda: bool(outcomes), timeout=TIMEOUT)
    assert outcomes == [DONE] and done == ["stopped cleanly"]


def test_sessions_are_per_viewer_and_name_models_uniquely():
    class FakeViewer:  # any weak-referenceable object stands for a viewer here
        pass

    a, b = FakeViewer(), FakeViewer()
    assert session_for(a) is session_for(a)
    assert session_for(a) is not session_for(b)
    s = Session()
    changes = []
    s.models_changed.connect(lambda: changes.append(1))
    first = s.add_model("tuned", object())
    second = s.add_model("tuned", object())
    assert (first.name, second.name) == ("tuned", "tuned (2)")
    s.remove_model("tuned")
    assert list(s.models) == ["tuned (2)"] and len(changes) == 3


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="thread niceness is a Linux setting")
def test_every_run_gets_a_fresh_thread_at_the_callers_priority(qtbot):
    """A thread lowered to niceness 19 by one run (a preview) is never reused by the next."""
    from napari_unet._widgets._worker import lower_thread_priority

    def niceness() -> tuple[int, int]:
        return threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def preview() -> tuple[int, int]:
        lower_thread_priority(19)
        return niceness()

    def result(func) -> tuple[int, int]:
        done: list = []
        start_worker(func, on_done=done.append, lower_priority=False)
        qtbot.waitUntil(lambda: bool(done), timeout=TIMEOUT)
        return done[0]

    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    first = result(preview)
    assert first[1] == max(main, 19)
    for _ in range(3):
        again = result(niceness)
        assert again[1] == main and again[0] != first[0], (main, first, again)


def test_objects_are_left_out_of_full_collections_while_work_runs(qtbot):
    """A running worker freezes the collector's objects; the last one to end gives them back, and
    a reference cycle that became garbage meanwhile is collected then."""
    import gc
    import weakref

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a reference cycle: only the collector frees it
    ref = weakref.ref(a)
    assert gc.get_freeze_count() == 0
    go = threading.Event()

    def waits():
        go.wait(10)
        yield 1

    seen = {"finish": []}
    worker = start_worker(waits, on_finish=seen["finish"].append, start=False)
    worker.start()
    qtbot.waitUntil(lambda: gc.get_freeze_count() > 0, timeout=TIMEOUT)
    frozen = gc.get_freeze_count()
    del a, b
    gc.collect()
    assert ref() is not None  # frozen: full collections skip it while the work runs
    # a second worker meanwhile freezes nothing more (frozen objects can only be freed), and
    # ending first it leaves the freeze on
    second, _ = run(qtbot, lambda: gc.get_freeze_count())
    assert 0 < second["done"][0] <= frozen and 0 < gc.get_freeze_count() <= frozen
    go.set()
    qtbot.waitUntil(lambda: bool(seen["finish"]), timeout=TIMEOUT)
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert ref() is None


def test_a_worker_reads_a_dask_array_outside_napari_s_dask_cache(qtbot):
    """napari slices dask layers inside its cache, a global dask callback that is not thread-safe:
    a worker's reads of the same array must neither run it nor take it away from napari."""
    import dask.array as da
    import numpy as np
    from dask.callbacks import Callback

    from napari_unet.arrays.lazy import OwnReads

    calls = []

    class NapariLikeCache(Callback):  # records which thread runs it, as napari's Cache would
        def _start(self, dsk):
            calls.append(threading.get_ident())

    stack = da.arange(4 * 6 * 8, chunks=48).reshape(4, 6, 8)

    def read(image):
        plane = image[2]
        return type(image).__name__, type(plane).__name__, np.asarray(plane[1:3, 2:5]), len(Callback.active)

    with NapariLikeCache() as cache:
        active = set(Callback.active)
        seen, _ = run(qtbot, read, stack)
        assert Callback.active == active  # still napari's after the worker's reads
        np.asarray(stack[0])  # napari's own slicing still goes through it
    (kind, plane_kind, values, n_active), = seen["done"]
    assert (kind, plane_kind) == ("OwnReads", "OwnReads")
    np.testing.assert_array_equal(values, np.arange(4 * 6 * 8).reshape(4, 6, 8)[2, 1:3, 2:5])
    assert n_active == 1  # the cache stayed registered while the worker read
    assert calls == [threading.get_ident()]  # run once, by the main thread's read, never the worker's
    assert isinstance(OwnReads(stack)[1], OwnReads) and np.asarray(OwnReads(stack)).shape == (4, 6, 8)
    del cache
