"""Segment dock latency: time from the click to the first painted tile, and event-loop stalls.

Opens a napari viewer (run it under a display, e.g. ``bash scripts/with-display.sh``), adds a
2048 x 2048 EM-like image, opens the Segment dock and clicks "Segment" with the shipped model (or,
when this installation has none yet, a base-16 U-Net with random weights saved to a temporary file;
the output says which). While the run goes on a 10 ms QTimer "heartbeat" records when the Qt event
loop gets to it; the longest gap between two beats is the longest stall a user would feel.

Printed: time to the first tile painted into the Labels layer (copied and the layer refreshed),
time to the start of the first canvas draw that shows it, the longest heartbeat gap during the run
(split into the click handler and the rest; and while idle before it, for comparison), the run's
length and the tile count.

With ``--scenario scroll`` it measures what a user feels while working: a stack is open, a 20 Hz
timer "scrolls" through its slices (as a mouse wheel would), and the 99th percentile and maximum
gap of a 10 ms heartbeat are recorded while the Segment dock segments the stack, and while the
Fine-tune dock trains (with its live preview). ``--busy`` runs a second process that keeps one core
busy at normal priority during the measurement, as another program on a 2-core machine would.
For the gaps over 50 ms it says how their time splits, for the main thread, into running on a CPU,
waiting for a core (the machine is oversubscribed) and being blocked (the GIL held by another
thread, or the software OpenGL driver's threads); ``--profile`` adds which code the main thread was
in during those gaps, and where the other threads were when they kept the GIL.

With ``--scenario train-start`` it records the longest event-loop gap from the click on Train
through the first ``--seconds`` (the trainer's setup, the start model's validation, the first
steps), on scribbles of a synthetic stack or on the dense labels of ``--sections DIR``.

With ``--scenario preview`` it measures what the live preview costs: training throughput (steps
per second of training) of the Fine-tune dock with the preview off and on, alternating runs of
``--seconds`` each.

Usage: bash scripts/with-display.sh python benchmarks/bench_gui_latency.py [--size 2048]
       [--tile 0 (auto)] [--precision auto] [--repeats 2] [--model PATH]
       [--scenario click|scroll|preview|train-start] [--sections DIR] [--busy] [--seconds 30]
       [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def heartbeat_gaps(app, timer_ms: int, seconds: float) -> list[float]:
    """Gaps (s) between beats of a ``timer_ms`` QTimer while the event loop idles ``seconds``."""
    from qtpy.QtCore import QTimer

    beats: list[float] = []
    timer = QTimer()
    timer.setInterval(timer_ms)
    timer.timeout.connect(lambda: beats.append(time.perf_counter()))
    timer.start()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    return list(np.diff(beats))


def _busy(stop) -> None:  # pragma: no cover - runs in a child process
    """Keep one core busy until ``stop`` is set (a second program on the machine)."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


class GcPauses:
    """Python's cyclic garbage collections while active: (generation, milliseconds) of each.

    A full (generation 2) collection walks every tracked object of the process, about 440 000 with
    napari, torch and the docks loaded; it holds the GIL, so the event loop waits for it whichever
    thread triggered it. napari also runs one whenever a layer is removed.
    """

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses.append((int(info["generation"]), 1000 * (time.perf_counter() - self._t0)))

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def full(self) -> tuple[int, float]:
        """How many full collections ran, and the longest in ms (0 if none)."""
        ms = [d for g, d in self.pauses if g == 2]
        return len(ms), max(ms, default=0.0)


