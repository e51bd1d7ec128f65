"""Fine-tuning to what the user paints: new classes, time limits, validation, previews, recipes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet import UNet, UserInputError, load_model, predict, save_model
from napari_unet.network.model import with_classes
from napari_unet.storage.data import synthetic_em
from napari_unet.training.recipes import DEFAULT_RECIPE, RECIPE_CHOICES, RECIPES, recipe_config
from napari_unet.training.train import TrainConfig, Trainer, _hold_out_blocks


def blob_task(seed: int = 0, n: int = 2, size: int = 96):
    """EM-like slices with dark round 'organelles' (class 2) on textured background (class 1)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    yy, xx = np.mgrid[:size, :size]
    for _ in range(n):
        img = rng.normal(0.6, 0.08, (size, size))
        lab = np.ones((size, size), np.uint8)
        for _ in range(5):
            cy, cx, r = rng.integers(12, size - 12), rng.integers(12, size - 12), rng.integers(6, 10)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            img[disc] = rng.normal(0.25, 0.05, int(disc.sum()))
            lab[disc] = 2
        images.append(img.astype(np.float32))
        labels.append(lab)
    return images, labels


def organelle_iou(model, images, labels) -> float:
    inter = union = 0
    for img, lab in zip(images, labels, strict=True):
        p = predict(model, img, precision="fp32")
        pred, true = p[1] > 0.5, lab == 2
        inter += int(np.count_nonzero(pred & true))
        union += int(np.count_nonzero(pred | true))
    return inter / max(union, 1)


def shipped_like(seed: int = 0) -> UNet:
    """A small 'pretrained' model with the shipped model's classes."""
    torch.manual_seed(seed)
    m = UNet(base_channels=8, depth=2, dropout=0.0)
    m.metadata["classes"] = ["membrane", "cell"]
    return m


def test_a_few_steps_learn_a_new_class():
    """A new class painted on two slices is learned: its IoU on other slices rises well above chance."""
    train_img, train_lab = blob_task(seed=0)
    test_img, test_lab = blob_task(seed=1)
    model = with_classes(shipped_like(), ["background", "organelle"])
    before = organelle_iou(model, test_img, test_lab)
    cfg = recipe_config(
        "fast", steps=80, tile_size=124, precision="fp32", validation="none", seed=0, learning_rate=5e-3
    )
    trainer = Trainer(model, train_img, train_lab, cfg)
    assert [e.kind for e in trainer.run()].count("step") == 80
    after = organelle_iou(model, test_img, test_lab)
    assert after > 0.55 and after > before + 0.4, (before, after)
    assert model.metadata["classes"] == ["background", "organelle"]


def test_auto_sampling_draws_by_class_for_dense_labels_and_by_paint_for_scribbles():
    """Dense labels: tiles class by class; scribbles (a few % painted): tiles from any painted pixel."""
    images, dense = blob_task(seed=3)
    cfg = recipe_config("fast", steps=1, tile_size=124, precision="fp32", validation="none")
    assert cfg.sampling == "auto"
    assert Trainer(with_classes(shipped_like(), ["bg", "o"]), images, dense, cfg).sampling == "classes"
    rng = np.random.default_rng(0)
    scribbles = [np.where(rng.random(lab.shape) < 0.03, lab, 0).astype(np.uint8) for lab in dense]
    trainer = Trainer(with_classes(shipped_like(), ["bg", "o"]), images, scribbles, cfg)
    assert trainer.sampling == "annotated"
    list(trainer.run())
    assert trainer.model.metadata["training"]["sampling"] == "annotated"
    # an explicit choice is kept whatever the density
    cfg.sampling = "classes"
    assert Trainer(with_classes(shipped_like(), ["bg", "o"]), images, scribbles, cfg).sampling == "classes"


def test_auto_sampling_favours_a_rare_class_of_dense_labels():
    """Dense labels with a class under 1 % of the paint: "rare" sampling, which centres tiles on
    that class more often than on the others (count^-0.25), yet not on it alone."""
    from napari_unet.training.train_sampling import TileSampler

    images, dense = blob_task(seed=3)
    rare = [lab.copy() for lab in dense]
    rare[0][10:14, 10:14] = 3  # 16 px: far under 1 %
    cfg = recipe_config("fast", steps=1, tile_size=124, precision="fp32", validation="none")
    trainer = Trainer(with_classes(shipped_like(), ["bg", "o", "rare"]), images, rare, cfg)
    assert trainer.sampling == "rare" and trainer.dice_weight == 1.0
    sampler = TileSampler([(im, lb) for im, lb in zip(images, rare, strict=True)], [], 3, "auto")
    counts = [sum(int(np.count_nonzero(lb == c)) for lb in rare) for c in (1, 2, 3)]
    expected = np.array(counts, dtype=float) ** -0.25
    assert np.allclose(sampler.class_p, expected / expected.sum())
    rng = np.random.default_rng(1)
    centres = [sampler._centre(rng) for _ in range(2000)]
    on_rare = np.mean([rare[i].flat[f] == 3 for i, f in centres])
    assert abs(on_rare - sampler.class_p[2]) < 0.04 and sampler.class_p[2] > 0.34
    # without the rare class: each class equally often, as before
    assert Trainer(with_classes(shipped_like(), ["bg", "o"]), images, dense, cfg).sampling == "classes"


