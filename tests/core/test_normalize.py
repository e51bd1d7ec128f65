"""The normaliser's percentiles: the histogram path for small integers equals numpy's."""

import numpy as np
import pytest

from napari_unet.arrays.normalize import compute_normalizer, percentiles


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int8, np.int16])
@pytest.mark.parametrize("n", [1, 2, 5, 4097, 200_003])
def test_integer_percentiles_equal_numpys(dtype, n):
    rng = np.random.default_rng(n)
    info = np.iinfo(dtype)
    values = rng.integers(info.min, info.max, n, endpoint=True).astype(dtype)
    for q in ([1.0, 99.8], [0.0, 100.0], [33.3, 50.0], [0.01, 99.99]):
        expected = np.percentile(values.astype(np.float64), q)
        np.testing.assert_array_equal(percentiles(values, q), expected)


def test_narrow_range_and_float_images_match_numpy():
    rng = np.random.default_rng(0)
    narrow = (100 + rng.integers(0, 5, 10_001)).astype(np.uint16)  # most counts are zero
    np.testing.assert_array_equal(percentiles(narrow, [1, 99.8]), np.percentile(narrow, [1, 99.8]))
    floats = rng.normal(size=5000).astype(np.float32)
    np.testing.assert_array_equal(
        percentiles(floats, [1, 99.8]), np.percentile(floats.astype(np.float64), [1, 99.8])
    )


def test_normaliser_of_an_8_bit_image_maps_its_percentiles_to_0_and_1():
    image = np.tile(np.arange(256, dtype=np.uint8), (64, 1))
    norm = compute_normalizer(image)
    lo, hi = np.percentile(image.astype(np.float64), [1.0, 99.8])
    assert (norm.low, norm.high) == (lo, hi)
    out = norm(np.array([[lo, hi]]))
    np.testing.assert_allclose(out, [[0.0, 1.0]], atol=1e-6)
