"""Calling an implementation and judging its output, with messages that reproduce the case.

Every property calls the implementation through ``call`` / ``forward`` (which turn exceptions and
malformed results into clause failures) and judges values with ``assert_within`` (which applies
the tolerance model's bounds and reports errors in ulps of the output dtype). A clause that is not
met raises ``Nonconformance``; anything else a property raises is a defect of the suite or of the
adapter's plumbing and is reported as ERROR.
"""

from __future__ import annotations

import hashlib
import os
import pathlib

import numpy as np

from rmsnorm_conformance.conformance import cases as cases_mod, ledger
from rmsnorm_conformance.conformance.cases import PRINT_LIMIT, Case
from rmsnorm_conformance.conformance.errors import (AdapterError, BadResult,  # noqa: F401
                                                     ImplementationDied, Nonconformance,
                                                     SuiteError)
from rmsnorm_conformance.conformance.dtypes import INFO, info, round_to, ulp
from rmsnorm_conformance import reference
from rmsnorm_conformance.conformance.tolerance import Bound, forward_bound, \
    self_bound, self_comparison_bound

#: Where large failing inputs are saved, whatever else says (the plugin's --rmsnorm-artifacts
#: and the current ledger's folder, or ``.rmsnorm-conformance/`` in the working directory).
ARTIFACTS_ENV = "RMSNORM_CONFORMANCE_ARTIFACTS"



def artifacts_dir() -> pathlib.Path:
    """The folder for large failing inputs: the environment variable, else the running test
    item's (its ledger's, from --rmsnorm-artifacts or the rootdir), else the working
    directory's ``.rmsnorm-conformance/``."""
    env = os.environ.get(ARTIFACTS_ENV)
    book = ledger.current()
    folder = env or (book.artifacts if book is not None else None) or ".rmsnorm-conformance"
    return pathlib.Path(folder).resolve()


def _is_final_run() -> bool:
    try:
        from hypothesis.control import current_build_context
        return bool(current_build_context().is_final)
    except Exception:       # noqa: BLE001 - not inside a Hypothesis test: always report in full
        return True


def save_case(case: Case, name: str, folder: pathlib.Path | None = None) -> pathlib.Path:
    """Save ``case`` as ``<folder>/<name>-<digest>.npz`` (the default folder: artifacts_dir())."""
    arrays = [case.x, case.weight, *case.extras.values()]
    digest = hashlib.sha1(b"".join(a.tobytes() for a in arrays if a is not None)
                          + repr(case.eps).encode()).hexdigest()[:12]
    folder = folder or artifacts_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{digest}.npz"
    cases_mod.save(case, path)
    return path


def repro(case: Case, impl, force: bool = False) -> str:
    """Small cases print their bytes; large ones are saved as .npz on Hypothesis' final run (or
    at once with ``force``: a crash or hang gets no final run). The clause being checked is
    named first, so that ``rmsnorm-conformance check`` re-judges that clause."""
    book = ledger.current()
    clause = book.clause if book is not None else None
    arrays = [case.x, case.weight, *case.extras.values()]
    if all(a is None or a.size <= PRINT_LIMIT for a in arrays):
        return case.repro(clause)
    if not (force or _is_final_run()):
        return "(saved on Hypothesis' final run)"
    path = save_case(case, getattr(impl, "id", "case"))
    head = f"clause = {clause!r}\n" if clause else ""
    return f"{head}from {cases_mod.MODULE} import load\ncase = load({str(path)!r})"


def fail(impl, case: Case | None, message: str, summary: str | None = None) -> None:
    """Raise the clause's failure: ``summary`` (default: the message's first line) is the
    one-line reason shown in the table and the results file."""
    if ledger.current() is not None:
        ledger.current().mark_failed(case)
    lines = [message]
    if case is not None:
        lines += [f"case: {case.describe()}", "repro:", repro(case, impl)]
    raise Nonconformance("\n".join(lines), summary or message.splitlines()[0])


