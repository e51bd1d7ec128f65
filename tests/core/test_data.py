"""Sample data: ISBI 2012 loading from a cache (and from a local server), synthetic EM."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_unet._sample_data import isbi2012_sample, synthetic_sample
from napari_unet.arrays.metrics import iou
from napari_unet.errors import UserInputError
from napari_unet.storage import data
from napari_unet.storage.data import (
    DATA_DIR_ENV,
    isbi2012_available,
    isbi2012_files,
    load_isbi2012,
    synthetic_em,
)

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SHARED_ISBI = SHARED_DATA / "isbi2012"
needs_isbi = pytest.mark.skipif(
    not (SHARED_ISBI / "MANIFEST.tsv").is_file(),
    reason=f"ISBI 2012 data not found at {SHARED_ISBI} (expected beside the repository)",
)
PACKAGED_MANIFEST = Path(data.__file__).parents[1] / "resources" / "isbi2012.tsv"


def _packaged_rows() -> list[dict[str, str]]:
    with open(PACKAGED_MANIFEST, encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------- ISBI 2012
def test_packaged_manifest_lists_every_upstream_file():
    rows = _packaged_rows()
    assert len(rows) == 90  # 30 training images, 30 training labels, 30 test images
    assert {r["local_path"] for r in rows} == set(
        isbi2012_files("train", range(30)) + isbi2012_files("test")
    )
    assert all(len(r["sha256"]) == 64 for r in rows)
    held_out = next(r for r in rows if r["local_path"] == "train/labels/25.png")
    assert held_out["upstream_path"] == "data/membrane/train/label/25.png"


@needs_isbi
def test_packaged_manifest_matches_the_shared_one():
    with open(SHARED_ISBI / "MANIFEST.tsv", encoding="utf-8") as fh:
        shared = {r["upstream_path"]: r for r in csv.DictReader(fh, delimiter="\t")}
    packaged = _packaged_rows()
    assert {r["upstream_path"] for r in packaged} == set(shared)
    for row in packaged:
        ref = shared[row["upstream_path"]]
        assert row["sha256"] == ref["sha256"]
        assert ref["local_copy"] in ("-", row["local_path"])


@needs_isbi
def test_load_train_from_shared_cache():
    images, labels = load_isbi2012("train", cache_dir=SHARED_DATA, download=False)
    assert images.shape == labels.shape == (20, 512, 512)
    assert images.dtype == labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == {0, 255}
    assert 0.1 < (labels == 0).mean() < 0.4  # membrane fraction of ISBI slices
    # Every file read was verified against the packaged sha256.
    expected = {r["local_path"]: r["sha256"] for r in _packaged_rows()}
    for name in isbi2012_files("train"):
        assert _sha256(SHARED_ISBI / name) == expected[name]
    assert isbi2012_available("train", cache_dir=SHARED_DATA)


@needs_isbi
def test_env_var_selects_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_DIR_ENV, str(SHARED_DATA))
    images, labels = load_isbi2012("train", indices=[3, 7], download=False)
    from PIL import Image

    ref = np.asarray(Image.open(SHARED_ISBI / "train" / "images" / "07.png"))
    np.testing.assert_array_equal(images[1], ref)
    assert labels.shape == (2, 512, 512)
    test_images, test_labels = load_isbi2012("test", indices=29, download=False)
    assert test_images.shape == (1, 512, 512) and test_labels is None
    # The argument wins over the environment variable.
    assert not isbi2012_available("train", cache_dir=tmp_path)


@needs_isbi
def test_held_out_slices_are_not_in_the_shared_cache():
    assert not isbi2012_available("train", indices=[20], cache_dir=SHARED_DATA)
    with pytest.raises(UserInputError, match=r"train/images/20\.png"):
        load_isbi2012("train", indices=[20], cache_dir=SHARED_DATA, download=False)


def test_offline_and_not_cached_says_which_file_and_what_to_set(tmp_path):
    assert not isbi2012_available("train", cache_dir=tmp_path)
    with pytest.raises(UserInputError) as info:
        load_isbi2012("train", cache_dir=tmp_path, download=False)
    message = str(info.value)
    assert "train/images/00.png" in message
    assert DATA_DIR_ENV in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []  # nothing written


@needs_isbi
def test_a_corrupt_cached_file_is_rejected(tmp_path):
    target = tmp_path / "isbi2012" / "train" / "images" / "00.png"
    target.parent.mkdir(parents=True)
    raw = bytearray((SHARED_ISBI / "train" / "images" / "00.png").read_bytes())
    raw[-20] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(UserInputError, match="wrong sha256"):
        load_isbi2012("train", indices=[0], cache_dir=tmp_path, download=False)


def test_bad_split_and_indices_are_user_errors(tmp_path):
    with pytest.raises(UserInputError, match="split"):
        load_isbi2012("validation", cache_dir=tmp_path, download=False)
    with pytest.raises(UserInputError, match="out of range"):
        load_isbi2012("train", indices=[30], cache_dir=tmp_path, download=False)


@pytest.fixture
def upstream_server(tmp_path):
    """An HTTP server on localhost laid out like the upstream repository (two files)."""
    root = tmp_path / "upstream"
    (root / "data/membrane/train/image").mkdir(parents=True)
    (root / "data/membrane/train/label").mkdir(parents=True)
    shutil.copy(SHARED_ISBI / "train/images/01.png", root / "data/membrane/train/image/1.png")
    shutil.copy(SHARED_ISBI / "train/labels/01.png", root / "data/membrane/train/label/1.png")
    # Served under the name of slice 2 but with slice 1's bytes: its hash must not match.
    shutil.copy(SHARED_ISBI / "train/images/01.png", root / "data/membrane/train/image/2.png")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@needs_isbi
def test_download_verifies_and_caches(upstream_server, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "ISBI2012_BASE_URL", upstream_server)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    cache = tmp_path / "cache"
    images, labels = load_isbi2012("train", indices=[1], cache_dir=cache)
    assert _sha256(cache / "isbi2012/train/images/01.png") == _sha256(
        SHARED_ISBI / "train/images/01.png"
    )
    assert (cache / "isbi2012/train/labels/01.png").is_file()
    assert isbi2012_available("train", indices=[1], cache_dir=cache)
    assert images.shape == labels.shape == (1, 512, 512)
    with pytest.raises(UserInputError, match=r"train/images/02\.png"):
        load_isbi2012("train", indices=[2], cache_dir=cache)
    assert not (cache / "isbi2012/train/images/02.png").exists()
    with pytest.raises(UserInputError, match=DATA_DIR_ENV):
        load_isbi2012("train", indices=[3], cache_dir=cache)  # not served: HTTP 404


@needs_isbi
def test_isbi2012_sample_gives_classes(monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(SHARED_DATA))
    (images, image_meta, image_kind), (classes, label_meta, label_kind) = isbi2012_sample()
    assert image_kind == "image" and label_kind == "labels"
    assert image_meta == {"name": "ISBI 2012 EM"}
    assert label_meta["name"] == "ISBI 2012 ground truth"
    assert label_meta["metadata"]["napari_unet"]["role"] == "ground truth"  # never annotations
    assert label_meta["features"]["class"] == ["unlabelled", "membrane", "cell"]
    assert images.shape == classes.shape == (20, 512, 512)
    assert classes.dtype == np.uint8 and set(np.unique(classes).tolist()) == {1, 2}


def test_isbi2012_sample_unavailable_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(data, "ISBI2012_BASE_URL", "http://127.0.0.1:9/")  # nothing listens
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with pytest.raises(UserInputError, match=DATA_DIR_ENV):
        isbi2012_sample()


def test_sample_data_module_imports_no_gui():
    code = (
        "import sys, napari_unet._sample_data, napari_unet.storage.data, napari_unet.arrays.metrics; "
        "print(sorted(m for m in ('napari', 'qtpy', 'PyQt5', 'magicgui') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------- synthetic
def test_synthetic_em_is_deterministic_and_labelled():
    images, labels = synthetic_em(n_slices=3, shape=(96, 80), seed=5)
    again_images, again_labels = synthetic_em(n_slices=3, shape=(96, 80), seed=5)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(labels, again_labels)
    other, _ = synthetic_em(n_slices=3, shape=(96, 80), seed=6)
    assert not np.array_equal(images, other)
    assert images.shape == labels.shape == (3, 96, 80)
    assert images.dtype == labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == {1, 2}


def test_synthetic_em_looks_like_tem():
    images, labels = synthetic_em(n_slices=3, shape=(160, 160), seed=0)
    membrane, cell = labels == 1, labels == 2
    assert 40 <= np.median(images[membrane]) <= 90
    assert 150 <= np.median(images[cell]) <= 200
    # Dark organelle-like spots inside cells: some cell pixels are as dark as membrane.
    assert np.percentile(images[cell], 0.5) < np.median(images[cell]) - 50
    assert 0.05 < membrane.mean() < 0.2


def test_synthetic_em_slices_change_smoothly():
    _, labels = synthetic_em(n_slices=5, shape=(128, 128), seed=1)
    neighbour = iou(labels[0], labels[1], 1)
    far = iou(labels[0], labels[4], 1)
    assert 0.15 < neighbour < 1.0
    assert far < neighbour


def test_synthetic_em_membrane_width_and_single_slice():
    _, thin = synthetic_em(n_slices=1, shape=(128, 128), membrane_width=1.5)
    _, thick = synthetic_em(n_slices=1, shape=(128, 128), membrane_width=5.0)
    assert thin.shape == (1, 128, 128)
    ratio = (thick == 1).mean() / (thin == 1).mean()
    assert 2.5 < ratio < 4.0  # membrane area grows about in proportion to its width
    with pytest.raises(UserInputError):
        synthetic_em(n_slices=0)


def test_synthetic_sample_layers():
    (images, image_meta, image_kind), (labels, label_meta, label_kind) = synthetic_sample()
    assert images.shape == labels.shape == (5, 512, 512)
    assert (image_kind, label_kind) == ("image", "labels")
    assert image_meta["name"] == "Synthetic EM"
    assert label_meta["name"] == "Synthetic ground truth"
    assert set(np.unique(labels).tolist()) == {1, 2}
