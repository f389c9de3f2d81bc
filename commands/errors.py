"""Named domain errors a decider raises; the shell records each as a `CommandRejected` event."""

from __future__ import annotations


class Rejected(Exception):
    """A command broke a business rule: `code` is stable and machine-readable."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