class Busy:
    """A second process busy at normal priority for as long as the ``with`` block lasts."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __enter__(self) -> Busy:
        if self.on:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            self.stop = ctx.Event()
            self.proc = ctx.Process(target=_busy, args=(self.stop,), daemon=True)
            self.proc.start()
        return self

    def __exit__(self, *_exc) -> None:
        if self.on:
            self.stop.set()
            self.proc.join(5)


def _process_cpu() -> float:
    """CPU seconds used by this process so far, every thread counted."""
    import resource

    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def gap_stats(beats: list[float]) -> tuple[float, float]:
    """(p99, max) of the gaps between heartbeats, in ms."""
    gaps = np.diff(beats) * 1000
    if gaps.size == 0:
        return float("nan"), float("nan")
    return float(np.percentile(gaps, 99)), float(gaps.max())


#: gaps longer than this (ms) are the ones a user feels; they are explained in the output
LONG_GAP_MS = 50.0


def thread_times() -> tuple[float, float]:
    """(seconds on a CPU, seconds ready but waiting for a core) of the calling thread so far.

    From Linux's /proc/thread-self/schedstat; elsewhere the CPU time and 0.
    """
    try:
        with open("/proc/thread-self/schedstat") as f:
            on_cpu, waiting = f.read().split()[:2]
        return int(on_cpu) / 1e9, int(waiting) / 1e9
    except (OSError, ValueError):
        return time.thread_time(), 0.0


def long_gap_split(beats: list[float], times: list[tuple[float, float]]) -> tuple[int, float, float, float]:
    """(number of gaps over LONG_GAP_MS, their mean length in ms, share of their time the main
    thread ran on a CPU, share it was ready to run but waited for a core).

    The rest of the time the main thread was blocked: waiting for the GIL another thread held, for
    the OpenGL driver's threads, or idle.
    """
    wall = np.diff(beats)
    on_cpu, queued = (np.diff(np.array([t[i] for t in times])) for i in (0, 1))
    long = wall * 1000 > LONG_GAP_MS
    if not long.any():
        return 0, float("nan"), float("nan"), float("nan")
    total = wall[long].sum()
    n = int(long.sum())
    return n, 1000 * total / n, float(on_cpu[long].sum() / total), float(queued[long].sum() / total)


class MainThreadSampler:
    """Samples the main thread's Python stack every ``interval`` s from a helper thread.

    Samples that fall inside a long heartbeat gap say what the event loop was doing then. The
    helper needs the GIL to take a sample, so a gap with no samples is one where the GIL was held
    elsewhere (or the process had no core).
    """

    def __init__(self, interval: float = 0.002) -> None:
        import threading

        self.interval = interval
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        #: (time, innermost frames of the other threads) when a sample came over 20 ms late: the
        #: sampler waited for the GIL or a core, and these threads were where they let it go
        self.late: list[tuple[float, tuple[str, ...]]] = []
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MainThreadSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import sys
        import threading

        def where(frame) -> str:
            code = frame.f_code
            return f"{Path(code.co_filename).name}:{code.co_name}"

        me = threading.get_ident()
        last = time.perf_counter()
        while not self._stop.wait(self.interval):
            now = time.perf_counter()
            frames = sys._current_frames()
            frame = frames.get(self._main)
            stack = []
            while frame is not None and len(stack) < 40:
                stack.append(where(frame))
                frame = frame.f_back
            self.samples.append((now, tuple(stack)))
            if now - last > self.interval + 0.020:
                others = [where(f) for t, f in frames.items() if t not in (me, self._main)]
                self.late.append((now, tuple(others)))
            last = now

    def report(self, beats: list[float], top: int = 8) -> list[str]:
        """The functions most often on the main thread's stack during gaps over LONG_GAP_MS."""
        from collections import Counter

        gaps = [(a, b) for a, b in zip(beats, beats[1:], strict=False) if (b - a) * 1000 > LONG_GAP_MS]
        inside = [s for t, s in self.samples if any(a < t < b for a, b in gaps)]
        if not inside:
            return []
        leaf: Counter = Counter()
        entry: Counter = Counter()
        for stack in inside:
            own = [n for n in stack if not n.startswith(("bench_gui_latency.py", "threading.py"))]
            leaf[own[0] if own else "(no Python: Qt, OpenGL or idle)"] += 1
            entry[own[-1] if own else "(no Python: Qt, OpenGL or idle)"] += 1
        total_ms = sum(b - a for a, b in gaps) * 1000
        lines = [f"{len(inside)} samples in {len(gaps)} gaps ({total_ms:.0f} ms)"]
        for title, counter in (("handler entered from the event loop", entry), ("innermost frame", leaf)):
            lines.append(f"  by {title}:")
            lines += [f"    {100 * n / len(inside):4.0f} %  {name}" for name, n in counter.most_common(top)]
        late = [s for t, s in self.late if any(a < t < b for a, b in gaps)]
        if late:
            where: Counter = Counter(name for stack in late for name in set(stack))
            lines.append(f"  {len(late)} samples came late (GIL or core taken); other threads were then in:")
            lines += [f"    {n:5d}  {name}" for name, n in where.most_common(top)]
        return lines


