"""Takes the screenshot of all five docks open in a 1400 x 1000 window, Segment mid-run.

    bash scripts/with-display.sh .venv/bin/python scripts/make_screenshot_docks.py [--model PATH]

Writes docs/images/gui-all-docks.png: each dock's form scrolls and its main button and progress
stay below it, so all five fit a laptop screen. Needs the ISBI 2012 files (``NAPARI_UNET_DATA_DIR``
or the download cache) and a trained model (the shipped one, or ``--model``). Nothing is mocked.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# the guide's screenshot helpers (this folder is on the path when the script runs)
from make_screenshots import LOCAL_DATA, save_window, wait

#: the laptop-sized window the docks must fit
WINDOW = (1400, 1000)
DOCKS = ("Load EM stack", "Annotate", "Fine-tune", "Segment", "Save masks")


def main() -> None:
    """Open the five docks, start Segment on the whole stack, grab the window mid-run."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", help="a trained .safetensors model (default: the shipped one)")
    args = ap.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_unet.models import default_model_path

    model = Path(args.model) if args.model else default_model_path()
    if model is None or not model.is_file():
        sys.exit("no trained model: this installation ships none; pass --model PATH")
    if (LOCAL_DATA / "isbi2012").is_dir():
        os.environ.setdefault("NAPARI_UNET_DATA_DIR", str(LOCAL_DATA))
    viewer = napari.Viewer(show=True, title="napari-unet")
    viewer.window._qt_window.resize(*WINDOW)
    app = QApplication.instance()
    viewer.open_sample("napari-unet", "isbi2012")
    viewer.layers["ISBI 2012 ground truth"].visible = False
    docks = {}
    for name in DOCKS:
        docks[name] = viewer.window.add_plugin_dock_widget("napari-unet", name)[1]
        wait(app, 0.2)
    segment = docks["Segment"]
    if args.model:
        segment.model_chooser.select_file(model)
    segment.image_combo.set_layer(viewer.layers["ISBI 2012 EM"])
    docks["Save masks"].path_edit.setText("~/isbi-masks.tif")
    segment.segment_button.click()
    wait(app, until=lambda: segment.task.progress_bar.value() >= 2 or not segment.running)
    save_window(viewer, "gui-all-docks.png", app)
    segment.task.cancel()
    wait(app, until=lambda: not segment.running)
    viewer.close()


if __name__ == "__main__":
    main()
