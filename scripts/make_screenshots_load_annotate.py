"""Takes the screenshots of the Load EM stack and Annotate docks in a real napari window.

    bash scripts/with-display.sh .venv/bin/python scripts/make_screenshots_load_annotate.py \\
        [--model PATH]

Writes docs/images/:
- load-dock.png: a calibrated ISBI 2012 stack chosen in the Load EM stack dock (preview of shape,
  voxel size and size on disk, a slice range) and opened lazily.
- annotate-dock.png: the Annotate dock after "Start from prediction" copied the Segment dock's
  result into the annotations, for the slice on screen and for a drawn rectangle.

Needs the ISBI 2012 files (``NAPARI_UNET_DATA_DIR`` or the download cache) and a trained model
(the shipped one, or ``--model``) for the segmentation. The stack is written to a temporary
folder for the run and removed afterwards. Nothing is mocked: the pictures are the viewer as a
user sees it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

# the guide's screenshot helpers (this folder is on the path when the script runs)
from make_screenshots import LOCAL_DATA, OUT, WINDOW, save_window, wait


def write_stack(folder: Path, n_slices: int) -> Path:
    """The ISBI 2012 test volume as one calibrated TIFF (4 x 4 nm pixels, 50 nm sections)."""
    import tifffile

    from napari_unet.storage.data import load_isbi2012

    images, _ = load_isbi2012("test", indices=range(n_slices))
    path = folder / "isbi2012_test.tif"
    tifffile.imwrite(
        path,
        images,
        imagej=True,
        resolution=(1 / 0.004, 1 / 0.004),
        metadata={"spacing": 0.05, "unit": "um", "axes": "ZYX"},
    )
    return path


def main() -> None:
    """Open the viewer, drive the docks as a user would, save the screenshots."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", help="a trained .safetensors model (default: the shipped one)")
    ap.add_argument("--slices", type=int, default=12, help="slices of the volume to write")
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

    with tempfile.TemporaryDirectory(prefix="napari-unet-shots-") as tmp:
        tmp_path = Path(tmp)
        os.environ["NAPARI_UNET_CONFIG_DIR"] = str(tmp_path / "config")  # leave the user's alone
        path = write_stack(tmp_path, args.slices)

        viewer = napari.Viewer(show=True, title="napari-unet")
        viewer.window._qt_window.resize(*WINDOW)
        app = QApplication.instance()
        wait(app, 0.5)

        # -- Load EM stack: preview, slice range, lazy open
        load_dock, load = viewer.window.add_plugin_dock_widget("napari-unet", "Load EM stack")
        load.set_path(path)
        wait(app, until=lambda: not load.previewing)
        load.set_slices(2, 5)
        load.load()
        wait(app, until=lambda: not load.running)
        image = load.last_layer
        viewer.dims.set_point(0, 150)  # world z in nm: slice 3 of the file
        viewer.reset_view()
        save_window(viewer, "load-dock.png", app)

        # -- a segmentation to start from, made by the Segment dock
        viewer.window.remove_dock_widget(load_dock)
        seg_dock, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
        segment.model_chooser.select_file(model)
        segment.image_combo.set_layer(image)
        segment.segment_button.click()
        wait(app, until=lambda: not segment.running)
        viewer.window.remove_dock_widget(seg_dock)
        seg = viewer.layers[f"{image.name} segmentation"]
        seg.visible = False

        # -- Annotate: copy the slice on screen, then a rectangle on the next slice
        _, annotate = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate")
        annotate.image_combo.set_layer(image)
        annotations = annotate.new_annotation_layer()
        annotate.prediction_combo.set_layer(seg)
        viewer.dims.set_point(0, 100)  # slice 0 of the view
        annotate.start_from_prediction()
        viewer.dims.set_point(0, 150)
        shapes = annotate.draw_rectangle()
        z = 1
        shapes.add_rectangles(np.array([[z, 140, 120], [z, 140, 330], [z, 300, 330], [z, 300, 120]], float))
        annotate.start_from_prediction()
        viewer.layers.selection.active = annotations
        annotations.mode = "paint"
        annotate.select_class(1)
        annotate.class_list.setCurrentRow(0)
        wait(app, until=lambda: not annotate.counting)
        save_window(viewer, "annotate-dock.png", app)
        viewer.close()


if __name__ == "__main__":
    main()
