"""Takes the user guide's screenshots in a real napari window (run it under a display).

    bash scripts/with-display.sh .venv/bin/python scripts/make_screenshots.py [--model PATH]

Writes docs/images/:
- gui-plugins-menu.png: Plugins > napari-unet, where the docks are.
- gui-segment-isbi.png: the ISBI 2012 sample segmented by the Segment dock.
- gui-finetune.png: the Fine-tune dock mid-run on strokes painted on three slices: the falling
  loss curve with its validation line, the validation figures, and the live preview of the slice
  on screen in the same class colours as the strokes.
- gui-save-masks.png: the Save masks dock.

Needs the ISBI 2012 files (``NAPARI_UNET_DATA_DIR`` or the download cache) and a trained model: the
shipped one, or ``--model``. Nothing here is mocked: every image is the viewer as a user sees it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"
#: a local copy of the ISBI 2012 files beside the checkout, used when present (read, never copied)
LOCAL_DATA = ROOT.parent / "shared" / "data"
WINDOW = (1500, 950)


def wait(app, seconds: float = 0.0, until=None, timeout: float = 600.0) -> None:
    """Let the event loop run for ``seconds``, or until ``until()`` is true."""
    end = time.perf_counter() + (timeout if until is not None else seconds)
    while time.perf_counter() < end:
        app.processEvents()
        if until is not None and until():
            break
        time.sleep(0.01)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)


def close_notifications() -> None:
    """Close the notification pop-ups so they do not cover the picture."""
    from qtpy.QtWidgets import QApplication

    for w in QApplication.allWidgets():
        if type(w).__name__ == "NapariQtNotification":
            w.close()


#: the most a screenshot may weigh; larger ones are shown at a smaller size
MAX_BYTES = 290_000


def write_png(pixels: np.ndarray, path: Path) -> None:
    """Save RGB(A) ``pixels`` as a 256-colour PNG under MAX_BYTES, shrinking it only if needed.

    The docks' text and the class colours survive the palette; the EM texture is what costs bytes.
    """
    import io

    from PIL import Image

    image = Image.fromarray(np.asarray(pixels)[..., :3])
    scale = 1.0
    while True:
        size = (round(image.width * scale), round(image.height * scale))
        shown = image if scale == 1.0 else image.resize(size, Image.Resampling.LANCZOS)
        small = shown.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        buffer = io.BytesIO()
        small.save(buffer, format="PNG", optimize=True)
        if buffer.tell() <= MAX_BYTES or scale < 0.5:
            break
        scale *= 0.9
    path.write_bytes(buffer.getvalue())
    print(f"wrote {path} ({size[0]} x {size[1]}, {buffer.tell() // 1000} kB)", flush=True)


def save_window(viewer, name: str, app=None) -> None:
    """The whole window (canvas and docks), as napari renders it; with ``app``, after a moment."""
    close_notifications()
    if app is not None:
        wait(app, 0.3)
    write_png(viewer.screenshot(canvas_only=False, flash=False), OUT / name)


def plugins_menu(viewer, app) -> None:
    """Open Plugins > napari-unet and grab the screen with the menus on it."""
    win = viewer.window._qt_window
    bar = win.menuBar()
    action = next(a for a in bar.actions() if "Plugins" in a.text())
    menu = action.menu()
    menu.popup(bar.mapToGlobal(bar.actionGeometry(action).bottomLeft()))
    wait(app, 0.3)
    sub_action = next(a for a in menu.actions() if a.text() == "napari-unet")
    geometry = menu.actionGeometry(sub_action)
    menu.setActiveAction(sub_action)
    sub = sub_action.menu()
    sub.popup(menu.mapToGlobal(geometry.topRight()))
    wait(app, 0.5)
    screen = app.primaryScreen().grabWindow(0)
    top_left = win.mapToGlobal(win.rect().topLeft())
    right = max(sub.geometry().right(), menu.geometry().right()) + 40
    bottom = max(sub.geometry().bottom(), menu.geometry().bottom()) + 40
    crop = screen.copy(
        top_left.x(), top_left.y(), min(right - top_left.x(), 900), min(bottom - top_left.y(), 500)
    )
    crop.save(str(OUT / "gui-plugins-menu.png"))
    print("wrote", OUT / "gui-plugins-menu.png", flush=True)
    sub.hide()
    menu.hide()
    wait(app, 0.2)


def choose(chooser, model: Path, shipped: bool) -> None:
    """Pick the shipped model as a user would (its own entry), or the given file."""
    if shipped:
        chooser.select_default()
    else:
        chooser.select_file(model)


def scribbles(truth: np.ndarray, every: int = 48, width: int = 3) -> np.ndarray:
    """Sparse strokes from a ground-truth slice: a few thin bands, as a person might paint them."""
    out = np.zeros_like(truth)
    for y in range(every // 2, truth.shape[0], every):
        out[y : y + width] = truth[y : y + width]
    for x in range(every, truth.shape[1], 2 * every):
        out[:, x : x + width] = truth[:, x : x + width]
    return out


def main() -> None:
    """Open the viewer, drive the docks as a user would, save the screenshots."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", help="a trained .safetensors model (default: the shipped one)")
    ap.add_argument("--slice", type=int, default=3, help="ISBI slice to show")
    ap.add_argument("--steps", type=int, default=80, help="fine-tuning steps for the screenshot")
    ap.add_argument("--whole-stack", action="store_true", help="segment all slices, not the one shown")
    args = ap.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_unet.models import default_model_path

    model = Path(args.model) if args.model else default_model_path()
    if model is None or not model.is_file():
        sys.exit("no trained model: this installation ships none; pass --model PATH")
    OUT.mkdir(parents=True, exist_ok=True)
    if (LOCAL_DATA / "isbi2012").is_dir():
        os.environ.setdefault("NAPARI_UNET_DATA_DIR", str(LOCAL_DATA))

    viewer = napari.Viewer(show=True, title="napari-unet")
    viewer.window._qt_window.resize(*WINDOW)
    app = QApplication.instance()
    wait(app, 0.5)
    plugins_menu(viewer, app)

    viewer.open_sample("napari-unet", "isbi2012")
    truth_layer = viewer.layers["ISBI 2012 ground truth"]
    truth_layer.visible = False
    viewer.dims.set_current_step(0, args.slice)
    seg_dock, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    choose(segment.model_chooser, model, shipped=args.model is None)
    segment.image_combo.set_layer(viewer.layers["ISBI 2012 EM"])
    if not args.whole_stack:
        segment.scope_combo.setCurrentText("this slice")
    segment.segment_button.click()
    wait(app, until=lambda: not segment.running)
    viewer.layers["ISBI 2012 EM segmentation"].opacity = 0.45
    viewer.layers.selection.active = viewer.layers["ISBI 2012 EM segmentation"]
    viewer.reset_view()
    wait(app, 0.5)
    save_window(viewer, "gui-segment-isbi.png")

    viewer.window.remove_dock_widget(seg_dock)  # the Fine-tune dock gets the window's height
    dock, finetune = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    finetune.image_combo.set_layer(viewer.layers["ISBI 2012 EM"])
    choose(finetune.model_chooser, model, shipped=args.model is None)
    annotations = finetune.add_annotation_layer()
    truth = np.asarray(truth_layer.data)
    for z in (args.slice - 1, args.slice, args.slice + 1):  # three slices: one is held out
        annotations.data[z] = scribbles(truth[z])
    annotations.refresh()
    viewer.layers["ISBI 2012 EM segmentation"].visible = False
    finetune.steps_spin.setValue(args.steps)
    finetune.train_button.click()
    run = finetune._run
    curve = finetune.loss_curve

    def mid_run() -> bool:
        """Most steps done, a validation after the start model's, and a preview painted."""
        return (
            not finetune.running
            or len(curve.steps) >= 0.75 * args.steps
            and len(curve.val_steps) >= 2
            and "ISBI 2012 EM preview" in viewer.layers
        )

    wait(app, until=mid_run)
    curve.redraw()
    viewer.layers.selection.active = annotations
    annotations.mode = "paint"
    annotations.opacity = 0.9
    wait(app, 0.5)
    print(f"fine-tune shot at step {curve.steps[-1] if curve.steps else 0}, running: {finetune.running}")
    save_window(viewer, "gui-finetune.png")
    # a preview still computing would report to a closed viewer
    wait(app, until=lambda: not finetune.running and not run["preview_busy"])

    viewer.window.remove_dock_widget(dock)
    _, save = viewer.window.add_plugin_dock_widget("napari-unet", "Save masks")
    save.labels_combo.set_layer(viewer.layers["ISBI 2012 EM segmentation"])
    save.path_edit.setText("isbi_masks")
    viewer.layers["ISBI 2012 EM segmentation"].visible = True
    annotations.visible = False
    viewer.layers.selection.active = viewer.layers["ISBI 2012 EM segmentation"]
    viewer.reset_view()
    wait(app, 0.5)
    save_window(viewer, "gui-save-masks.png")
    viewer.close()


if __name__ == "__main__":
    main()
