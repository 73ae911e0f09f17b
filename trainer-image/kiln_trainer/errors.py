"""The trainer's failure kinds; each maps to a summary `reason` and an exit code.

BadInput and DataUnavailable are the user's to fix (exit 2: retrying the pod will not
help); anything else is an Error (exit 1).
"""

from __future__ import annotations


class TrainerError(Exception):
    reason = "Error"
    exit_code = 1


class BadInput(TrainerError):
    """The spec (or the data it points at) cannot be trained on; `field` names the culprit."""

    reason = "BadInput"
    exit_code = 2

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class DataUnavailable(TrainerError):
    """The dataset could not be read: missing object, unreachable host, refused access."""

    reason = "DataUnavailable"
    exit_code = 2
