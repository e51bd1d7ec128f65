"""A library model and its record: the names, statuses and files one model of the library has.

Each model is ``NAME.safetensors`` with ``NAME.json`` beside it (:data:`RECORD_SUFFIX`), the training
record; :class:`LibraryModel` reads what a chooser, a tooltip or ``models list`` shows from it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

#: environment variable that moves the library (a folder path)
LIBRARY_ENV = "NAPARI_UNET_MODELS"
#: what a record's status says: trained to the end (or stopped by hand), cut short, still training,
#: or brought in from a file
FINISHED, UNFINISHED, RUNNING, IMPORTED = "finished", "unfinished", "running", "imported"
#: the model file and its record beside it
MODEL_SUFFIX, RECORD_SUFFIX = ".safetensors", ".json"


def library_dir() -> Path:
    """The library folder: ``$NAPARI_UNET_MODELS``, else ``<user data folder>/napari-unet/models``."""
    env = os.environ.get(LIBRARY_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-unet", appauthor=False)) / "models"


def readable_name(start: str, image: str, when: datetime | None = None) -> str:
    """ "<start model> tuned on <image> <date time>": what a library model is called by default."""
    when = when or datetime.now()
    return f"{start} tuned on {image} {when:%Y-%m-%d %H:%M}"


@dataclass
class LibraryModel:
    """One model in the library: its name, file, record and status ("finished", "unfinished", ...)."""

    name: str
    path: Path
    record: dict[str, Any]
    status: str

    @property
    def record_path(self) -> Path:
        """The JSON record beside the model file."""
        return self.path.with_suffix(RECORD_SUFFIX)

    @property
    def created(self) -> datetime:
        """When the run started (or the file was imported), in local time."""
        try:
            return datetime.fromisoformat(self.record["created"]).astimezone()
        except (KeyError, TypeError, ValueError):
            with contextlib.suppress(OSError):
                return datetime.fromtimestamp(self.path.stat().st_mtime).astimezone()
            return datetime.fromtimestamp(0).astimezone()

    @property
    def verdict(self) -> str | None:
        """ "better", "unclear" or "worse" when the run was validated; None otherwise."""
        verdict = self.record.get("verdict")
        return verdict.get("kind") if isinstance(verdict, dict) else None

    @property
    def steps(self) -> int:
        """Training steps behind the model (0 when unknown)."""
        steps = self.record.get("steps")
        return steps if isinstance(steps, int) else 0

    @property
    def loadable(self) -> bool:
        """Whether there is a model file to load (a run that crashed before its first checkpoint has none)."""
        return self.path.is_file()

    @property
    def size(self) -> int:
        """Bytes on disk of the model file and its record."""
        total = 0
        for p in (self.path, self.record_path):
            with contextlib.suppress(OSError):
                total += p.stat().st_size
        return total

    def label(self) -> str:
        """One line for a model chooser: the name and the verdict (or that the run is unfinished)."""
        if self.status == UNFINISHED:
            return f"{self.name} (unfinished at step {self.steps}: resume in Fine-tune)"
        if self.status == RUNNING:
            return f"{self.name} (training, step {self.steps})"
        if self.verdict is not None:
            return f"{self.name} ({self.verdict})"
        return self.name

    def describe(self) -> str:
        """A few lines for a tooltip or ``models list``: where from, classes, steps, time, verdict."""
        r = self.record
        lines = [f"{self.name} — {self.status}, {self.created:%Y-%m-%d %H:%M}"]
        if r.get("start_model") or r.get("image"):
            lines.append(f"from {r.get('start_model', '?')} on '{r.get('image', '?')}'")
        if r.get("source_file"):
            lines.append(f"imported from {r['source_file']}")
        if r.get("classes"):
            lines.append("classes: " + ", ".join(map(str, r["classes"])))
        if isinstance(r.get("context"), int) and r["context"] > 0:
            k = r["context"]
            lines.append(f"sees {k} neighbouring section{'' if k == 1 else 's'} on each side (2.5-D)")
        if self.steps:
            seconds = r.get("seconds")
            took = f" in {seconds:.0f} s" if isinstance(seconds, int | float) else ""
            recipe = f" ({r['recipe']} recipe)" if r.get("recipe") else ""
            lines.append(f"{self.steps} steps{took}{recipe}")
        verdict = r.get("verdict")
        if isinstance(verdict, dict) and verdict.get("text"):
            lines.append(f"verdict: {verdict['text']}")
        return "\n".join(lines)
