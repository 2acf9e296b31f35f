"""Small helpers for errors that reach a person."""

from __future__ import annotations


def first_error(exc: BaseException) -> BaseException:
    """The first leaf of a (nested) exception group: what a TaskGroup's failure was really about."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
