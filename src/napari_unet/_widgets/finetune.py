"""The "Fine-tune" dock: train a model on the user's sparse annotations, with a live loss curve.

Annotations are a Labels layer over the image: 0 = not annotated, 1..K = the model's classes.
Clicking **Train** runs :class:`napari_unet.training.train.Trainer` in a worker thread (only the annotated
slices of a stack are handed over) and plots each step's loss in the dock. **Stop** ends the run
after the current step; the trainer then writes its checkpoint. The fine-tuned model joins this
viewer's session, so the Segment dock can choose it, and it can be saved to a file. Every run
trains into the model library (:mod:`napari_unet.models.library`), so the model is offered in later
sessions too; a run cut short by a closed window or a crash stays there as "unfinished" and
choosing it as the start model resumes it.

This module is the dock: its inputs, Train and Stop, the run's events, saving. Beside it are the
training settings (:mod:`._finetune_settings`), what a run is and the texts it shows
(:mod:`._finetune_run`), the augmentation preview (:mod:`._augmentation_preview`), the live preview
(:mod:`._live_preview`), the loss curve (:mod:`._loss_curve`) and the library row (:mod:`._library`).
"""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
)

from napari_unet._widgets import Dock, LayerComboBox, grey_image, is_alive, layer_data, unwrap
from napari_unet._widgets._augmentation_preview import show_augmentation, slice_on_screen
from napari_unet._widgets._finetune_run import (
    AugmentationRun,
    TrainingRun,
    finished_text,
    validation_text,
    verdict_text,
)
from napari_unet._widgets._finetune_settings import TrainingSettings
from napari_unet._widgets._library import LibraryModelChooser, LibraryPanel
from napari_unet._widgets._live_preview import LivePreview
from napari_unet._widgets._loss_curve import LossCurve
from napari_unet._widgets._notify import notify_info, notify_warning, user_errors
from napari_unet._widgets._session import SessionModel, session_for
from napari_unet._widgets._worker import DONE, TaskPanel, lower_thread_priority
from napari_unet.annotations import layers as roles
from napari_unet.errors import UserInputError
from napari_unet.models.library import UNFINISHED, Library, readable_name, train_into_library
from napari_unet.network.device import select_device
from napari_unet.training.finetuning import annotated_slices, augmentation_preview
from napari_unet.training.recipes import resolve_recipe

__all__ = ["FineTuneWidget", "LossCurve", "annotated_slices", "augmentation_preview"]

#: seconds between two live previews while training (at least; see PREVIEW_SHARE)
PREVIEW_EVERY_S = 5.0
#: modules the first training run imports (the optimiser's first use imports torch's compiler
#: front end, about 2 s of Python), imported in the background once the dock has been open for
#: WARM_DELAY_MS, while the user paints, so that Train starts its first step sooner
WARM_IMPORTS: tuple[str, ...] = ("torch._dynamo",)
WARM_DELAY_MS = 3000


def warm_imports(names: tuple[str, ...]) -> threading.Thread | None:
    """Import ``names`` in a background thread at normal priority (a thread that holds the GIL
    at low priority would hold up the event loop on a busy machine); None when all are loaded."""
    missing = [n for n in names if n not in sys.modules]
    if not missing:
        return None

    def load() -> None:
        for name in missing:
            with contextlib.suppress(Exception):  # a failed warm-up costs only the time it saves
                importlib.import_module(name)

    # a plain thread: it touches no widget or viewer, so it cannot outlive one it uses
    thread = threading.Thread(target=load, name="napari-unet-warm-imports", daemon=True)
    thread.start()
    return thread


def class_names_of(model: Any) -> list[str]:
    """The model's class names, or "class 1".."class K" when it has none."""
    return roles.class_names_of(model)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "model"


