"""What one test item measured, example by example: filled by ``conformance.assertions`` while a
property runs, read by the plugin for the report, the results file and coverage.

The plugin opens a ``Ledger`` around each test item (``active``) and wraps every property so that
each Hypothesis example begins and ends one (``begin_example`` / ``end_example``). Outside a
test item (``rmsnorm-conformance check``) there is no ledger and nothing is recorded.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import pathlib

import numpy as np

from rmsnorm_conformance.conformance import judges, regions

_CURRENT: contextvars.ContextVar["Ledger | None"] = contextvars.ContextVar(
    "rmsnorm_conformance_ledger", default=None)


def current() -> "Ledger | None":
    """The ledger of the test item running now, or None (outside a test item)."""
    return _CURRENT.get()


@contextlib.contextmanager
def active(ledger: "Ledger"):
    """``ledger`` is the current one within the block."""
    token = _CURRENT.set(ledger)
    try:
        yield ledger
    finally:
        _CURRENT.reset(token)


def dtype_key(case) -> str:
    """The case's dtype pair, as ``regions.dtype_key`` names it: "float16+float32"."""
    return regions.dtype_key(case.x.dtype, None if case.weight is None else case.weight.dtype)


@dataclasses.dataclass
class Worst:
    ratio: float
    error_ulps: float
    bound_ulps: float
    label: str
    key: str
    case: object       # the Case (arrays): turned into a repro only when reported


@dataclasses.dataclass
class DtypeEntry:
    examples: int = 0
    failed: bool = False
    worst: Worst | None = None


class Ledger:
    """Examples, per-dtype counts and the worst error/bound ratio of one test item."""

    def __init__(self, record_calls: bool = False, artifacts: pathlib.Path | None = None,
                 clause: str | None = None):
        self.examples = 0
        self.artifacts = artifacts       # where large failing inputs are saved (None: default)
        self.clause = clause             # the clause being checked (named in repros)
        # whether that clause judges values (None: no clause); a clause about form (shapes,
        # dtypes: ``@judges_values(False)``) fails on a wrong output dtype, one about values
        # judges the values converted to the contract's dtype (``assertions.check_result``).
        # Resolved here, before any example runs (it imports the section modules).
        self.judges_values = judges.numerical(clause) if clause else None
        self.by_dtype: dict[str, DtypeEntry] = {}
        self.worst: Worst | None = None
        self.record_calls = record_calls
        self.calls: list[list] = []          # per example: (method, case) (coverage only)
        self.by_d: dict[tuple, list] = {}     # (dtype, label, d) -> [ratio, err, bound, count]
        self._key: str | None = None
        self._example_ratio = 0.0
        self._last_case = None

    # ---- driven by the plugin's wrapper of each property ---------------------------------
    def begin_example(self) -> None:
        self.examples += 1
        self._key = None
        self._example_ratio = 0.0
        if self.record_calls:
            self.calls.append([])

    def drop_example(self) -> None:
        """The example just begun was rejected (Hypothesis' ``UnsatisfiedAssumption``: an
        explicit anchor asking for a capability the implementation does not declare, which
        Hypothesis skips): it is no example, and is not counted."""
        self.examples -= 1
        if self._key is not None:
            self.by_dtype[self._key].examples -= 1
            self._key = None
        if self.record_calls and self.calls:
            self.calls.pop()

    def end_example(self) -> float:
        """The example's largest error/bound ratio (for ``hypothesis.target``)."""
        return self._example_ratio

    def mark_failed(self, case=None) -> None:
        """The current example failed its clause on ``case`` (default: the last case the
        implementation was called on): that dtype's status is FAIL."""
        case = case if case is not None else self._last_case
        if case is not None:
            self.by_dtype.setdefault(dtype_key(case), DtypeEntry()).failed = True

    # ---- driven by the assertions ------------------------------------------------------------
    def note_call(self, method: str, case) -> None:
        """An implementation call on ``case`` (its first call in an example sets the example's
        dtype)."""
        self._last_case = case
        if self._key is None and case is not None and self.examples:
            self._key = dtype_key(case)
            self.by_dtype.setdefault(self._key, DtypeEntry()).examples += 1
        if self.record_calls and self.calls and case is not None:
            self.calls[-1].append((method, case))

    def note_error(self, case, label: str, err_ulps: np.ndarray, bound_ulps: np.ndarray) -> None:
        """Errors and bounds (in ulps of the judged dtype) of one judged array."""
        if err_ulps.size == 0:
            return
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(np.isfinite(bound_ulps) & (bound_ulps > 0),
                             err_ulps / bound_ulps, 0.0)
        ratio = np.nan_to_num(ratio, nan=0.0, posinf=0.0)
        i = int(np.argmax(ratio))
        r = float(ratio.flat[i])
        self._example_ratio = max(self._example_ratio, r)
        key = dtype_key(case)
        w = Worst(r, float(err_ulps.flat[i]), float(bound_ulps.flat[i]), label, key, case)
        rec = self.by_d.setdefault((key, label, int(case.x.shape[-1]) if case.x.ndim else 0),
                                   [-1.0, 0.0, 0.0, 0])
        rec[3] += 1
        if r > rec[0]:
            rec[:3] = [r, w.error_ulps, w.bound_ulps]
        entry = self.by_dtype.setdefault(key, DtypeEntry())
        if entry.worst is None or r > entry.worst.ratio:
            entry.worst = w
        if self.worst is None or r > self.worst.ratio:
            self.worst = w
