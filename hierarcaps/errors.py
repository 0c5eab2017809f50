"""Errors that tell the user exactly where the problem is."""

from __future__ import annotations

from .textsafe import escape_controls


class HierarcapsError(Exception):
    """Base class: every error the CLI turns into a one-line message and a non-zero exit."""


class DataError(HierarcapsError):
    """Bad input data, located by file, row and field when those are known."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 field: str | None = None) -> None:
        self.file, self.row, self.field, self.reason = file, row, field, message
        where = ", ".join(part for part in (
            escape_controls(file) if file is not None else None,
            f"row {row}" if row is not None else None,
            f"field '{escape_controls(field)}'" if field is not None else None,
        ) if part)
        super().__init__(f"{where}: {message}" if where else message)


class ImagesUnavailableError(HierarcapsError):
    """Images needed for a job are neither local nor downloadable."""


class ModelSpecError(HierarcapsError):
    """A model spec string that does not resolve to a loadable model."""
