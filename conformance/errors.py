"""What can go wrong while a clause is checked, and the status each outcome gives a cell (SPEC.md
IMP-3): the one place where a test's exception and its clause's level become a status.

    Nonconformance        the clause is not met: FAIL (MUST), unmet (SHOULD, MAY)
    ImplementationDied    the implementation's process crashed or hung: CRASH, TIMEOUT
    anything else         a defect of the suite or of an adapter's plumbing: ERROR

``SuiteError`` names the last kind where the suite detects it itself (an exception of its own
making while calling an adapter or relaying its result; ``AdapterError``: a declared capability
that the adapter does not implement), so that it is never mistaken for the implementation's
answer. Exceptions the implementation raised itself in its supervised process come back marked
``Relayed``.
"""

from __future__ import annotations

STATUSES = ("CRASH", "TIMEOUT", "ERROR", "FAIL", "unmet", "pass", "skip")


class Nonconformance(AssertionError):
    """A clause is not met. ``summary`` is one line; the message holds everything needed to
    reproduce it."""

    def __init__(self, message: str, summary: str):
        super().__init__(message)
        self.summary = summary


class SuiteError(Exception):
    """A defect of the suite, or of an adapter's plumbing, found while checking a clause: always
    an ERROR of the run, never a verdict on the implementation."""


class AdapterError(SuiteError):
    """The adapter declares a capability it does not implement (NotImplementedError)."""


class ImplementationDied(BaseException):
    """The implementation's process crashed or hung. A BaseException: Hypothesis neither shrinks
    nor retries it (which would re-run the crash or the hang)."""

    kind = "died"

    def __init__(self, message: str, summary: str | None = None):
        super().__init__(message)
        self.summary = summary or message.splitlines()[0]


class ImplementationCrashed(ImplementationDied):
    kind = "crashed"


class ImplementationTimedOut(ImplementationDied):
    kind = "timed out"


class BadResult(Exception):
    """The adapter returned something that is not plain data (IMP-5): a clause failure."""


class LoadError(Exception):
    """The entry point could not be loaded (IMP-1): the message says why, in one line."""


class Relayed(Exception):
    """Mixed into an exception the implementation raised in its own process and that the
    supervisor rebuilt here (``supervisor._rebuild_exception``): ``ValueError`` from the
    implementation comes back as a class deriving from ``ValueError`` and ``Relayed``."""


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)`` (Python 3.11+), or the same ``__notes__`` list on 3.10 (shown by
    the ``exceptiongroup`` backport's traceback formatting)."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]


def find(exc: BaseException, types) -> BaseException | None:
    """``exc`` itself, or the first exception of ``types`` inside an exception group."""
    if isinstance(exc, types):
        return exc
    for sub in getattr(exc, "exceptions", ()):
        found = find(sub, types)
        if found is not None:
            return found
    return None


def verdict(exc: BaseException | None, level: str, strict: bool = False) -> tuple[str, str]:
    """(status, one-line reason) for a clause of ``level`` whose check raised ``exc`` (None:
    it passed). ``strict``: --rmsnorm-strict-should, unmet SHOULD/MAY clauses fail."""
    if exc is None:
        return "pass", ""
    found = find(exc, (SuiteError, Nonconformance, ImplementationDied))
    if isinstance(found, ImplementationDied):
        return ("CRASH" if found.kind == "crashed" else "TIMEOUT"), found.summary
    if isinstance(found, Nonconformance):
        flaky = "" if found is exc else " (not reproduced on replay: nondeterministic?)"
        return ("FAIL" if level == "MUST" or strict else "unmet"), found.summary + flaky
    found = found or exc
    first = (str(found).strip().splitlines() or [""])[0]
    return "ERROR", (f"{type(found).__name__}: {first} (a defect of the suite or of the "
                     f"adapter's plumbing, not a verdict on the implementation)")