def check_result(impl, case: Case, out, expect_shape, expect_dtype, what="rms_norm") -> np.ndarray:
    """``out`` as an ndarray of the expected shape and dtype. A wrong type or shape fails the
    clause. A wrong dtype fails only a clause about form (DTY, GRAD-3, MOD: its property carries
    ``@judges_values(False)``, ``Ledger.judges_values``) or a call outside any clause; a clause
    about values judges the values converted to the expected dtype (rounded to nearest, the
    conversion a correct implementation makes), so that one cause gives one red cell: the dtype
    clause's (IMP-2)."""
    if not isinstance(out, np.ndarray):
        fail(impl, case, f"{what} returned {type(out).__module__}.{type(out).__name__}, "
                         f"expected a numpy.ndarray (adapters convert framework arrays)")
    if out.shape != tuple(expect_shape):
        fail(impl, case, f"{what} returned shape {out.shape}, expected {tuple(expect_shape)}")
    if expect_dtype is not None and out.dtype != expect_dtype:
        book = ledger.current()
        if book is None or not book.judges_values or out.dtype.name not in INFO:
            fail(impl, case, f"{what} returned dtype {out.dtype.name}, expected "
                             f"{np.dtype(expect_dtype).name} (DTY clauses; mixed convention "
                             f"{impl.capabilities.mixed!r})")
        return round_to(out.astype(np.float64), expect_dtype).astype(expect_dtype)
    return out


def call(impl, case: Case | None, fn, *args, what: str):
    """Run ``fn(*args)``; an exception the implementation raised becomes a clause failure
    naming it. A crash or hang keeps its type (CRASH, TIMEOUT) with the exact input; a defect of
    the suite's own making on the way stays an ERROR (``SuiteError``)."""
    if ledger.current() is not None:
        ledger.current().note_call(what, case)
    try:
        return fn(*args)
    except ImplementationDied as e:   # keep the type (not shrunk), add the exact input
        lines = [f"{e.kind.upper()}: {e}"]
        if case is not None:
            lines += [f"case: {case.describe()}", "repro:", repro(case, impl, force=True)]
        raise type(e)("\n".join(lines), summary=e.summary) from None
    except SuiteError:
        raise
    except BadResult as e:
        fail(impl, case, f"{what} {e}")
    except NotImplementedError as e:
        raise AdapterError(f"{getattr(impl, 'id', impl)}: {what} is not implemented by the "
                           f"adapter, though its capabilities declare it ({e})") from None
    except Exception as e:   # noqa: BLE001 - any adapter error is a finding, not a suite error
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        fail(impl, case, f"{what} raised {type(e).__name__}: {first}")


def expect_value_error(impl, fn, *args, what: str, detail: str = "") -> None:
    """``fn(*args)`` must raise ValueError (argument validation: VAL, MOD-4). Another exception
    from the implementation, or none, fails the clause; a crash, hang or defect of the suite
    keeps its own status."""
    if ledger.current() is not None:
        ledger.current().note_call(what, None)
    try:
        fn(*args)
    except ValueError:
        return
    except SuiteError:
        raise
    except Exception as e:   # noqa: BLE001 - any other exception is the finding
        fail(impl, None, f"{what}: raised {type(e).__name__}: {e}; expected ValueError"
                         + (f"\n{detail}" if detail else ""))
    fail(impl, None, f"{what}: no error; expected ValueError" + (f"\n{detail}" if detail else ""))


def output_dtype(impl, case: Case) -> np.dtype:
    """The output dtype the implementation declares for the case's x and weight (DTY)."""
    return impl.capabilities.output_dtype(case.x.dtype, None if case.weight is None
                                          else case.weight.dtype)


def forward(impl, case: Case, layout=None) -> np.ndarray:
    """impl.rms_norm on the case, checked for type, shape and the declared output dtype."""
    out = call(impl, case, impl.rms_norm, case.x, case.weight, case.eps, layout,
               what="rms_norm")
    return check_result(impl, case, out, case.x.shape, output_dtype(impl, case))


def normalised_dtype(impl, case: Case):
    """The type the normalised value may be rounded to before a wider weight, where the
    implementation declares that convention (``normalised_in_input_dtype``): x's; else None."""
    if impl.capabilities.normalised_in_input_dtype and case.weight is not None \
            and case.weight.dtype != case.x.dtype:
        return case.x.dtype
    return None


def accuracy_bound(impl, case: Case, out_dtype, exact_sum: bool = False,
                   flush_allowed: bool = True, convention: bool = True,
                   accumulator: str = "float32") -> Bound:
    """The TOL bound for the case's output under the implementation's declared rounding
    convention (``convention=False``: the output type's own precision, ACC-9), for a
    computation held to ``accumulator``'s precision (float64: ACC-12)."""
    return forward_bound(case.x, case.applied, case.eps, out_dtype, exact_sum=exact_sum,
                         flush_allowed=flush_allowed,
                         normalised_dtype=normalised_dtype(impl, case) if convention else None,
                         accumulator=accumulator)


