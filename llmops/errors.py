"""One error type for every failure a user can fix: it carries the cause and the fix, never a traceback."""

from __future__ import annotations


class LlmopsError(Exception):
    """A failure with a one-line cause and, where known, the fix. The CLI prints it and exits 2."""

    def __init__(self, cause: str, fix: str | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.cause} (fix: {self.fix})" if self.fix else self.cause


class DataError(LlmopsError):
    """Input data that cannot be read or does not meet its expectations."""


class RegistryError(LlmopsError):
    """A registry operation that cannot be carried out (unknown model, version or alias)."""


class ModelError(LlmopsError):
    """A model that cannot be provisioned or loaded."""


class NotFound(RegistryError):
    """A registered model, version or alias that does not exist: the only registry error that may mean
    "nothing there yet" (every other one - server down, bad URI, lost artifact - is a failure)."""