def run_while_scrolling(
    app, viewer, is_running, seconds: float, stop, scroll_hz: float = 20.0
) -> tuple[list[float], list[tuple[float, float]]]:
    """Heartbeat times and the main thread's :func:`thread_times` at each, while a timer scrolls the stack
    ``scroll_hz`` times a second (0: not at all), until the work ends or ``seconds`` have passed.

    ``stop`` then asks the work to stop, and the event loop runs on until it has; None: there is
    no work, only the ``seconds``."""
    from qtpy.QtCore import QTimer

    beats: list[float] = []
    cpu: list[tuple[float, float]] = []

    def beat() -> None:
        beats.append(time.perf_counter())
        cpu.append(thread_times())

    heart = QTimer()
    heart.setInterval(10)
    heart.timeout.connect(beat)
    n = int(viewer.dims.range[0].stop - viewer.dims.range[0].start) + 1 if viewer.dims.ndim == 3 else 1
    pos = {"z": 0, "d": 1}

    def scroll() -> None:
        z = pos["z"] + pos["d"]
        if not 0 <= z < n:
            pos["d"] *= -1
            z = pos["z"] + pos["d"]
        pos["z"] = z
        viewer.dims.set_current_step(0, z)

    wheel = QTimer()
    wheel.setInterval(int(1000 / scroll_hz) if scroll_hz else 1000)
    wheel.timeout.connect(scroll)
    heart.start()
    if scroll_hz:
        wheel.start()
    end = time.perf_counter() + seconds
    while is_running() and time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.001)
    wheel.stop()
    heart.stop()
    if stop is None:
        return beats, cpu
    stop()
    while is_running():
        app.processEvents()
        time.sleep(0.005)
    return beats, cpu


def synthetic_annotations(truth: np.ndarray, zs: list[int]) -> np.ndarray:
    """Scribble-like annotations from ground truth: every 24th row and column of a few slices."""
    ann = np.zeros_like(truth, dtype=np.uint8)
    for z in zs:
        ann[z, ::24, :] = truth[z, ::24, :]
        ann[z, :, ::24] = truth[z, :, ::24]
    return ann


def viewer_with(images: np.ndarray):
    """A shown napari window of the benchmarks' size holding ``images`` as "em", and the app."""
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.add_image(images, name="em")
    return viewer, QApplication.instance()


def cpu_dock(viewer, name: str, model_path: Path):
    """One of this plugin's docks, computing on the CPU with the model file ``model_path``."""
    _, dock = viewer.window.add_plugin_dock_widget("napari-unet", name)
    dock.model_chooser.select_file(model_path)
    dock.device_combo.setCurrentText("cpu")
    return dock