def test_time_limit_alone_steps_alone_and_both():
    images, labels = synthetic_em(n_slices=1, shape=(96, 96), seed=2)
    base = dict(tile_size=124, precision="fp32", validation="none")
    by_time = Trainer(shipped_like(), images, labels, TrainConfig(steps=None, max_minutes=0.03, **base))
    events = list(by_time.run())
    assert by_time.step >= 2 and 1.5 <= events[-1].elapsed < 6
    assert events[-1].progress == pytest.approx(1.0)
    assert all(e.remaining is not None for e in events if e.kind == "step")
    by_steps = Trainer(shipped_like(), images, labels, TrainConfig(steps=3, max_minutes=None, **base))
    list(by_steps.run())
    assert by_steps.step == 3
    both = Trainer(shipped_like(), images, labels, TrainConfig(steps=2, max_minutes=10.0, **base))
    list(both.run())
    assert both.step == 2  # the steps came first
    with pytest.raises(UserInputError, match="steps, a time limit"):
        Trainer(shipped_like(), images, labels, TrainConfig(steps=None, max_minutes=None))


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(learning_rate=float("nan")), "learning rate"),
        (dict(learning_rate=-1.0), "learning rate"),
        (dict(momentum=float("nan")), "momentum"),
        (dict(momentum=-1.0), "momentum"),
        (dict(max_minutes=-1.0), "time limit"),
        (dict(max_minutes=float("nan")), "time limit"),
        (dict(val_fraction=2.0), "validation fraction"),
        (dict(batch_size=1000), "batch size"),
        (dict(seed=-1), "seed"),
        (dict(sampling="random"), "sampling"),
    ],
)
def test_bad_settings_are_refused_before_training(settings, message):
    images, labels = synthetic_em(n_slices=1, shape=(96, 96), seed=2)
    with pytest.raises(UserInputError, match=message):
        Trainer(shipped_like(), images, labels, TrainConfig(**settings))


def test_blocks_held_out_keep_every_class_mostly_for_training():
    _, labels = blob_task(seed=3, n=2, size=256)
    train, blocks = _hold_out_blocks(labels, 0.1, np.random.default_rng(0))
    held = sum(
        int(np.count_nonzero(a)) - int(np.count_nonzero(b)) for a, b in zip(labels, train, strict=True)
    )
    total = sum(int(np.count_nonzero(a)) for a in labels)
    assert blocks and 0.08 <= held / total <= 0.2
    for c in (1, 2):
        kept = sum(int(np.count_nonzero(t == c)) for t in train)
        assert kept >= 0.5 * sum(int(np.count_nonzero(a == c)) for a in labels)
    for j, y, x, b in blocks:
        assert not train[j][y : y + b, x : x + b].any()


def test_validation_from_step_zero_and_flag_when_worse():
    images, labels = blob_task(seed=4, n=2, size=128)
    model = with_classes(shipped_like(), ["background", "organelle"])
    cfg = recipe_config("fast", steps=30, tile_size=124, precision="fp32", validation="auto", val_every=10)
    trainer = Trainer(model, images, labels, cfg)
    assert trainer.val_blocks and not trainer.val_slices
    vals = [e for e in trainer.run() if e.kind == "validation"]
    assert [e.step for e in vals] == [0, 10, 20, 30]
    assert set(vals[0].metrics) >= {"val_loss", "val_pixel_error", "val_iou_organelle"}
    assert vals[-1].metrics["val_loss"] < vals[0].metrics["val_loss"]
    assert trainer.worse_than_start is False
    history = model.metadata["training"]["history"][-1]
    assert history["validation_start"]["val_loss"] == pytest.approx(vals[0].metrics["val_loss"])
    # a run whose last validation loss is above the start model's is flagged
    trainer.last_metrics = {**vals[-1].metrics, "val_loss": vals[0].metrics["val_loss"] * 1.01}
    assert trainer.worse_than_start is True


def test_snapshots_are_independent_copies():
    images, labels = synthetic_em(n_slices=1, shape=(96, 96), seed=2)
    model = shipped_like()
    cfg = TrainConfig(steps=4, tile_size=124, precision="fp32", snapshot_every_s=1e-9, validation="none")
    trainer = Trainer(model, images, labels, cfg)
    snaps = [
        (e.step, e.model, {k: v.clone() for k, v in model.state_dict().items()})
        for e in trainer.run()
        if e.kind == "snapshot"
    ]
    assert [s for s, _, _ in snaps] == [1, 2, 3, 4]
    step, copy_, state = snaps[0]
    assert not copy_.training and copy_.metadata["classes"] == ["membrane", "cell"]
    for k, v in copy_.state_dict().items():
        assert torch.equal(v, state[k].to(v.device))  # the weights of that step ...
    later = model.head.weight.detach().to(copy_.head.weight.device)
    assert not torch.equal(copy_.head.weight, later)  # ... not changed by later steps


