"""Problems a person can fix become napari notifications, never tracebacks or lost layers.

The docks call :func:`notify_error` for a :class:`~napari_unet.errors.UserInputError` (its one-line
message is shown as it is) and wrap button handlers in :func:`user_errors`, so a bad input
shows a notification and the handler ends there, before it touched any layer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from napari.utils.notifications import notification_manager, show_error, show_info, show_warning

from napari_unet.errors import UserInputError

__all__ = ["notify_error", "notify_info", "notify_warning", "user_errors"]

log = logging.getLogger(__name__)


def notify_error(exc: BaseException | str) -> None:
    """Show an error notification: a UserInputError's (or a string's) message as it is.

    Any other exception is a bug: napari's own handler shows it with its traceback.
    """
    if isinstance(exc, str):
        show_error(exc)
    elif isinstance(exc, UserInputError):
        show_error(str(exc))
    else:
        log.error("napari-unet: unexpected error", exc_info=exc)
        notification_manager.receive_error(type(exc), exc, exc.__traceback__)


def notify_info(message: str) -> None:
    """Show an information notification (work finished, file saved)."""
    show_info(message)


def notify_warning(message: str) -> None:
    """Show a warning notification (work cancelled, a fallback taken)."""
    show_warning(message)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a UserInputError raised inside the block into an error notification.

    Use around a button handler's checks: the block stops at the first bad input and nothing after
    it runs, so no layer is created or changed.
    """
    try:
        yield
    except UserInputError as exc:
        notify_error(exc)
