"""Training with neighbouring sections (2.5-D): a widened start model predicts what it did, the
sampler reads each window with its neighbours, augmentation moves every channel alike, and
validation, distillation and resume keep working."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet import UNet, UserInputError, load_model
from napari_unet.arrays.augment import AugmentConfig, augment
from napari_unet.arrays.normalize import Normalizer
from napari_unet.network.model import with_classes, with_context
from napari_unet.storage.data import synthetic_em
from napari_unet.training.train import TrainConfig, Trainer
from napari_unet.training.train_data import context_slices, slice_probabilities

torch.set_num_threads(1)
CPU = torch.device("cpu")


def tiny(seed: int = 0, context: int = 0) -> UNet:
    torch.manual_seed(seed)
    m = UNet(base_channels=4, depth=2, dropout=0.0, context=context)
    m.metadata["classes"] = ["membrane", "cell"]
    return m


@pytest.mark.parametrize(("start", "k"), [(0, 1), (0, 2), (1, 3)])
def test_widened_model_predicts_bit_for_bit_what_the_start_model_did(start, k):
    model = tiny(context=start).eval()
    wide = with_context(model, k).eval()
    assert wide.context == k and wide.input_channels == 2 * k + 1
    assert wide.config["context"] == k
    x = torch.randn(2, 2 * k + 1, 60, 60, generator=torch.Generator().manual_seed(1))
    centre = x[:, k - start : k + start + 1]  # the sections the start model saw
    with torch.no_grad():
        assert torch.equal(model(centre), wide(x))
    # the start model is untouched, and a second widening is refused the other way
    assert model.context == start
    with pytest.raises(ValueError, match="cannot be narrowed"):
        with_context(wide, k - 1)


def test_widened_model_survives_a_checkpoint(tmp_path):
    wide = with_context(tiny(), 2)
    path = tmp_path / "wide.safetensors"
    from napari_unet.modelfiles.checkpoint import save_model

    save_model(wide, path)
    back = load_model(path)
    assert back.context == 2
    for key, value in wide.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)


def test_augmentation_moves_every_channel_with_one_field():
    g = torch.Generator().manual_seed(0)
    one = torch.rand((3, 1, 40, 40), generator=g)
    image = one.repeat(1, 5, 1, 1)  # five identical sections
    labels = torch.randint(0, 3, (3, 40, 40), generator=g)
    cfg = AugmentConfig(elastic=True, rotate90=True, flip=True, shift=4, brightness=0.1, contrast=0.1)
    out, _, _ = augment(image, labels, None, cfg, generator=torch.Generator().manual_seed(3))
    assert out.shape == image.shape
    assert not torch.equal(out[:, 0], image[:, 0])  # it did move
    for c in range(1, 5):
        assert torch.equal(out[:, c], out[:, 0])
    # the same draw on the section alone gives the same centre channel
    alone, _, _ = augment(one, labels, None, cfg, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(alone[:, 0], out[:, 2], atol=1e-6)


def stack_with_section_values(n: int = 6, size: int = 64) -> np.ndarray:
    """Section z holds the value 10 * z everywhere, so a window tells which section it came from."""
    return np.stack([np.full((size, size), 10.0 * z, np.float32) for z in range(n)])


def test_context_slices_read_neighbours_mirrored_at_the_stack_ends():
    stack = list(stack_with_section_values())
    out = context_slices(stack, [0, 3, 5], 2, stack=True)
    assert [float(s[0, 0]) for s in out[0]] == [20, 10, 0, 10, 20]
    assert [float(s[0, 0]) for s in out[3]] == [10, 20, 30, 40, 50]
    assert [float(s[0, 0]) for s in out[5]] == [30, 40, 50, 40, 30]
    assert out[1].ndim == 2  # not annotated: not read with neighbours
    alone = context_slices(stack, [3], 1, stack=False)  # unrelated slices stand in for themselves
    assert [float(s[0, 0]) for s in alone[3]] == [30, 30, 30]


def test_trainer_samples_each_window_with_its_neighbours():
    stack = stack_with_section_values()
    labels = np.zeros(stack.shape, np.uint8)
    labels[2, 10:50, 10:50] = 1
    labels[2, 20:30, 20:30] = 2
    cfg = TrainConfig(steps=1, tile_size=60, context=1, validation="none", augment=None, seed=0)
    tr = Trainer(tiny(), stack, labels, cfg)
    assert tr.model.context == 1 and tr.model.input_channels == 3
    x, y, _, _ = tr._sample()
    assert x.shape == (1, 3, 60, 60)
    values = [float(x[0, c].mean()) for c in range(3)]
    norm = tr.train_slices[0][0]
    assert values == pytest.approx([float(norm[c].mean()) for c in range(3)])
    assert values[0] < values[1] < values[2]  # sections 1, 2, 3 in order
    assert [e.kind for e in tr.run()][-1] == "done"


def test_a_2d_image_stands_in_for_its_own_neighbours():
    images, labels = synthetic_em(n_slices=1, shape=(96, 96), seed=2)
    cfg = TrainConfig(steps=2, tile_size=60, context=2, validation="none", seed=0)
    tr = Trainer(tiny(), images[0], labels[0], cfg)
    img = tr.train_slices[0][0]
    assert img.shape == (5, 96, 96)
    assert all(np.array_equal(img[c], img[2]) for c in range(5))
    list(tr.run())


def test_context_is_checked_and_narrowing_refused():
    images, labels = synthetic_em(n_slices=2, shape=(64, 64), seed=2)
    for bad in (-1, 9, True, 1.5):
        with pytest.raises(UserInputError, match="context"):
            TrainConfig(context=bad).check()
    with pytest.raises(UserInputError, match="cannot be narrowed"):
        Trainer(tiny(context=2), images, labels, TrainConfig(steps=1, context=1))
    # context 0 trains a context model with its own context
    tr = Trainer(tiny(context=1), images, labels, TrainConfig(steps=1, tile_size=60, validation="none"))
    assert tr.model.context == 1


def test_distillation_and_start_validation_ask_the_start_model_with_its_centre():
    """The widened start model's neighbours weigh nothing: its targets and its validation are the
    start model's own answers on the centre section."""
    images, labels = synthetic_em(n_slices=3, shape=(96, 96), seed=3)
    sparse = np.where(np.random.default_rng(0).random(labels.shape) < 0.2, labels, 0).astype(np.uint8)
    start = with_classes(tiny(), ["membrane", "cell", "mitochondrion"])
    cfg = TrainConfig(steps=2, tile_size=60, context=1, distill=1.0, val_every=1, precision="fp32", seed=0)
    tr = Trainer(start, images, sparse, cfg)
    assert tr.targets is not None
    identity = Normalizer(0.0, 1.0)
    for (img, _), target in zip(tr.train_slices, tr.targets, strict=True):
        alone = slice_probabilities(start.eval(), img[1], CPU, torch.float32, identity)[:2]
        alone /= alone.sum(axis=0, keepdims=True)
        held = target.astype(np.float32) > 0  # the blocks validation looks at are blank
        assert np.allclose(target.astype(np.float32)[held], alone[held], atol=2e-3)
    events = list(tr.run())
    assert tr.start_metrics and "val_loss" in tr.start_metrics
    assert events[-1].kind == "done" and tr.model.metadata["training"]["context"] == 1