def test_a_diverged_model_never_replaces_a_good_file(tmp_path):
    images, labels = synthetic_em(n_slices=1, shape=(96, 96), seed=2)
    good = save_model(shipped_like(), tmp_path / "m.safetensors")
    before = good.read_bytes()
    trainer = Trainer(shipped_like(), images, labels, TrainConfig(steps=1, tile_size=124, validation="none"))
    with torch.no_grad():
        trainer.model.head.weight[0, 0] = float("nan")
    with pytest.raises(UserInputError, match="diverged"):
        trainer.save_checkpoint(good)
    assert good.read_bytes() == before


def test_resume_with_augmentation_is_exact(tmp_path):
    """The augmentation random state is in the checkpoint: an augmented resume equals a straight run."""
    images, labels = synthetic_em(n_slices=2, shape=(96, 96), seed=4)
    base = dict(tile_size=124, precision="fp32", seed=5, learning_rate=0.01, validation="none")
    straight = shipped_like()
    list(Trainer(straight, images, labels, TrainConfig(steps=4, **base)).run())
    ckpt = tmp_path / "half.safetensors"
    first = shipped_like()
    list(Trainer(first, images, labels, TrainConfig(steps=2, checkpoint_path=str(ckpt), **base)).run())
    resumed = load_model(ckpt)
    list(Trainer(resumed, images, labels, TrainConfig(steps=4, **base), resume_from=ckpt).run())
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_recipes_are_complete_and_the_paper_recipe_is_the_papers():
    paper = recipe_config("paper")
    assert (paper.optimizer, paper.momentum, paper.batch_size, paper.tile_size) == ("sgd", 0.99, 1, 572)
    assert paper.augment is not None and paper.augment.grid == 3 and paper.augment.sigma == 10.0
    assert paper.w0 == 10.0 and paper.sigma == 5.0
    for name in RECIPES:
        recipe_config(name).check()
    assert recipe_config("fast", learning_rate=None).learning_rate == RECIPES["fast"]["learning_rate"]
    with pytest.raises(UserInputError, match="unknown recipe"):
        recipe_config("magic")


def test_auto_recipe_is_fast_for_a_new_class_and_the_papers_for_corrections():
    assert RECIPE_CHOICES[0] == DEFAULT_RECIPE == "auto"
    new = recipe_config("auto", new_classes=True, steps=7)
    same = recipe_config("auto", new_classes=False, steps=7)
    assert (new.optimizer, new.freeze_encoder, new.steps) == ("adam", 0.3, 7)
    # the Dice term only where a rare class is weighted (docs/training.md, scenario (f))
    assert (new.dice_weight, new.dice_when, new.balance_classes) == (1.0, "rare", "rare")
    assert (same.optimizer, same.momentum, same.tile_size, same.steps) == ("sgd", 0.99, 572, 7)
    assert recipe_config("fast", new_classes=False).optimizer == "adam"  # a named recipe stays itself
    assert recipe_config("auto", new_classes=False, learning_rate=0.01).learning_rate == 0.01
    # from scratch there is no pretrained contracting path to protect
    assert recipe_config("auto", new_classes=True, pretrained=False).freeze_encoder == 0.0
    assert recipe_config("fast", pretrained=False, freeze_encoder=0.2).freeze_encoder == 0.2


def test_the_first_snapshot_comes_with_the_first_step():
    """The live preview need not wait a whole interval: the first step brings a snapshot, the
    next one only after ``snapshot_every_s``."""
    images, labels = synthetic_em(n_slices=1, shape=(96, 96), seed=2)
    cfg = TrainConfig(steps=3, tile_size=124, precision="fp32", snapshot_every_s=3600, validation="none")
    kinds = [(e.kind, e.step) for e in Trainer(shipped_like(), images, labels, cfg).run()]
    assert [step for kind, step in kinds if kind == "snapshot"] == [1]


def test_train_events_trains_a_copy_and_leaves_the_start_model_as_it_was():
    """The dock hands its start model over as is; the copy is made in the worker, not at the click."""
    from napari_unet.training.finetuning import train_events

    images, labels = synthetic_em(n_slices=2, shape=(96, 96), seed=2)
    start = shipped_like()
    before = {k: v.clone() for k, v in start.state_dict().items()}
    config = TrainConfig(steps=2, tile_size=124, precision="fp32", validation="none")
    control: dict = {}
    events = list(train_events(start, np.stack(images), np.stack(labels), config, control))
    trained = control["trainer"].model
    assert [e.step for e in events if e.kind == "step"] == [1, 2]
    assert trained is not start
    assert all(torch.equal(before[k], v) for k, v in start.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items())
