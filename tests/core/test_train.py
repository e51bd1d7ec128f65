"""The trainer: learns from sparse labels, stops, checkpoints atomically and resumes exactly."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from napari_unet import UNet, UserInputError, load_model, predict
from napari_unet.modelfiles.checkpoint import load_training_state
from napari_unet.storage.data import synthetic_em
from napari_unet.training.train import TrainConfig, Trainer


def small_model(seed=0):
    torch.manual_seed(seed)
    m = UNet(base_channels=8, depth=2, dropout=0.0)
    m.metadata["classes"] = ["membrane", "cell"]
    return m


def pixel_error(model, images, labels):
    p = predict(model, images, precision="fp32")
    return float(np.mean((np.argmax(p, 0) + 1) != labels))


def test_training_on_synthetic_em_lowers_loss_and_error():
    images, labels = synthetic_em(n_slices=3, shape=(128, 128), seed=1)
    model = small_model()
    before = pixel_error(model, images, labels)
    cfg = TrainConfig(steps=60, optimizer="adam", learning_rate=3e-3, tile_size=124, precision="fp32", seed=0)
    events = [e for e in Trainer(model, images, labels, cfg).run() if e.kind == "step"]
    losses = [e.loss for e in events]
    assert len(events) == 60
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    after = pixel_error(model, images, labels)
    assert after < before and after < 0.2


def test_sparse_labels_only_annotated_pixels_count():
    images, labels = synthetic_em(n_slices=1, shape=(96, 96), seed=2)
    sparse = np.zeros_like(labels)
    sparse[0, 40:50, :] = labels[0, 40:50, :]  # a stripe of annotation
    model = small_model()
    tr = Trainer(model, images, sparse, TrainConfig(steps=2, tile_size=124, precision="fp32", augment=None))
    assert all(np.all(w[lb == 0] == 0) for (_, lb), w in zip(tr.train_slices, tr.weights, strict=True))
    assert [e.kind for e in tr.run()][-1] == "done"


def test_no_annotation_is_a_clear_error_before_training():
    images = np.zeros((64, 64), dtype=np.uint8)
    with pytest.raises(UserInputError, match="no labelled pixel"):
        Trainer(small_model(), images, np.zeros((64, 64), dtype=np.uint8))


def test_shape_mismatch_and_bad_class_are_refused():
    with pytest.raises(UserInputError, match="differs"):
        Trainer(small_model(), np.zeros((64, 64)), np.ones((64, 65), dtype=np.uint8))
    with pytest.raises(UserInputError, match="classes 1..2"):
        Trainer(small_model(), np.zeros((64, 64)), np.full((64, 64), 3, dtype=np.uint8))


def test_stop_ends_after_current_step_and_checkpoints(tmp_path):
    images, labels = synthetic_em(n_slices=1, shape=(96, 96), seed=3)
    ckpt = tmp_path / "m.safetensors"
    cfg = TrainConfig(steps=100, tile_size=124, precision="fp32", checkpoint_path=str(ckpt))
    tr = Trainer(small_model(), images, labels, cfg)
    kinds = []
    for ev in tr.run():
        kinds.append(ev.kind)
        if ev.kind == "step" and ev.step == 3:
            tr.stop()
    assert tr.step == 3 and kinds[-1] == "done"
    assert load_training_state(ckpt)["step"] == 3
    assert load_model(ckpt).metadata["training"]["steps"] == 3


def test_resume_continues_step_count_and_optimizer_exactly(tmp_path):
    images, labels = synthetic_em(n_slices=2, shape=(96, 96), seed=4)
    base = dict(tile_size=124, precision="fp32", seed=5, optimizer="sgd", learning_rate=0.01)
    # straight run of 6 steps
    straight = small_model()
    list(Trainer(straight, images, labels, TrainConfig(steps=6, **base)).run())
    # 3 steps, checkpoint, then resume for 3 more from the file
    ckpt = tmp_path / "half.safetensors"
    first = small_model()
    list(Trainer(first, images, labels, TrainConfig(steps=3, checkpoint_path=str(ckpt), **base)).run())
    resumed = load_model(ckpt)
    tr = Trainer(resumed, images, labels, TrainConfig(steps=6, **base), resume_from=ckpt)
    assert tr.step == 3
    steps = [e.step for e in tr.run() if e.kind == "step"]
    assert steps == [4, 5, 6]
    assert load_training_state(ckpt)["buffers"]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resumed_optimizer_buffers_follow_the_weights_layout(tmp_path, optimizer):
    """bf16 trains channels_last; restored buffers load contiguous and must be re-laid like their
    weights, or the fused optimiser kernels refuse them on CUDA."""
    images, labels = synthetic_em(n_slices=2, shape=(96, 96), seed=4)
    base = dict(tile_size=124, precision="bf16", seed=5, optimizer=optimizer, validation="none")
    ckpt = tmp_path / "half.safetensors"
    first = TrainConfig(steps=2, checkpoint_path=str(ckpt), **base)
    list(Trainer(small_model(), images, labels, first).run())
    tr = Trainer(load_model(ckpt), images, labels, TrainConfig(steps=4, **base), resume_from=ckpt)
    run = tr.run()
    assert next(e for e in run if e.kind == "step").step == 3
    convs = [p for p in tr.model.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    for p in tr.model.parameters():
        for name, value in tr.optimizer.state[p].items():
            if torch.is_tensor(value) and value.shape == p.shape:
                assert value.stride() == p.stride(), name
    assert [e.step for e in run if e.kind == "step"] == [4]


@pytest.mark.cuda
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_resumes_on_a_gpu(tmp_path, optimizer):
    """On CUDA the weights train channels_last and the fused kernels check every buffer's layout:
    a resumed run must go on from its checkpoint (it stopped with a RuntimeError before)."""
    images, labels = synthetic_em(n_slices=2, shape=(96, 96), seed=4)
    base = dict(tile_size=124, seed=5, optimizer=optimizer, validation="none", device="cuda")
    ckpt = tmp_path / "half.safetensors"
    first = TrainConfig(steps=2, checkpoint_path=str(ckpt), **base)
    list(Trainer(small_model(), images, labels, first).run())
    tr = Trainer(load_model(ckpt), images, labels, TrainConfig(steps=4, **base), resume_from=ckpt)
    assert [e.step for e in tr.run() if e.kind == "step"] == [3, 4]
    assert all(torch.isfinite(p).all() and p.device.type == "cuda" for p in tr.model.parameters())


def test_training_history_has_one_entry_per_run(tmp_path):
    """Checkpoints within a run update that run's entry; a resume continues it; a new run adds one."""
    images, labels = synthetic_em(n_slices=2, shape=(96, 96), seed=4)
    base = dict(tile_size=124, precision="fp32", seed=5, checkpoint_every=1)
    ckpt = tmp_path / "run.safetensors"
    model = small_model()
    list(Trainer(model, images, labels, TrainConfig(steps=3, checkpoint_path=str(ckpt), **base)).run())
    history = load_model(ckpt).metadata["training"]["history"]
    assert [h["steps"] for h in history] == [3]
    resumed = load_model(ckpt)
    cfg = TrainConfig(steps=5, checkpoint_path=str(ckpt), **base)
    list(Trainer(resumed, images, labels, cfg, resume_from=ckpt).run())
    assert [h["steps"] for h in load_model(ckpt).metadata["training"]["history"]] == [5]
    again = load_model(ckpt)
    list(Trainer(again, images, labels, TrainConfig(steps=2, checkpoint_path=str(ckpt), **base)).run())
    assert [h["steps"] for h in load_model(ckpt).metadata["training"]["history"]] == [5, 2]