def test_a_context_run_resumes_from_its_checkpoint(tmp_path):
    images, labels = synthetic_em(n_slices=3, shape=(96, 96), seed=4)
    base = dict(tile_size=60, precision="fp32", seed=5, optimizer="sgd", context=1, validation="none")
    ckpt = tmp_path / "half.safetensors"
    list(Trainer(tiny(), images, labels, TrainConfig(steps=2, checkpoint_path=str(ckpt), **base)).run())
    resumed = load_model(ckpt)
    assert resumed.context == 1
    tr = Trainer(resumed, images, labels, TrainConfig(steps=4, **base), resume_from=ckpt)
    assert tr.step == 2
    assert [e.step for e in tr.run() if e.kind == "step"] == [3, 4]


def test_fine_tuning_reads_annotated_sections_with_their_neighbours():
    """What the Fine-tune dock hands the trainer: the annotated sections and their neighbours, so
    that each annotated section's neighbours are those of the whole stack (mirrored at its ends)."""
    from napari_unet.training.finetuning import annotated_slices, run_context

    stack = stack_with_section_values(n=10)
    labels = np.zeros(stack.shape, np.uint8)
    labels[0, 5, 5] = labels[6, 5, 5] = 1
    images, labs, zs = annotated_slices(stack, labels, context=1)
    assert zs == [0, 1, 5, 6, 7]
    assert [float(im[0, 0]) for im in images] == [0, 10, 50, 60, 70]
    assert [bool(lb.any()) for lb in labs] == [True, False, False, True, False]
    out = context_slices(list(images), [0, 3], 1, stack=True)
    assert [float(s[0, 0]) for s in out[0]] == [10, 0, 10]
    assert [float(s[0, 0]) for s in out[3]] == [50, 60, 70]
    assert annotated_slices(stack, labels)[2] == [0, 6]
    assert run_context(tiny(context=2), TrainConfig()) == 2
    assert run_context(tiny(), TrainConfig(context=1)) == 1
