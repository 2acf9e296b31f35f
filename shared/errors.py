"""Small helpers for errors that reach a person."""

from __future__ import annotations


def first_error(exc: BaseException) -> BaseException:
    """The first leaf of a (nested) exception group: what a TaskGroup's failure was really about."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def reason_of(exc: BaseException) -> str:
    """One line saying what went wrong, never empty: some exceptions (a timeout, a dropped connection) have
    no message, and then their class name is the best one there is."""
    text = str(exc).strip()
    return " ".join(text.splitlines()) if text else type(exc).__name__