def error(got: np.ndarray, fb: Bound) -> np.ndarray:
    """|got - reference| in float64 (against ref + ref_lo where the reference is a
    double-double: float64 inputs)."""
    with np.errstate(invalid="ignore", over="ignore"):
        diff = got.astype(np.float64) - fb.ref
        return np.abs(diff if fb.ref_lo is None else diff - fb.ref_lo)


def violations(got: np.ndarray, fb: Bound) -> np.ndarray:
    """Boolean mask of elements outside the bound (after the allowed exceptions)."""
    g = got.astype(np.float64)
    ref = fb.ref
    with np.errstate(invalid="ignore", over="ignore"):
        err = error(got, fb)
        ok = err <= fb.bound
        ok |= np.isinf(fb.bound)
        ok |= fb.zero_ok & (g == 0)
        # the true result may exceed the output type's range: then the right-signed inf is right
        top = info(fb.out_dtype).max
        ok |= np.isinf(g) & (np.sign(g) == np.sign(ref)) & (np.abs(ref) + fb.bound > top)
        ok |= (g == ref)   # also covers ref = +-inf exactly matched
        if fb.nonfinite_ok is not None:
            ok |= fb.nonfinite_ok & ~np.isfinite(g)
    return ~ok


def _num(v) -> str:
    return repr(float(v))


def describe_errors(case: Case, got: np.ndarray, fb: Bound, bad: np.ndarray,
                    label="output", got_name: str = "got") -> tuple[str, str]:
    """(the worst violation in a few lines, a one-line summary)."""
    g = got.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        unit = ulp(fb.ref, fb.out_dtype)
        err_ulps = error(got, fb) / unit
        bound_ulps = fb.bound / unit
        excess = np.where(bad, np.nan_to_num(err_ulps / bound_ulps, nan=np.inf), -1.0)
    idx = np.unravel_index(int(np.argmax(excess)), excess.shape) if excess.size else ()
    where = tuple(int(i) for i in idx)
    x_at = f"x = {_num(case.x.astype(np.float64)[idx])}, " if got.shape == case.x.shape else ""
    err, bnd = float(err_ulps[idx]), float(bound_ulps[idx])
    summary = (f"{int(bad.sum())} of {bad.size} {label} elements beyond the bound, worst "
               f"{err:.4g} ulp > {bnd:.4g} ulp of {fb.out_dtype.name} "
               f"({dtype_shape(case)}, eps {case.eps:g})")
    truth = "" if fb.truth is None else f" (float64 reference {_num(fb.truth[idx])})"
    text = (f"{int(bad.sum())} of {bad.size} {label} elements exceed the bound; worst at "
            f"index {where}:\n"
            f"  {x_at}expected ({fb.ref_name}) {_num(fb.ref[idx])}, {got_name} {_num(g[idx])}"
            f"{truth}\n"
            f"  error {err:.4g} ulp of {fb.out_dtype.name}, bound {bnd:.4g} ulp "
            f"(= {float(fb.bound[idx]):.6g} absolute)")
    return text, summary


def dtype_shape(case: Case) -> str:
    w = "" if case.weight is None or case.weight.dtype == case.x.dtype \
        else f"+{case.weight.dtype.name}"
    return f"{case.x.dtype.name}{w}{list(case.x.shape)}"


def _record(case: Case, got: np.ndarray, fb: Bound, label: str) -> None:
    """The judged errors in ulps, for the ledger (worst error per dtype, hypothesis.target):
    elements accepted by one of the bound's exceptions rather than by the bound (an allowed
    zero, an allowed non-finite value) are not errors measured against it and are left out."""
    book = ledger.current()
    if book is None or got.size == 0:
        return
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        g = got.astype(np.float64)
        err = error(got, fb)
        judged = np.isfinite(err) & np.isfinite(fb.bound) & (fb.bound > 0)
        judged &= ~(fb.zero_ok & (g == 0) & (err > fb.bound))
        if not judged.any():
            return
        ratio = np.where(judged, err / fb.bound, -1.0)
    i = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    unit = ulp(fb.ref[i], fb.out_dtype)
    book.note_error(case, label, np.array([err[i] / unit]), np.array([fb.bound[i] / unit]))


def assert_within(impl, case: Case, got: np.ndarray, fb: Bound, label="output",
                  context="", got_name: str = "got") -> None:
    bad = violations(got, fb)
    if bad.any():
        text, summary = describe_errors(case, got, fb, bad, label, got_name)
        fail(impl, case, (context + "\n" if context else "") + text,
             (context + ": " if context else "") + summary)
    _record(case, got, fb, label)