class FineTuneWidget(Dock):
    """Fine-tune a U-Net on annotations painted in the viewer; the result joins the session."""

    def __init__(self, napari_viewer: Any) -> None:
        from napari_unet._widgets.annotate import looks_like_prediction

        super().__init__()
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.session = session_for(napari_viewer)
        me = weakref.ref(self)
        self.image_combo = LayerComboBox(napari_viewer, Image)
        self.labels_combo = LayerComboBox(
            napari_viewer,
            Labels,
            accept=lambda ly: not looks_like_prediction(ly),
            none_text="none yet: add one (or use Annotate)",
            preferred=lambda: me() and me()._preferred_annotations(),
        )
        self.add_layer_button = QPushButton("Add annotation layer")
        self.add_layer_button.setToolTip(
            "An annotation layer for the image (the same as Annotate's): its classes, colours and autosave"
        )
        self.add_layer_button.clicked.connect(self.add_annotation_layer)
        self.model_chooser = LibraryModelChooser(napari_viewer)
        self.library_panel = LibraryPanel(self.model_chooser)
        self.classes_label = QLabel("")
        self.classes_label.setWordWrap(True)
        #: the training settings (length, recipe, rate, augmentation, device, live preview)
        self.settings = TrainingSettings(PREVIEW_EVERY_S)
        # the settings' fields by their names on the dock, as before the settings had a panel
        self.limit_combo, self.steps_spin = self.settings.limit_combo, self.settings.steps_spin
        self.minutes_spin, self.recipe_combo = self.settings.minutes_spin, self.settings.recipe_combo
        self.lr_spin, self.augment_check = self.settings.lr_spin, self.settings.augment_check
        self.context_spin = self.settings.context_spin
        self.device_combo, self.live_check = self.settings.device_combo, self.settings.live_check
        self.preview_button = QPushButton("Preview augmentation")
        self.preview_button.clicked.connect(self.preview_augmentation)
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.train)
        self.verdict_label = QLabel("")
        self.verdict_label.setWordWrap(True)
        self.task = TaskPanel("Stop")
        self.task.finished.connect(self._on_finished)
        self.loss_curve = LossCurve()
        self.save_button = QPushButton("Save model…")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(self._save_dialog)

        self._lay_out()
        self._connect()
        self._run: TrainingRun | AugmentationRun | None = None
        #: the model made by the last run, as kept in the session, and what validation said of it
        self.result: SessionModel | None = None
        self.verdict: Any = None
        QTimer.singleShot(WARM_DELAY_MS, lambda: warm_imports(WARM_IMPORTS))

    def _lay_out(self) -> None:
        """The form, the loss curve and the verdict; Train and its progress pinned below."""
        annot = QHBoxLayout()
        annot.setContentsMargins(0, 0, 0, 0)
        annot.addWidget(self.labels_combo, 1)
        annot.addWidget(self.add_layer_button)
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Annotations", annot)
        form.addRow("Start from", self.model_chooser)
        form.addRow("Library", self.library_panel)
        form.addRow("", self.classes_label)
        self.settings.add_rows(form, self.preview_button)
        layout = QVBoxLayout(self.body)
        layout.addLayout(form)
        layout.addWidget(self.loss_curve)
        layout.addWidget(self.verdict_label)
        layout.addWidget(self.save_button)
        self.pin(self.train_button, self.task)
        layout.addStretch(1)

    def _connect(self) -> None:
        """Follow the viewer, the session and the choosers; first state of the small views."""
        napari_viewer = self.viewer
        self.model_chooser.changed.connect(self._show_classes)
        self.model_chooser.changed.connect(self._show_resume)
        self.labels_combo.currentIndexChanged.connect(self._show_classes)
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.image_combo.activated.connect(self._on_image_chosen)
        self.session.image_chosen.connect(self._follow_image)
        self.session.classes_changed.connect(self._on_classes_changed)
        napari_viewer.events.theme.connect(self._apply_theme)
        self._apply_theme()
        self.settings.show_limit()
        self._show_classes()
        self._show_resume()

    # ------------------------------------------------------------------ small views
    def _apply_theme(self, *_: Any) -> None:
        from napari.utils.theme import get_theme

        if not is_alive(self):
            return
        try:
            theme = get_theme(self.viewer.theme)
        except (KeyError, ValueError):
            return
        self.loss_curve.apply_theme(theme.foreground.as_hex(), theme.text.as_hex(), theme.current.as_hex())

    def _preferred_annotations(self) -> Any | None:
        from napari_unet._widgets.annotate import find_annotations

        image = self.image_combo.layer()
        return find_annotations(self.viewer, image) if image is not None else None

    def _on_image_changed(self, *_: Any) -> None:
        if is_alive(self):
            self.labels_combo.follow()

    def _on_image_chosen(self, _index: int) -> None:
        self.session.image_chosen.emit(self.image_combo.layer())

    def _follow_image(self, layer: Any) -> None:
        if is_alive(self) and not self.closed and layer in self.image_combo.layers():
            if layer is not self.image_combo.layer():
                self.image_combo.set_layer(layer, by_hand=False)

    def _on_classes_changed(self, _names: Any = None) -> None:
        if is_alive(self) and not self.closed:
            self._show_classes()

    def target_classes(self) -> list[str] | None:
        """The classes to train: the annotation layer's palette (Annotate), else the model's."""
        from napari_unet.annotations.annotation import class_names_from_features

        layer = self.labels_combo.layer()
        names = class_names_from_features(getattr(layer, "features", None)) if layer else None
        if names:
            return names
        try:
            return class_names_of(self.model_chooser.load()[0])
        except UserInputError:
            return None

    def _show_classes(self, *_: Any) -> None:
        if not is_alive(self):
            return
        names = self.target_classes()
        if names is None:
            self.classes_label.setText("Choose a model to see the classes to paint.")
            return
        listed = ", ".join(f"{i} = {n}" for i, n in enumerate(names, start=1))
        text = f"Paint {listed}; 0 = not annotated."
        try:
            known = class_names_of(self.model_chooser.load()[0])
        except UserInputError:
            known = names
        added = [n for n in names if n not in known]
        dropped = [n for n in known if n not in names]
        if added:
            text += f" New output channel for {', '.join(added)}."
        if dropped:
            text += f" Not trained (removed in Annotate): {', '.join(dropped)}."
        self.classes_label.setText(text)

    # ------------------------------------------------------------------ inputs
    def _image(self) -> tuple[Any, Any]:
        return grey_image(
            self.image_combo.layer(), "trains on", "no image layer; open the image to annotate first"
        )

    def _annotations(self, image_layer: Any, data: Any) -> Any:
        layer = self.labels_combo.layer()
        if layer is None:
            raise UserInputError("no annotation layer; click 'Add annotation layer' and paint some labels")
        labels = layer_data(layer)
        if tuple(labels.shape) != tuple(data.shape):
            raise UserInputError(
                f"annotation layer '{layer.name}' has shape {tuple(labels.shape)} but image "
                f"'{image_layer.name}' has shape {tuple(data.shape)}; annotate on a layer of the "
                "image's shape ('Add annotation layer' makes one)"
            )
        return layer

    def _config(self, new_classes: bool = True) -> Any:
        """The training settings of the dock; ``new_classes``: the palette has a class the start
        model lacks (it picks the recipe that "auto" stands for)."""
        return self.settings.config(new_classes, PREVIEW_EVERY_S)

    # ------------------------------------------------------------------ buttons
    def add_annotation_layer(self) -> Labels | None:
        """Add the image's annotation layer (as Annotate makes it) and select it for painting."""
        from napari_unet._widgets.annotate import add_annotation_layer, default_classes

        with user_errors():
            image_layer, _data = self._image()
            try:
                names = class_names_of(self.model_chooser.load()[0])
            except UserInputError:
                names = default_classes()
            layer = add_annotation_layer(self.viewer, image_layer, names)
            self.labels_combo.set_layer(layer)
            return layer
        return None

    @property
    def running(self) -> bool:
        """True while training or an augmentation preview runs."""
        return self.task.running

    def train(self) -> None:
        """Check the inputs and start training; bad input only shows a notification."""
        if self.task.running:
            return
        with user_errors():
            self._start()

    def _start(self) -> None:
        """Check the image, the annotations and the model, open the run in the model library
        (or resume an unfinished one) and start training in the worker."""
        image_layer, data = self._image()
        labels_layer = self._annotations(image_layer, data)
        labels = np.array(layer_data(labels_layer))  # a snapshot: painting goes on meanwhile
        if not labels.any():
            raise UserInputError(
                f"annotation layer '{labels_layer.name}' has no labelled pixel; paint some "
                "labels first (0 = not annotated)"
            )
        start_model, start_name = self.model_chooser.load()
        resume = self._unfinished()
        start_model, new_classes = self._training_model(start_model, labels_layer, labels, resume)
        config = self._config(new_classes)
        device = str(select_device(config.device))
        model = start_model  # train_into_library trains a copy, made in the worker
        library = Library()
        if resume is not None:
            entry = library.resume(resume)
            name = self.session.unique_name(entry.name)
        else:
            name = self.session.unique_name(f"{start_name} tuned on {image_layer.name}")
            entry = library.create(
                readable_name(start_name, image_layer.name),
                source="viewer",
                start_model=start_name,
                image=image_layer.name,
                classes=class_names_of(model),
                recipe=resolve_recipe(self.recipe_combo.currentText(), new_classes),
                planned={"steps": config.steps, "minutes": config.max_minutes},
                learning_rate=config.learning_rate,
                context=max(config.context, int(getattr(model, "context", 0))),
            )
        config.checkpoint_path = str(entry.path)
        control: dict[str, Any] = {}
        self._run = TrainingRun(
            control=control,
            name=name,
            start=start_name,
            image=image_layer.name,
            image_layer=weakref.ref(image_layer),
            classes=class_names_of(model),
            minutes=config.max_minutes,
            checkpoint=config.checkpoint_path,
            device=device,
            library_name=entry.name,
            preview=LivePreview(self.viewer, image_layer, class_names_of(model), device),
        )
        self.loss_curve.clear()
        self.verdict_label.setText("")
        self.train_button.setEnabled(False)
        self.preview_button.setEnabled(False)
        self.task.start(
            train_into_library,
            library,
            entry,
            model,
            data,
            labels,
            config,
            control,
            resume=resume is not None,
            on_yield=self._on_event,
            on_done=self._on_done,
            progress=self._progress,
            cancel=lambda: self._stop(control),
            message=f"preparing {start_name} for training on '{image_layer.name}'…",
            lower_priority=False,  # the setup holds the GIL; training lowers it (see start_worker)
            before_training=lower_thread_priority,
        )

    def _training_model(
        self, model: Any, labels_layer: Any, labels: np.ndarray, resume: Any
    ) -> tuple[Any, bool]:
        """The start model with the annotations' classes, and whether it gained a class; refused
        when a label has no class, or when a resumed run's classes would change."""
        from napari_unet.network.model import kept_classes

        k_high = int(labels.max())
        matched = self._match_classes(model, labels_layer)
        if resume is not None and matched is not model:
            raise UserInputError(
                f"'{resume.name}' trains the classes {', '.join(class_names_of(model))}; resume it "
                f"with annotations of those classes, or start a new run from another model"
            )
        new_classes = bool(kept_classes(model, class_names_of(matched))[1])
        if labels.min() < 0 or k_high > matched.n_classes:
            raise UserInputError(
                f"annotation layer '{labels_layer.name}' uses label {k_high}, but the model has "
                f"classes 1..{matched.n_classes}; repaint with those (0 = not annotated)"
            )
        return matched, new_classes

    def _match_classes(self, model: Any, labels_layer: Any) -> Any:
        """The model with the annotation layer's classes: a class added in Annotate gets a new
        output channel, a class removed there is dropped; classes are matched by name."""
        from napari_unet.annotations.annotation import class_names_from_features
        from napari_unet.network.model import with_classes

        names = class_names_from_features(getattr(labels_layer, "features", None))
        if not names or names == class_names_of(model):
            return model
        try:
            return with_classes(model, list(names))
        except ValueError as exc:
            raise UserInputError(
                f"cannot train the classes of '{labels_layer.name}' ({', '.join(names)}) from "
                f"this model: {exc}"
            ) from None

    def _unfinished(self) -> Any:
        """The unfinished library run chosen as the start model (Train resumes it), or None."""
        entry = self.model_chooser.library_entry()
        return entry if entry is not None and entry.status == UNFINISHED else None

    def _show_resume(self, *_: Any) -> None:
        """An unfinished run chosen: Train resumes it with its recipe and its planned length."""
        if not is_alive(self):
            return
        entry = self._unfinished()
        self.train_button.setText("Resume" if entry is not None else "Train")
        if entry is None:
            return
        self.settings.take_record(entry.record, entry.steps)
        self.task.status.setText(
            f"'{entry.name}' stopped at step {entry.steps}; Resume goes on from there on the same "
            "image and annotations"
        )

    @staticmethod
    def _stop(control: dict[str, Any]) -> None:
        control["stop"] = True
        trainer = control.get("trainer")
        if trainer is not None:
            trainer.stop()

    def stop(self) -> None:
        """Stop training after the current step; the trainer still writes its checkpoint."""
        self.task.cancel()

    def _progress(self, event: Any) -> tuple[int, int, str]:
        minutes = self._run.minutes if isinstance(self._run, TrainingRun) else None
        loss = "" if event.loss is None else f" · loss {event.loss:.4f}"
        if minutes:
            total = int(minutes * 60)
            return min(int(event.elapsed), total), total, f"step {event.step}{loss}"
        return event.step, event.total_steps, f"step {event.step} of {event.total_steps}{loss}"

    def _on_event(self, event: Any) -> None:
        run = self._run if isinstance(self._run, TrainingRun) else None
        if run is not None:
            run.last = event
        if event.kind == "step" and event.loss is not None:
            self.loss_curve.add(event.step, event.loss)
        elif event.kind in ("validation", "done") and event.metrics:
            if "val_loss" in event.metrics:
                self.loss_curve.add_validation(event.step, event.metrics["val_loss"])
            start = run.start_metrics if run is not None else None
            self.verdict_label.setText(validation_text(event.step, event.metrics, start))
            if event.step == 0 and run is not None:
                run.start_metrics = dict(event.metrics)
        elif event.kind == "snapshot" and event.model is not None:
            self._preview(event.model)

    # ------------------------------------------------------------------ live preview
    def _preview(self, model: Any) -> None:
        """Segment the slice on screen with a snapshot (see :class:`LivePreview`)."""
        run = self._run
        if isinstance(run, TrainingRun) and run.preview and self.live_check.isChecked() and not self.closed:
            run.preview.offer(model, self)

    def dock_closed(self) -> None:
        """Stop training (after its step, keeping the checkpoint in the library as "unfinished")
        and the live preview (after its tile): no work outlives the dock."""
        run = self._run
        if isinstance(run, TrainingRun):
            run.control["closed"] = True  # the library keeps the run as unfinished, to resume
        super().dock_closed()
        if isinstance(run, TrainingRun) and run.preview:
            run.preview.quit()

    def _on_done(self, trainer: Any) -> None:
        run = self._run
        if not isinstance(run, TrainingRun):
            return
        self.loss_curve.redraw()
        if trainer.step == 0:
            notify_warning("training stopped before its first step; no model was made")
            return
        checkpoint = Path(run.checkpoint) if Path(run.checkpoint).is_file() else None
        verdict = trainer.verdict() if getattr(trainer, "start_units", None) else None
        self.result = self.session.add_model(
            run.name,
            trainer.model,
            f"fine-tuned from {run.start} on '{run.image}' ({trainer.step} steps)",
            checkpoint,
        )
        run.steps = trainer.step
        run.worse = verdict is not None and verdict.kind == "worse"
        self.verdict = verdict
        self.save_button.setEnabled(True)
        text = verdict_text(self.result.name, run.start, verdict, trainer)
        self.verdict_label.setText(text)
        if verdict is not None and verdict.kind == "better":
            self.session.model_offered.emit(self.result.name)
        elif verdict is not None and verdict.kind == "worse":
            notify_warning(text)

    def _on_finished(self, outcome: str) -> None:
        run, self._run = self._run, None
        self.train_button.setEnabled(True)
        self.preview_button.setEnabled(True)
        if not isinstance(run, TrainingRun):
            return
        self.task.status.setText(finished_text(run, outcome, self.result))
        if outcome == DONE and self.result is not None and run.steps is not None:
            notify_info(f"fine-tuned model '{self.result.name}' is ready")

    # ------------------------------------------------------------------ saving
    def save_model_to(self, path: str | Path) -> Path | None:
        """Save the last fine-tuned model to ``path`` (.safetensors, written atomically)."""
        from napari_unet.modelfiles.checkpoint import save_model

        if self.result is None:
            notify_warning("train a model first")
            return None
        target = Path(path)
        if target.suffix.lower() != ".safetensors":
            target = target.with_name(target.name + ".safetensors")
        with user_errors():
            written = save_model(self.result.model, target)
            self.result.saved_to = written
            notify_info(f"saved '{self.result.name}' to {written}")
            return written
        return None

    def _save_dialog(self) -> None:
        if self.result is None:
            return
        start = str(Path.home() / f"{_safe(self.result.name)}.safetensors")
        path, _ = QFileDialog.getSaveFileName(
            self, "Save fine-tuned model", start, "napari-unet models (*.safetensors)"
        )
        if path:
            self.save_model_to(path)

    # ------------------------------------------------------------------ augmentation preview
    def preview_augmentation(self) -> None:
        """Add layers showing a few augmented copies of the slice on screen and its annotations."""
        if self.task.running:
            return
        with user_errors():
            image_layer, data = self._image()
            plane, labels = slice_on_screen(self.viewer, image_layer, data, self.labels_combo.layer())
            self._run = AugmentationRun(image=image_layer.name)
            self.train_button.setEnabled(False)
            self.preview_button.setEnabled(False)
            self.task.start(
                augmentation_preview,
                plane,
                labels,
                on_done=self._show_preview,
                cancellable=False,
                message="augmenting…",
            )

    def _show_preview(self, result: tuple[np.ndarray, np.ndarray]) -> None:
        self.task.status.setText(show_augmentation(self.viewer, result))
