"""The model library: every model trained here, kept in the user's data folder with its record.

One folder (``$NAPARI_UNET_MODELS``, else the user data folder of platformdirs + ``models``) holds
``NAME.safetensors`` for each model and ``NAME.json`` beside it: the training record (start model,
image, classes, recipe, steps, seconds, the verdict and its figures, and whether the run finished).
A model file put there without a record is listed under its file name. The Fine-tune dock and the
``train`` command write here; the model choosers and ``--model NAME`` read here. A run killed
mid-way leaves its last checkpoint as "unfinished", which a later run can resume. Nothing here
imports Qt. This module keeps the folder (:class:`Library`); one model and its record are in
:mod:`.library_record`, training into the library in :mod:`.library_training`, and every name of
both is importable from here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from napari_unet.errors import UserInputError
from napari_unet.models.library_record import FINISHED as FINISHED
from napari_unet.models.library_record import IMPORTED as IMPORTED
from napari_unet.models.library_record import LIBRARY_ENV as LIBRARY_ENV
from napari_unet.models.library_record import MODEL_SUFFIX, RECORD_SUFFIX
from napari_unet.models.library_record import RUNNING as RUNNING
from napari_unet.models.library_record import UNFINISHED as UNFINISHED
from napari_unet.models.library_record import LibraryModel as LibraryModel
from napari_unet.models.library_record import library_dir as library_dir
from napari_unet.models.library_record import readable_name as readable_name
from napari_unet.models.library_training import CHECKPOINT_EVERY_S as CHECKPOINT_EVERY_S
from napari_unet.models.library_training import TrainingInputs as TrainingInputs
from napari_unet.models.library_training import keep_training as keep_training
from napari_unet.models.library_training import train_into_library as train_into_library
from napari_unet.models.library_training import train_run as train_run

__all__ = [
    "CHECKPOINT_EVERY_S",
    "CLEAN_AFTER_DAYS",
    "LIBRARY_ENV",
    "Library",
    "LibraryModel",
    "TrainingInputs",
    "keep_training",
    "library_dir",
    "readable_name",
    "train_into_library",
    "train_run",
]

#: version of the record written beside each model
RECORD_VERSION = 1
#: unfinished runs older than this are what "clean" removes
CLEAN_AFTER_DAYS = 7.0
_RECORD_KEY = "napari_unet"  # the key outputs.is_ours recognises in a JSON document
_MAX_FILE_STEM = 120


def _file_stem(name: str) -> str:
    """A file name for a library name: letters, digits, spaces and ``.,()-_`` kept, the rest '-'."""
    stem = re.sub(r"[^\w .,()+-]+", "-", name).strip(" .-") or "model"
    return stem[:_MAX_FILE_STEM].rstrip(" .")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _alive_here(record: dict[str, Any]) -> bool | None:
    """Whether the process named in a running record still runs; None when it ran on another host."""
    from napari_unet.storage.outputs import pid_alive

    if record.get("host") != socket.gethostname():
        return None
    pid = record.get("pid")
    return isinstance(pid, int) and pid_alive(pid)


class Library:
    """The models in one library folder (by default :func:`library_dir`), newest first."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else library_dir()

    # ------------------------------------------------------------------ reading
    def models(self) -> list[LibraryModel]:
        """Every model of the library, newest first; a record that cannot be read is skipped."""
        if not self.root.is_dir():
            return []
        found: dict[str, LibraryModel] = {}
        try:
            names = sorted(os.listdir(self.root))
        except OSError:
            return []
        for file in names:
            if file.startswith("."):
                continue  # temporary files of writes in progress, locks
            p = self.root / file
            if file.endswith(RECORD_SUFFIX):
                entry = self._from_record(p)
            elif file.endswith(MODEL_SUFFIX) and not p.with_suffix(RECORD_SUFFIX).exists():
                entry = LibraryModel(p.stem, p, {"source": "file"}, IMPORTED)
            else:
                continue
            if entry is not None and entry.name.lower() not in found:
                found[entry.name.lower()] = entry
        return sorted(found.values(), key=lambda e: e.created, reverse=True)

    def _from_record(self, p: Path) -> LibraryModel | None:
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
            record = doc[_RECORD_KEY]
            name = record["name"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(record, dict) or not isinstance(name, str) or not name.strip():
            return None
        status = record.get("status", FINISHED)
        if status == RUNNING and _alive_here(record) is False:
            status = UNFINISHED  # its process is gone: a crash or a killed window
        model = p.with_suffix(MODEL_SUFFIX)
        if not model.is_file() and status != RUNNING:
            status = UNFINISHED  # a run that ended before its first checkpoint
        return LibraryModel(name, model, record, status)

    def find(self, name: str) -> LibraryModel | None:
        """The model called ``name``: exact, else ignoring case, else the one whose name starts so.

        Several models starting with ``name`` raise UserInputError naming them; an empty name finds none.
        """
        if not name.strip():
            return None
        models = self.models()
        for match in (
            lambda e: e.name == name,
            lambda e: e.name.lower() == name.lower(),
            lambda e: e.path.stem.lower() == name.lower(),
        ):
            hits = [e for e in models if match(e)]
            if hits:
                return hits[0]
        hits = [e for e in models if e.name.lower().startswith(name.lower())]
        if len(hits) > 1:
            listed = "; ".join(e.name for e in hits[:5])
            raise UserInputError(
                f"{len(hits)} library models start with {name!r} ({listed}); give more of the name"
            )
        return hits[0] if hits else None

    def get(self, name: str) -> LibraryModel:
        """The model called ``name`` (see :meth:`find`), or UserInputError saying how to list them."""
        entry = self.find(name)
        if entry is None:
            raise UserInputError(
                f"no model called {name!r} in the model library ({self.root}); "
                "'napari-unet models' lists them"
            )
        return entry

    def disk_use(self) -> int:
        """Bytes the library's files take (models, records and any temporary files)."""
        total = 0
        with contextlib.suppress(OSError):
            for e in os.scandir(self.root):
                with contextlib.suppress(OSError):
                    if e.is_file(follow_symlinks=False):
                        total += e.stat(follow_symlinks=False).st_size
        return total

    def summary(self) -> str:
        """"3 models, 1 unfinished, 12.3 MiB in <folder>": one line for the dock and ``models``."""
        from napari_unet.storage.outputs import human_bytes

        models = self.models()
        unfinished = sum(e.status == UNFINISHED for e in models)
        text = f"{len(models)} model{'s' if len(models) != 1 else ''}"
        if unfinished:
            text += f", {unfinished} unfinished"
        return f"{text}, {human_bytes(self.disk_use())} in {self.root}"

    # ------------------------------------------------------------------ writing
    def _make_root(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise UserInputError(
                f"the model library {self.root} is a file, not a folder; set {LIBRARY_ENV} to a folder"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _write_error(exc, self.root, "the model library folder") from None

    def _taken(self, name: str, stem: str) -> bool:
        lowered = name.lower()
        if any(e.name.lower() == lowered for e in self.models()):
            return True
        return any((self.root / f"{stem}{s}").exists() for s in (MODEL_SUFFIX, RECORD_SUFFIX))

    def _claim(self, base: str) -> tuple[str, Path]:
        """A name not taken yet (``base``, ``base (2)``, ...) and its record file, created empty
        with O_EXCL so that two runs starting at once never share one."""
        base = " ".join(str(base).split()) or "model"
        self._make_root()
        n = 1
        while True:
            name = base if n == 1 else f"{base} ({n})"
            stem = _file_stem(name)
            record = self.root / f"{stem}{RECORD_SUFFIX}"
            if not self._taken(name, stem):
                try:
                    os.close(os.open(record, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                    return name, record
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise _write_error(exc, record, "the model record") from None
            n += 1

    def _write_record(self, path: Path, record: dict[str, Any]) -> None:
        from napari_unet.storage.atomic import atomic_write

        record = {**record, "version": RECORD_VERSION, "updated": _now()}
        try:
            with atomic_write(path) as tmp:
                tmp.write_text(json.dumps({_RECORD_KEY: record}, indent=1, default=str), encoding="utf-8")
        except OSError as exc:
            raise _write_error(exc, path, "the model record") from None

    def create(self, name: str, **record: Any) -> LibraryModel:
        """Start a new model called ``name`` (made unique): its record says "running" in this process.

        The model file does not exist yet; the trainer writes its checkpoints to ``.path``.
        """
        name, record_path = self._claim(name)
        full = {
            "name": name,
            "created": _now(),
            "status": RUNNING,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            **record,
        }
        self._write_record(record_path, full)
        return LibraryModel(name, record_path.with_suffix(MODEL_SUFFIX), full, RUNNING)

    def update(self, entry: LibraryModel, **changes: Any) -> LibraryModel:
        """Write ``changes`` into the record of ``entry``; returns the entry as it is now."""
        entry.record.update(changes)
        if "status" in changes:
            entry.status = changes["status"]
        self._write_record(entry.record_path, entry.record)
        return entry

    def finish(self, entry: LibraryModel, trainer: Any, status: str = UNFINISHED) -> None:
        """Write a run's last word (``status`` and the trainer's figures) into its record; a new
        run that made no step (or no trainer at all) leaves nothing behind."""
        made = trainer is not None and trainer.step > 0 and entry.path.is_file()
        if not made and not entry.record.get("resumed"):
            from napari_unet.storage.outputs import remove

            for p in (entry.path, entry.record_path):
                with contextlib.suppress(OSError):
                    remove(p)
            return
        if status == FINISHED and trainer is not None:
            from napari_unet.modelfiles.checkpoint import save_model

            # a finished model keeps its weights and record; the optimiser state (twice the weights
            # with Adam) only serves a resume, which an unfinished run alone needs
            with contextlib.suppress(UserInputError, OSError):
                save_model(trainer.model, entry.path)
        changes: dict[str, Any] = {"status": status}
        if trainer is not None:
            changes.update(_from_training(trainer.model.metadata.get("training")))
            changes["steps"] = trainer.step
            changes["classes"] = list(trainer.class_names)
        with contextlib.suppress(UserInputError):  # a full disk must not hide the run's own error
            self.update(entry, **changes)

    def resume(self, entry: LibraryModel) -> LibraryModel:
        """Mark an unfinished model as running again in this process (its record keeps the rest)."""
        if entry.status == RUNNING:
            raise UserInputError(f"'{entry.name}' is still training (process {entry.record.get('pid')})")
        if not entry.loadable:
            raise UserInputError(f"'{entry.name}' has no checkpoint to resume from")
        return self.update(entry, status=RUNNING, pid=os.getpid(), host=socket.gethostname(), resumed=True)

    def add_file(self, source: str | os.PathLike, name: str, /, **record: Any) -> LibraryModel:
        """Keep a copy of the model file ``source`` under ``name`` (a hard link where the file
        system allows: no second copy on disk, and later writes to ``source`` replace its file,
        not the library's)."""
        from napari_unet.modelfiles.checkpoint import read_header
        from napari_unet.storage.atomic import atomic_write

        source = Path(source)
        doc = read_header(source)  # a clear line for a file that is not a napari-unet model
        name, record_path = self._claim(name)
        target = record_path.with_suffix(MODEL_SUFFIX)
        try:
            with atomic_write(target) as tmp:
                try:
                    os.link(source, tmp)
                except OSError:
                    shutil.copyfile(source, tmp)
        except OSError as exc:
            with contextlib.suppress(OSError):
                record_path.unlink()
            raise _write_error(exc, target, "the library's copy of the model") from None
        meta = doc.get("metadata") or {}
        full = {
            "name": name,
            "created": _now(),
            "status": FINISHED,
            "classes": meta.get("classes"),
            **_from_training(meta.get("training")),
            **record,
        }
        self._write_record(record_path, full)
        return LibraryModel(name, target, full, full["status"])

    def import_model(self, source: str | os.PathLike, name: str | None = None) -> LibraryModel:
        """Bring a ``.safetensors`` model or a bioimage.io package (exported by napari-unet) in."""
        from napari_unet.modelfiles.bioimageio import is_package

        source = Path(source).expanduser()
        if not (source.exists() or source.is_symlink()):
            raise UserInputError(f"model file {source} does not exist")
        name = name or (source.parent.name if source.name in ("rdf.yaml", "bioimageio.yaml") else source.stem)
        record = {"status": IMPORTED, "source": "import", "source_file": str(source.resolve())}
        if not is_package(source):
            if source.suffix.lower() != MODEL_SUFFIX:
                raise UserInputError(
                    f"{source} is neither a .safetensors model nor a bioimage.io package "
                    "(.zip, folder, rdf.yaml)"
                )
            return self.add_file(source, name, **record)
        from napari_unet.modelfiles.checkpoint import load_model, save_model

        model = load_model(source)  # refuses a package from another tool with one line
        claimed, record_path = self._claim(name)
        target = record_path.with_suffix(MODEL_SUFFIX)
        try:
            save_model(model, target)
        except BaseException:
            with contextlib.suppress(OSError):
                record_path.unlink()
            raise
        meta = model.metadata
        full = {
            "name": claimed,
            "created": _now(),
            "classes": meta.get("classes"),
            **_from_training(meta.get("training")),
            **record,
        }
        self._write_record(record_path, full)
        return LibraryModel(claimed, target, full, IMPORTED)

    def rename(self, name: str, new_name: str) -> LibraryModel:
        """Give the model ``name`` the name ``new_name``; its files are renamed to match."""
        entry = self.exact(name)
        if entry.status == RUNNING:
            raise UserInputError(f"'{entry.name}' is still training; rename it when it has finished")
        new_name = " ".join(str(new_name).split())
        if not new_name:
            raise UserInputError("a model needs a name: type one")
        if new_name == entry.name:
            return entry
        other = self.find_exact(new_name)
        if other is not None and new_name.lower() != entry.name.lower():
            raise UserInputError(f"the library already has a model called '{other.name}'")
        stem = _file_stem(new_name)
        model = self.root / f"{stem}{MODEL_SUFFIX}"
        record_path = model.with_suffix(RECORD_SUFFIX)
        if stem != entry.path.stem and (model.exists() or record_path.exists()):
            raise UserInputError(f"the library already has a file {model.name}; choose another name")
        record = {**entry.record, "name": new_name}
        try:
            if entry.path.exists() and model != entry.path:
                os.replace(entry.path, model)
            self._write_record(record_path, record)
            if entry.record_path != record_path:
                with contextlib.suppress(FileNotFoundError):
                    entry.record_path.unlink()
        except OSError as exc:
            raise _write_error(exc, model, "the renamed model") from None
        return LibraryModel(new_name, model, record, entry.status)

    def find_exact(self, name: str) -> LibraryModel | None:
        """The model called ``name`` (ignoring case), or None: no prefixes."""
        return next((e for e in self.models() if e.name.lower() == name.lower()), None)

    def exact(self, name: str) -> LibraryModel:
        """The model called exactly ``name`` (ignoring case): what deleting and renaming act on, so
        that the start of a name never deletes a model; UserInputError names a near one."""
        entry = self.find_exact(name)
        if entry is not None:
            return entry
        try:
            near = self.find(name)
        except UserInputError:
            near = None
        hint = f"; did you mean '{near.name}'? Give the whole name" if near is not None else ""
        raise UserInputError(f"no model called {name!r} in the model library ({self.root}){hint}")

    def remove(self, name: str) -> LibraryModel:
        """Delete the model ``name`` and its record; a model still training is refused."""
        entry = self.exact(name)
        if entry.status == RUNNING:
            raise UserInputError(f"'{entry.name}' is still training; stop it first")
        from napari_unet.storage.outputs import clean_stale, remove

        for p in (entry.path, entry.record_path):
            try:
                remove(p)
            except OSError as exc:
                raise UserInputError(f"cannot delete {p} ({exc.strerror or exc})") from None
            clean_stale(p)
        return entry

    def cleanable(self, older_than_days: float = CLEAN_AFTER_DAYS) -> list[LibraryModel]:
        """The unfinished runs started more than ``older_than_days`` ago, and those of any age that
        ended before their first checkpoint (nothing to resume): what :meth:`clean` deletes."""
        if older_than_days < 0 or older_than_days != older_than_days:
            raise UserInputError(f"the age of runs to delete must be 0 days or more, not {older_than_days}")
        cutoff = time.time() - older_than_days * 86400
        return [
            e
            for e in self.models()
            if e.status == UNFINISHED and (e.created.timestamp() <= cutoff or not e.loadable)
        ]

    def clean(self, older_than_days: float = CLEAN_AFTER_DAYS) -> list[LibraryModel]:
        """Delete unfinished runs started more than ``older_than_days`` ago, and the temporary
        files of writes that died; returns the models deleted."""
        removed = [self.remove(entry.name) for entry in self.cleanable(older_than_days)]
        from napari_unet.storage.outputs import clean_stale

        with contextlib.suppress(OSError):
            for e in os.scandir(self.root):
                if not e.name.startswith("."):
                    clean_stale(Path(e.path))
        return removed


def _write_error(exc: OSError, target: Path, what: str) -> UserInputError:
    """One line for a failed write in the library (full disk, read-only, no permission)."""
    from napari_unet.storage.outputs import os_error_message

    return UserInputError(os_error_message(exc, target, what))


def _from_training(training: Any) -> dict[str, Any]:
    """The record's figures from a model's ``training`` metadata (the Trainer writes it)."""
    if not isinstance(training, dict):
        return {}
    out: dict[str, Any] = {
        "steps": training.get("steps"),
        "seconds": training.get("elapsed_seconds"),
        "verdict": training.get("verdict"),
        "figures": {
            k: training[k] for k in ("validation_start", "validation_end", "kept_step") if k in training
        },
        "training": {k: v for k, v in training.items() if k not in ("history", "verdict")},
    }
    return {k: v for k, v in out.items() if v not in (None, {})}