def test_resume_is_exact_without_augmentation(tmp_path):
    images, labels = synthetic_em(n_slices=2, shape=(96, 96), seed=4)
    base = dict(tile_size=124, precision="fp32", seed=5, augment=None, learning_rate=0.01)
    straight = small_model()
    list(Trainer(straight, images, labels, TrainConfig(steps=6, **base)).run())
    ckpt = tmp_path / "half.safetensors"
    first = small_model()
    list(Trainer(first, images, labels, TrainConfig(steps=3, checkpoint_path=str(ckpt), **base)).run())
    resumed = load_model(ckpt)
    list(Trainer(resumed, images, labels, TrainConfig(steps=6, **base), resume_from=ckpt).run())
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_seed_makes_runs_repeatable():
    images, labels = synthetic_em(n_slices=1, shape=(96, 96), seed=6)
    cfg = TrainConfig(steps=4, tile_size=124, precision="fp32", seed=11)
    a, b = small_model(), small_model()
    la = [e.loss for e in Trainer(a, images, labels, cfg).run() if e.kind == "step"]
    lb = [e.loss for e in Trainer(b, images, labels, cfg).run() if e.kind == "step"]
    assert la == lb


def test_validation_metrics_and_max_minutes():
    images, labels = synthetic_em(n_slices=4, shape=(96, 96), seed=7)
    cfg = TrainConfig(steps=4, tile_size=124, precision="fp32", val_fraction=0.25, val_every=2)
    tr = Trainer(small_model(), images, labels, cfg)
    assert len(tr.val_slices) == 1 and len(tr.train_slices) == 3
    events = [e for e in tr.run() if e.kind == "validation"]
    assert [e.step for e in events] == [0, 2, 4]  # the start model first, then every 2 steps
    vals = [e.metrics for e in events]
    assert tr.start_metrics == vals[0] and tr.last_metrics == vals[-1]
    assert tr.worse_than_start == (vals[-1]["val_loss"] > vals[0]["val_loss"])
    assert 0 <= vals[0]["val_pixel_error"] <= 1
    assert "val_rand_error" in vals[0] and "val_iou_cell" in vals[0]
    quick = Trainer(small_model(), images, labels, TrainConfig(steps=10_000, max_minutes=0.02, tile_size=124))
    n = sum(e.kind == "step" for e in quick.run())
    assert 1 <= n < 10_000


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves the previous checkpoint intact and no temporary file."""
    import napari_unet.modelfiles.checkpoint as ck

    images, labels = synthetic_em(n_slices=1, shape=(96, 96), seed=8)
    ckpt = tmp_path / "m.safetensors"
    cfg = TrainConfig(steps=2, tile_size=124, checkpoint_path=str(ckpt))
    tr = Trainer(small_model(), images, labels, cfg)
    list(tr.run())
    good = ckpt.read_bytes()

    def boom(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        tr.save_checkpoint(ckpt)
    assert ckpt.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_fused_optimiser_matches_the_plain_one(optimizer, monkeypatch):
    """The fused optimiser kernel (the default where torch has one) takes the same steps as the
    per-weight loop it replaces."""
    images, labels = synthetic_em(n_slices=1, shape=(96, 96), seed=6)
    cfg = TrainConfig(steps=5, optimizer=optimizer, tile_size=124, precision="fp32", seed=3, augment=None)
    fused_model = small_model()
    fused = Trainer(fused_model, images, labels, cfg)
    list(fused.run())
    kind = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    plain_init = kind.__init__

    def no_fused(self, params, *args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("no fused kernel")
        plain_init(self, params, *args, **kwargs)

    monkeypatch.setattr(kind, "__init__", no_fused)
    plain_model = small_model()
    plain = Trainer(plain_model, images, labels, cfg)
    list(plain.run())
    if torch.__version__ >= "2.4":
        assert fused.optimizer.defaults.get("fused")
    assert not plain.optimizer.defaults.get("fused")
    moved = 0.0
    triples = zip(fused_model.parameters(), plain_model.parameters(), small_model().parameters(), strict=True)
    for a, b, start in triples:
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
        moved = max(moved, float((a - start.to(a.device)).abs().max()))
    assert moved > 1e-4  # the steps did move the weights


def test_distillation_loss_is_zero_on_agreement_and_ignores_paint():
    from napari_unet.training.train import distillation_loss

    targets = torch.tensor([0.2, 0.8]).view(1, 2, 1, 1).expand(1, 2, 4, 4).clone()
    agree = torch.log(torch.tensor([0.2, 0.8, 1e-9])).view(1, 3, 1, 1).expand(1, 3, 4, 4).clone()
    unpainted = torch.zeros(1, 4, 4, dtype=torch.long)
    assert float(distillation_loss(agree, unpainted, targets, [0, 1])) == pytest.approx(0.0, abs=1e-6)
    grown = torch.log(torch.tensor([0.1, 0.4, 0.5])).view(1, 3, 1, 1).expand(1, 3, 4, 4).clone()
    kl = float(distillation_loss(grown, unpainted, targets, [0, 1]))
    assert kl == pytest.approx(np.log(2.0), rel=1e-4)  # the new class took half of the mass
    painted = torch.full((1, 4, 4), 3, dtype=torch.long)
    assert float(distillation_loss(grown, painted, targets, [0, 1])) == 0.0
    held_out = torch.zeros_like(targets)  # blanked targets (validation) are left out as well
    assert float(distillation_loss(grown, unpainted, held_out, [0, 1])) == 0.0


def _strokes_task():
    """Synthetic EM with a few painted strokes per class and a new class "spot" on a few dots."""
    from napari_unet.network.model import with_classes

    images, labels = synthetic_em(2, (160, 160), seed=3)
    sparse = np.zeros_like(labels)
    sparse[:, 40:50, 10:150] = labels[:, 40:50, 10:150]
    sparse[:, 100:140, 60:62] = labels[:, 100:140, 60:62]
    sparse[:, 80:84, 80:84] = 3
    start = small_model(seed=1)
    return images, sparse, start, with_classes(start, ["membrane", "cell", "spot"])


def test_distillation_targets_are_the_start_model_and_blank_where_validation_looks():
    images, sparse, start, model = _strokes_task()
    assert model.added_classes == ["spot"]
    cfg = TrainConfig(steps=1, distill=1.0, augment=None, val_every=0)
    tr = Trainer(model, images, sparse, cfg)
    assert tr.kept == [True, True, False] and tr.targets is not None and tr.probe_blocks
    p = predict(start, images, precision="fp32")[:, 0]  # one normalisation for the stack, as trained
    expect = p / p.sum(0, keepdims=True)
    got = tr.targets[0].astype(np.float32)
    blank = np.zeros(got.shape[1:], bool)
    for j, y, x, b in [*tr.val_blocks, *tr.probe_blocks]:
        if j == 0:
            blank[y : y + b, x : x + b] = True
    assert np.all(got[:, blank] == 0)
    np.testing.assert_allclose(got[:, ~blank], expect[:, ~blank], atol=4e-3)  # float16
    assert Trainer(model, images, sparse, TrainConfig(steps=1, distill=0.0)).targets is None


def test_distillation_keeps_the_start_model_where_nobody_painted():
    """With distillation the tuned model's probabilities of the kept classes stay far closer to the
    start model's on unpainted pixels than without, and the new class painted on a few dots does
    not spread over them, after the same steps on the same strokes."""
    images, sparse, start, model = _strokes_task()
    before = predict(start, images, precision="fp32")
    unpainted = sparse == 0
    drift = {}
    for distill in (0.0, 2.0):
        m = copy.deepcopy(model)
        tile = m.valid_input_size(96)
        cfg = TrainConfig(
            steps=30, distill=distill, optimizer="adam", learning_rate=3e-3, val_every=15, tile_size=tile
        )
        tr = Trainer(m, images, sparse, cfg)
        events = list(tr.run())
        assert events[-1].kind == "done" and tr.verdict().kind in ("better", "unclear", "worse")
        after = predict(m, images, precision="fp32")
        # mass the new class took from the kept ones counts as drift: that is what the strokes
        # did not ask for
        kl = np.sum(before * (np.log(before + 1e-7) - np.log(after[:2] + 1e-7)), axis=0)
        drift[distill] = (float(kl[unpainted].mean()), float(np.mean(after.argmax(0)[unpainted] == 2)))
    assert drift[2.0][0] < 0.5 * drift[0.0][0], drift
    assert drift[2.0][1] < 0.5 * drift[0.0][1], drift  # the new class does not spread


def test_a_resumed_run_distils_from_and_is_judged_against_the_weights_it_started_from(tmp_path):
    """An interrupted run's checkpoint keeps the start weights: resumed, the trainer's distillation
    targets and start validation are the start model's, not those of the interrupted model."""
    images, sparse, _start, model = _strokes_task()
    tile = model.valid_input_size(96)
    ckpt = tmp_path / "unfinished.safetensors"
    base = dict(distill=1.0, optimizer="adam", learning_rate=1e-2, tile_size=tile, seed=2, val_every=0)
    fresh = Trainer(copy.deepcopy(model), images, sparse, TrainConfig(steps=6, **base))
    first = Trainer(model, images, sparse, TrainConfig(steps=3, checkpoint_path=str(ckpt), **base))
    list(first.run())
    interrupted = load_model(ckpt)
    resumed = Trainer(interrupted, images, sparse, TrainConfig(steps=6, **base), resume_from=ckpt)
    for a, b in zip(fresh.targets, resumed.targets, strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed.start_metrics is None
    events = list(resumed.run())
    assert resumed.start_metrics == pytest.approx(first.start_metrics, rel=1e-6)
    assert first.start_metrics == pytest.approx(fresh.validate(), rel=1e-6)
    assert [e.step for e in events if e.kind == "step"] == [4, 5, 6]
    # the swap for the start's figures left the trained weights in place
    assert not torch.equal(interrupted.head.weight.cpu(), _start_weight(ckpt, "head.weight"))


def _start_weight(path, name):
    return load_training_state(path)["buffers"][f"start.{name}"]


def test_a_run_ends_with_its_best_validated_weights():
    """The trainer remembers the best validated weights; when the last validation scores clearly
    below them, the run ends with them and says from which step."""
    images, sparse, _start, model = _strokes_task()
    tile = model.valid_input_size(96)
    cfg = TrainConfig(steps=4, val_every=2, optimizer="adam", learning_rate=1e-2, tile_size=tile)
    tr = Trainer(model, images, sparse, cfg)
    events = list(tr.run())
    assert events[-1].kind == "done" and tr._best is not None
    score, step, weights, metrics, _units = tr._best
    assert step in (2, 4) and tr.kept_step in (2, 4)
    if tr.kept_step == step:  # whatever the run ended with is the remembered copy
        for key, value in tr.model.state_dict().items():
            assert torch.equal(value.cpu(), weights[key])
    # a later validation clearly below the best one: the best weights come back
    with torch.no_grad():
        for p in tr.model.parameters():
            p.add_(1.0)
    tr._best = (score, 2, weights, metrics, [])  # as if remembered at step 2 of 4
    tr.last_metrics = {key: 0.0 for key in metrics}
    tr._restore_best()
    assert tr.kept_step == 2 and tr.last_metrics == metrics
    for key, value in tr.model.state_dict().items():
        assert torch.equal(value.cpu(), weights[key])
    assert tr.metadata(0.0)["training"]["kept_step"] == 2


def test_rare_class_balancing_only_for_dense_labels_with_a_rare_class():
    """balance_classes="rare": class weights (half-way) for dense labels with a class under 1 % of
    the paint; none for dense labels without one, nor for strokes."""
    images, labels = synthetic_em(2, (128, 128), seed=5)
    rare = labels.copy()
    rare[:, 60:66, 60:66] = 3  # 72 of 32 768 px: about 0.2 %
    model = small_model()
    from napari_unet.network.model import with_classes

    three = with_classes(model, ["membrane", "cell", "synapse"])
    cfg = TrainConfig(steps=1, balance_classes="rare", balance_power=0.5, validation="none")
    tr = Trainer(three, images, rare, cfg)
    assert tr.balanced and tr._class_weights[3] > tr._class_weights[1] > tr._class_weights[2] > 0
    assert not Trainer(model, images, labels, cfg).balanced  # no class under 1 %
    strokes = np.zeros_like(rare)
    strokes[:, 40:44, :] = rare[:, 40:44, :]
    strokes[:, 60:62, 60:66] = 3
    assert not Trainer(three, images, strokes, cfg).balanced  # sparse paint: not dense
    with pytest.raises(UserInputError, match="balance_classes"):
        TrainConfig(balance_classes="sometimes").check()


def test_dice_term_only_where_a_rare_class_is_balanced():
    """dice_when="rare": the Dice term joins the loss for dense labels with a rare class (recorded
    in the header), and stays out for dense labels without one and for strokes."""
    images, labels = synthetic_em(2, (128, 128), seed=5)
    rare = labels.copy()
    rare[:, 60:66, 60:66] = 3
    strokes = np.zeros_like(rare)
    strokes[:, 40:44, :] = rare[:, 40:44, :]
    strokes[:, 60:62, 60:66] = 3
    from napari_unet.network.model import with_classes

    model = small_model()
    three = with_classes(model, ["membrane", "cell", "synapse"])
    cfg = TrainConfig(steps=1, balance_classes="rare", dice_weight=1.5, dice_when="rare", validation="none")
    tr = Trainer(three, images, rare, cfg)
    assert tr.dice_weight == 1.5 and tr.metadata(0.0)["training"]["dice_weight"] == 1.5
    assert Trainer(model, images, labels, cfg).dice_weight == 0.0  # no rare class
    assert Trainer(three, images, strokes, cfg).dice_weight == 0.0  # strokes
    always = TrainConfig(steps=1, balance_classes="rare", dice_weight=1.5, validation="none")
    assert Trainer(model, images, labels, always).dice_weight == 1.5
    with pytest.raises(UserInputError, match="dice_when"):
        TrainConfig(dice_when="often").check()


def test_soft_dice_loss_counts_annotated_pixels_and_present_classes_only():
    """1 - mean Dice over the classes present: 0 for a confident right answer, near 1 for a
    confident wrong one; unannotated pixels and absent classes change nothing."""
    from napari_unet.training.train_loss import soft_dice_loss

    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :4] = 1
    labels[0, 4:6] = 2  # rows 6-7 not annotated; class 3 absent
    right = torch.full((1, 3, 8, 8), -20.0)
    right[0, 0, :4] = 20.0
    right[0, 1, 4:] = 20.0  # rows 6-7 "class 2" too: not annotated, so not counted
    assert float(soft_dice_loss(right, labels)) == pytest.approx(0.0, abs=1e-3)
    wrong = torch.full((1, 3, 8, 8), -20.0)
    wrong[0, 2] = 20.0  # everything the absent class 3
    assert float(soft_dice_loss(wrong, labels)) > 0.95
    half = right.clone()
    half[0, :, 4:6] = 0.0  # class 2 pixels at 1/3 each: Dice of class 2 drops, class 1 barely
    value = float(soft_dice_loss(half, labels))
    assert 0.1 < value < 0.5
    assert float(soft_dice_loss(right, torch.zeros_like(labels))) == 0.0  # nothing annotated
