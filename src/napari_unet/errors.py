"""One exception type for problems a person can fix (bad input, missing file, corrupt model)."""

from __future__ import annotations


class UserInputError(ValueError):
    """A problem with the input that the user can fix; its message is one line, shown as-is.

    The CLI turns it into a message on stderr and exit code 2; the napari widgets turn it into a
    notification. Anything else that escapes is a bug.
    """