def scroll_scenario(args, model_path: Path, model_note: str) -> None:
    """p99 and maximum event-loop gap while scrolling during Segment and during training."""
    import napari
    import torch

    from napari_unet.storage.data import synthetic_em

    images, truth = synthetic_em(n_slices=args.slices, shape=(args.size, args.size))
    viewer, app = viewer_with(images)
    seg = cpu_dock(viewer, "Segment", model_path)
    seg.precision_combo.setCurrentText(args.precision)
    ft = cpu_dock(viewer, "Fine-tune", model_path)
    heartbeat_gaps(app, 10, 1.0)
    rows = []
    profiles: list[tuple[str, list[str]]] = []

    def measure(name: str, *run_args, **run_kwargs) -> None:
        with MainThreadSampler() if args.profile else contextlib.nullcontext() as sampler, GcPauses() as gcp:
            beats, cpu = run_while_scrolling(app, viewer, *run_args, **run_kwargs)
        rows.append((name, *gap_stats(beats), *long_gap_split(beats, cpu), *gcp.full()))
        print(
            f"measured: {name}: p99 {rows[-1][1]:.0f} ms, max {rows[-1][2]:.0f} ms; full garbage "
            f"collections {rows[-1][7]} (longest {rows[-1][8]:.0f} ms); "
            f"load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        if sampler is not None:
            profiles.append((name, sampler.report(beats)))

    with Busy(args.busy):
        measure("idle, no scrolling", lambda: True, 3.0, None, scroll_hz=0)
        measure("scrolling, nothing running", lambda: True, 5.0, None)
        seg.segment()
        measure("scrolling while Segment runs", lambda: seg.running, args.seconds, seg.task.cancel)
        layer = ft.add_annotation_layer()
        layer.data[...] = synthetic_annotations(truth, [0, 1, 2])
        ft.limit_combo.setCurrentText("minutes")
        ft.minutes_spin.setValue(60)
        ft.train()

        def stepping() -> bool:
            last = getattr(ft._run, "last", None)
            return last is not None and last.kind != "validation"

        t0 = time.perf_counter()
        measure(
            "scrolling while Fine-tune prepares (until its first step)",
            lambda: ft.running and not stepping(),
            120.0,
            None,
        )
        print(f"measured: the first training step came after {time.perf_counter() - t0:.1f} s", flush=True)
        measure(
            "scrolling while Fine-tune trains (live preview on)", lambda: ft.running, args.seconds, ft.stop
        )
        layers = ", ".join(f"{type(ly).__name__} '{ly.name}'" for ly in viewer.layers)
        measure(f"scrolling, nothing running, layers now: {layers}", lambda: True, 5.0, None)
        previews = sum(1 for ly in viewer.layers if ly.name == "em preview")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), napari {napari.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}; second busy process: {'yes' if args.busy else 'no'}"
    )
    print(
        f"model: {model_note}; stack {args.slices} x {args.size} x {args.size}; "
        f"{args.seconds:.0f} s per measurement; preview layer made: {bool(previews)}"
    )
    long = f"gaps > {LONG_GAP_MS:.0f} ms"
    print(
        f"| situation | p99 gap (ms) | max gap (ms) | {long} (mean ms) | in them the main thread: on a CPU | "
        "waiting for a core | blocked (GIL, GL driver) | full garbage collections (longest ms) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, p99, mx, n_long, mean, on_cpu, queued, n_gc, gc_ms in rows:
        split = (
            ["-"] * 3 if not n_long else [f"{100 * x:.0f} %" for x in (on_cpu, queued, 1 - on_cpu - queued)]
        )
        print(
            f"| {name} | {p99:.0f} | {mx:.0f} | {n_long} ({mean:.0f}) | {' | '.join(split)} | "
            f"{n_gc} ({gc_ms:.0f}) |"
        )
    for name, lines in profiles:
        print(f"\nmain thread during gaps > {LONG_GAP_MS:.0f} ms, {name}:")
        print("\n".join(lines) or "  no such gap")
    viewer.close()


def dense_sections(folder: Path, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` sections of a folder laid out as raw/*.tif and membranes/*.png (True =
    membrane), as images and dense labels (1 = membrane, 2 = cell)."""
    from PIL import Image

    raws = sorted((folder / "raw").glob("*.tif"))[:n]
    masks = sorted((folder / "membranes").glob("*.png"))[:n]
    images = np.stack([np.asarray(Image.open(p)) for p in raws])
    labels = np.stack([np.where(np.asarray(Image.open(p)) > 0, 1, 2) for p in masks]).astype(np.uint8)
    return images, labels


def train_start_scenario(args, model_path: Path, model_note: str) -> None:
    """Longest event-loop gap from the click on Train through the first ``--seconds``: the
    trainer's setup (weight maps, imports), the start model's validation and the first steps."""
    import torch

    from napari_unet.storage.data import synthetic_em

    if args.sections:
        images, labels = dense_sections(Path(args.sections))
        what = f"3 dense sections of {args.sections}, {images.shape[1]} x {images.shape[2]}"
    else:
        images, truth = synthetic_em(n_slices=args.slices, shape=(args.size, args.size))
        labels = synthetic_annotations(truth, [0, 1, 2])
        what = f"synthetic {args.slices} x {args.size} x {args.size}, scribbles on 3 slices"
    viewer, app = viewer_with(images)
    ft = cpu_dock(viewer, "Fine-tune", model_path)
    ft.add_annotation_layer().data[...] = labels
    ft.limit_combo.setCurrentText("minutes")
    ft.minutes_spin.setValue(60)
    ft.live_check.setChecked(not args.no_live_preview)
    heartbeat_gaps(app, 10, 1.0 + args.wait)  # the dock open a while, as when the user paints first
    events: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    ft.task.yielded.connect(lambda e: events.append((time.perf_counter() - t0, e.kind)))
    with Busy(args.busy), MainThreadSampler() if args.profile else contextlib.nullcontext() as sampler:
        ft.train()
        beats, cpu = run_while_scrolling(app, viewer, lambda: ft.running, args.seconds, ft.stop, scroll_hz=0)
    p99, mx = gap_stats(beats)
    worst = float(beats[int(np.argmax(np.diff(beats))) + 1] - t0)
    first = next((t for t, kind in events if kind == "validation"), None)
    first_step = next((t for t, kind in events if kind == "step"), None)
    steps = sum(1 for _, kind in events if kind == "step")
    n_long, mean, on_cpu, queued = long_gap_split(beats, cpu)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, load average {os.getloadavg()[0]:.1f}; second busy process: "
        f"{'yes' if args.busy else 'no'}; live preview: {'off' if args.no_live_preview else 'on'}; "
        f"model: {model_note}; data: {what}"
    )
    print(
        f"from the click on Train, {args.seconds:.0f} s: p99 gap {p99:.0f} ms, longest {mx:.0f} ms "
        f"(ending {worst:.1f} s after the click); {n_long} gaps > {LONG_GAP_MS:.0f} ms; start "
        f"validation shown after {first if first is None else round(first, 1)} s; first step after "
        f"{first_step if first_step is None else round(first_step, 1)} s; {steps} steps; the dock was "
        f"open {1 + args.wait:.0f} s before the click"
    )
    if n_long:
        print(
            f"in those gaps the main thread ran {100 * on_cpu:.0f} %, waited for a core "
            f"{100 * queued:.0f} %, was blocked {100 * (1 - on_cpu - queued):.0f} %"
        )
    if sampler is not None:
        print("\n".join(sampler.report(beats)) or "no gap over 50 ms")
    viewer.close()


def preview_scenario(args, model_path: Path, model_note: str) -> None:
    """Training throughput of the Fine-tune dock with the live preview off and on."""
    import torch

    from napari_unet._widgets import finetune
    from napari_unet.storage.data import synthetic_em

    images, truth = synthetic_em(n_slices=4, shape=(args.size, args.size))
    viewer, app = viewer_with(images)
    ft = cpu_dock(viewer, "Fine-tune", model_path)
    layer = ft.add_annotation_layer()
    layer.data[...] = synthetic_annotations(truth, [0, 1, 2])
    ft.limit_combo.setCurrentText("minutes")
    ft.minutes_spin.setValue(args.seconds / 60)
    rates: dict[bool, list[float]] = {False: [], True: []}
    previews: list[int] = []
    shares: list[float] = []
    with Busy(args.busy):
        for repeat in range(args.repeats):
            for live in (False, True):
                ft.live_check.setChecked(live)
                events = []
                ft.task.yielded.connect(events.append)
                cpu0 = _process_cpu()
                ft.train()
                run = ft._run
                while ft.running:
                    app.processEvents()
                    time.sleep(0.002)
                cpu = _process_cpu() - cpu0
                ft.task.yielded.disconnect(events.append)
                if live and run:
                    shares.append(run.preview.cpu / cpu)
                steps = [e for e in events if e.kind == "step"]
                first = steps[0]
                rate = (steps[-1].step - first.step) / (steps[-1].elapsed - first.elapsed)
                rates[live].append(rate)
                if live:
                    previews.append(run.preview.count if run else 0)
                print(
                    f"run {repeat + 1}, preview {'on ' if live else 'off'}: {rate:.3f} steps/s, "
                    f"{len(steps)} steps, process CPU {cpu:.0f} s",
                    flush=True,
                )
    off, on = float(np.mean(rates[False])), float(np.mean(rates[True]))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), load average "
        f"{os.getloadavg()[0]:.1f}; second busy process: {'yes' if args.busy else 'no'}"
    )
    print(
        f"model: {model_note}; {args.size} x {args.size} slices; preview every "
        f"{finetune.PREVIEW_EVERY_S:.0f} s; previews painted per run: {previews}"
    )
    print(
        f"training throughput: preview off {off:.3f} steps/s, on {on:.3f} steps/s; "
        f"the preview costs {100 * (1 - on / off):.0f} % (target <= 20 %)"
    )
    print(
        "CPU time of the preview thread / CPU time of the whole process while training: "
        f"{', '.join(f'{100 * x:.1f} %' for x in shares)} (when training keeps the machine busy, "
        "the share of training throughput the preview takes)"
    )
    viewer.close()


def main() -> None:
    """Run the measurement and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--tile", type=int, default=0, help="input tile, 0 = auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", help="a .safetensors model (default: the shipped one)")
    ap.add_argument("--scenario", choices=("click", "scroll", "preview", "train-start"), default="click")
    ap.add_argument(
        "--wait", type=float, default=0.0, help="train-start: seconds the dock is open before the click"
    )
    ap.add_argument(
        "--sections", help="train-start: a folder with raw/*.tif and membranes/*.png (dense labels)"
    )
    ap.add_argument("--busy", action="store_true", help="a second busy process meanwhile")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each measurement")
    ap.add_argument("--slices", type=int, default=6, help="slices of the scrolled stack")
    ap.add_argument(
        "--no-live-preview", action="store_true", help="train-start: training without the live preview"
    )
    ap.add_argument(
        "--profile", action="store_true", help="scroll: sample the main thread's stack during long gaps"
    )
    args = ap.parse_args()

    import napari
    import torch
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_unet import UNet, save_model
    from napari_unet.models import default_model_path
    from napari_unet.storage.data import synthetic_em

    shipped = default_model_path()
    tmp = None
    if args.model:
        model_path, model_note = Path(args.model), f"model file {args.model}"
    elif shipped is not None:
        model_path, model_note = shipped, f"shipped model {shipped.name}"
    else:
        tmp = tempfile.TemporaryDirectory()
        model_path = Path(tmp.name) / "base16.safetensors"
        torch.manual_seed(0)
        save_model(UNet(base_channels=16), model_path, metadata={"classes": ["membrane", "cell"]})
        model_note = "NO shipped model in this installation: a base-16 U-Net (random weights)"

    if args.scenario == "scroll":
        scroll_scenario(args, model_path, model_note)
        return
    if args.scenario == "preview":
        preview_scenario(args, model_path, model_note)
        return
    if args.scenario == "train-start":
        train_start_scenario(args, model_path, model_note)
        return
    image = synthetic_em(n_slices=1, shape=(args.size, args.size))[0][0]
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.add_image(image, name="em")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    widget.model_chooser.select_file(model_path)
    widget.device_combo.setCurrentText("cpu")
    widget.precision_combo.setCurrentText(args.precision)
    widget.tile_spin.setValue(args.tile)
    app = QApplication.instance()
    idle = heartbeat_gaps(app, 10, 2.0)

    canvas_events = None
    try:  # the vispy canvas's draw event: when a painted tile actually reaches the screen
        canvas_events = viewer.window._qt_viewer.canvas._scene_canvas.events
    except AttributeError:
        pass

    results = []
    for repeat in range(args.repeats):
        beats: list[float] = []
        timer = QTimer()
        timer.setInterval(10)
        timer.timeout.connect(lambda b=beats: b.append(time.perf_counter()))
        marks: dict[str, float] = {}
        draws: list[float] = []

        paint = widget._paint

        def timed_paint(tile, m=marks, paint=paint):
            if tile.labels is not None:
                m.setdefault("arrived", time.perf_counter())
            paint(tile)  # the dock's own painter: copy the tile into the layer, refresh it
            if tile.labels is not None:
                m.setdefault("painted", time.perf_counter())
                m["last"] = time.perf_counter()

        widget._paint = timed_paint  # the click hands widget._paint to the worker

        def on_draw(_event=None, d=draws):
            d.append(time.perf_counter())

        if canvas_events is not None:
            canvas_events.draw.connect(on_draw)
        timer.start()
        t0 = time.perf_counter()
        widget.segment_button.click()
        marks["click"] = time.perf_counter()
        while widget.running:
            app.processEvents()
            time.sleep(0.001)
        t_end = time.perf_counter()
        timer.stop()
        if canvas_events is not None:
            canvas_events.draw.disconnect(on_draw)
        del widget._paint
        painted = marks.get("painted", np.nan)
        # the canvas may draw inside the painter (a synchronous refresh) or soon after it
        drawn = next((t for t in draws if t >= marks.get("arrived", np.nan)), np.nan)
        gaps = np.diff([t0, *beats, t_end])
        after_click = np.diff([b for b in beats if b > marks["click"]] + [t_end])
        # streaming: from the click's return until the last tile arrives; finishing: the gap that
        # holds the last tile's painting and the swap into the result layer right after it
        before_last = [b for b in beats if marks["click"] < b < marks["last"]]
        streaming = np.diff([marks["click"], *before_last])
        after_last = [b for b in beats if b >= marks["last"]] + [t_end]
        finishing = np.array([after_last[0] - (before_last[-1] if before_last else t0)])
        results.append(
            {
                "painted": painted - t0,
                "drawn": drawn - t0,
                "click": marks["click"] - t0,
                "max_gap_after_click": float(after_click.max()),
                "max_gap_streaming": float(streaming.max()) if streaming.size else 0.0,
                "max_gap_finishing": float(finishing.max()) if finishing.size else 0.0,
                "max_gap": float(gaps.max()),
                "p99_gap": float(np.percentile(gaps, 99)),
                "run": t_end - t0,
                "tiles": widget.task.progress_bar.maximum(),
            }
        )
        print(
            f"run {repeat + 1}: first tile painted {results[-1]['painted']:.2f} s, drawn "
            f"{results[-1]['drawn']:.2f} s after the click; longest event-loop gap "
            f"{1000 * results[-1]['max_gap']:.0f} ms (p99 {1000 * results[-1]['p99_gap']:.0f} ms), "
            f"of which the click itself {1000 * results[-1]['click']:.0f} ms, while tiles stream "
            f"{1000 * results[-1]['max_gap_streaming']:.0f} ms, finishing "
            f"{1000 * results[-1]['max_gap_finishing']:.0f} ms; "
            f"run {results[-1]['run']:.1f} s, {results[-1]['tiles']} tiles",
            flush=True,
        )

    print()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"napari {napari.__version__}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"model: {model_note}")
    print(
        f"image: {args.size} x {args.size}, tile {'auto' if not args.tile else args.tile}, "
        f"precision {args.precision}"
    )
    print(f"idle event loop: longest gap {1000 * max(idle):.0f} ms")
    best = min(results, key=lambda r: r["painted"])
    worst_gap = max(r["max_gap"] for r in results)
    worst_stream = max(r["max_gap_streaming"] for r in results)
    worst_finish = max(r["max_gap_finishing"] for r in results)
    print(
        f"first tile painted: {best['painted']:.2f} s (best of {len(results)}), on screen "
        f"{best['drawn']:.2f} s; median painted "
        f"{np.median([r['painted'] for r in results]):.2f} s"
    )
    print(
        f"longest event-loop gap during segmentation: {1000 * worst_gap:.0f} ms (worst run); "
        f"the click handler: up to {1000 * max(r['click'] for r in results):.0f} ms; "
        f"while tiles stream: up to {1000 * worst_stream:.0f} ms; finishing (swap into the "
        f"result layer): up to {1000 * worst_finish:.0f} ms"
    )
    viewer.close()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
