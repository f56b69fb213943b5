"""The errors ctrlgan raises on purpose: a short hierarchy, one module.

Every error a user can cause names what was wrong (a request field, a file, a data set
entry) so that the CLI can print it as one line and exit 2, and Python callers can catch
it by type. Anything else that escapes is a bug.
"""

from __future__ import annotations


class CtrlganError(Exception):
    """Base class of every error ctrlgan raises on purpose."""


class InvalidRequest(CtrlganError, ValueError):
    """A bad argument or request: the message starts with the offending field's name."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class DataError(InvalidRequest):
    """A data set that cannot be used: missing, empty, unreadable or inconsistent."""


class ArtifactError(CtrlganError):
    """A model artifact that is missing, broken, tampered with or of an unknown format."""

    def __init__(self, path: str, message: str):
        self.path = str(path)
        self.message = message
        super().__init__(f"{path}: {message}")


class Overloaded(CtrlganError):
    """The runtime's queue is full; retry later."""


class BackendUnavailable(CtrlganError):
    """The requested backend cannot run on this machine."""


def summary(error: BaseException) -> str:
    """One short line of a library's exception for a message of ours (onnxruntime's errors
    carry their point on the last line)."""
    text = str(error).strip()
    return text.splitlines()[-1][:200] if text else type(error).__name__