def missing_capability(caps, **need) -> str | None:
    """Why ``caps`` lacks what a clause needs, or None: the reason says exactly what would
    enable the clause. ``need`` maps capability names to a value: True (declared truthy), a
    value (in the declared sequence, or equal), or a tuple of values (any one of them)."""
    for name, want in need.items():
        declared = getattr(caps, name)
        options = want if isinstance(want, tuple) else (want,)
        if want is True:
            ok = bool(declared)
        elif isinstance(declared, (tuple, list)):
            ok = any(o in declared for o in options)
        else:
            ok = declared in options
        if ok:
            continue
        if want is True:
            return f"does not declare capability {name}"
        if len(options) > 1:
            return (f"declares capability {name}={_shown(declared)}, and none of "
                    f"{' or '.join(map(repr, options))} (any one enables this clause)")
        return f"does not declare capability {name}={want!r}"
    return None


def _shown(declared) -> str:
    return repr(tuple(declared)) if isinstance(declared, (tuple, list)) else repr(declared)


def check_accuracy(impl, case: Case, layout=None, exact_sum: bool = False,
                   context: str = "", convention: bool = True,
                   accumulator: str = "float32") -> np.ndarray:
    """Forward on the case and the TOL bound on every element, under the implementation's
    declared rounding convention (``convention=False``: the output type's own precision), for
    a float32 (or, ``accumulator="float64"``, a float64) computation; returns the output."""
    got = forward(impl, case, layout)
    fb = accuracy_bound(impl, case, got.dtype, exact_sum=exact_sum, convention=convention,
                        accumulator=accumulator)
    assert_within(impl, case, got, fb, context=context)
    return got


def self_within(impl, case: Case, got: np.ndarray, want: np.ndarray, names: tuple[str, str],
                context: str) -> None:
    """``got`` within the self-comparison bound (TOL, "Self-comparisons") of the
    implementation's own ``want`` (``names``: what each is, e.g. ("f(2**k x) ...", "f(x)")),
    with the float64 reference shown beside."""
    w64 = want.astype(np.float64)
    applied = case.applied
    same_shape = got.shape == case.x.shape
    bound = self_comparison_bound(case.x, applied, case.eps, w64, want.dtype,
                                  bool(case.params.get("exact_sum", True))) if same_shape \
        else self_bound(w64, applied, want.dtype)
    fb = Bound(ref=w64, bound=bound,
               zero_ok=np.zeros(want.shape, bool), out_dtype=want.dtype, ref_name=names[1],
               truth=reference.rms_norm(case.x, applied, case.eps) if got.shape == case.x.shape
               else None)
    assert_within(impl, case, got, fb, context=context, got_name=names[0])


def _bits(a: np.ndarray) -> np.ndarray:
    """The bits of each element, every NaN mapped to one pattern (a NaN's sign and payload are
    unspecified by IEEE 754 arithmetic: they never count as a difference)."""
    bits = a.view(f"u{a.itemsize}").copy()
    nan = np.isnan(a.astype(np.float64))
    bits[nan] = np.iinfo(bits.dtype).max
    return bits


def bits_differ(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays differ in shape, dtype or any bit (+0.0 and -0.0 differ; NaNs of any
    sign or payload do not)."""
    return a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(_bits(a), _bits(b))


def first_difference(a: np.ndarray, b: np.ndarray, names=("", "")) -> str:
    """Where two arrays of one shape first differ bitwise, with both values."""
    differ = _bits(a) != _bits(b)
    i = tuple(int(k) for k in np.argwhere(differ)[0]) if differ.any() else ()
    first, second = (f"{n} = " if n else "" for n in names)
    return f"first difference at {i}: {first}{_num(a[i])} vs {second}{_num(b[i])}"


def assert_bitwise(impl, case: Case, got: np.ndarray, want: np.ndarray, what: str,
                   names: tuple[str, str] = ("", "")) -> None:
    """``got`` and ``want`` must be identical bit for bit (NaNs compare by position only)."""
    if bits_differ(got, want):
        detail = first_difference(got, want, names) if got.shape == want.shape else \
            f"shapes {got.shape} vs {want.shape}"
        fail(impl, case, f"{what}: {detail}", f"{what} ({dtype_shape(case)}, eps {case.eps:g})")
