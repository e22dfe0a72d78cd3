"""REF-5: what the suite computes from an example alone (references, bounds, the example's arrays)
is kept per process by the values of its arguments (``reference/memo.py``) and is exactly what
the call it stands for returns: no two different arguments share an entry, what is kept cannot
be changed by a caller, the budget holds, and a run's verdicts are the same with the store on
or off."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rmsnorm_conformance import reference
from rmsnorm_conformance.conformance import results, strategies, tolerance
from rmsnorm_conformance.conformance.marks import clause
from rmsnorm_conformance.reference import memo

pytestmark = clause("REF-5")
FIXTURES = pathlib.Path(__file__).resolve().parent / "plugin_fixtures"


@pytest.fixture
def store(monkeypatch):
    """An empty store of its own with the default budget (the worker's store, which the
    properties it runs share, is left as it is)."""
    monkeypatch.delenv(memo.BUDGET_ENV, raising=False)
    monkeypatch.setattr(memo, "STORE", memo.Store())
    memo.budget.cache_clear()
    yield memo
    memo.budget.cache_clear()


def _calls(fn):
    """A memoised function counting the calls that reach it."""
    seen = []

    @memo.by_value
    def counted(*args, **kwargs):
        seen.append(args)
        return fn(*args, **kwargs)
    return counted, seen


def test_equal_values_share_an_entry_and_different_ones_never_do(store):
    f, seen = _calls(lambda a, eps: np.asarray(a, np.float64) * 2 + eps)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    f(x, 1e-5)
    f(x.copy(), 1e-5)                                 # equal values in another array: kept
    assert len(seen) == 1
    different = [
        (x.astype(np.float16), 1e-5),                             # same values, another dtype
        (x.reshape(4, 2), 1e-5),                                  # same bytes, another shape
        (x.astype(np.float16).view(ml_dtypes.bfloat16), 1e-5),    # float16's bytes as bfloat16
        (x, float(np.float32(1e-5))),                             # float32's 1e-5, not float64's
        (x, np.float32(1e-5)),                                    # a NumPy scalar, not a float
        (np.ascontiguousarray(x.T).T, 1e-5),                      # equal, other memory order
    ]
    for args in different[:-1]:
        f(*args)
    assert len(seen) == 1 + len(different) - 1
    f(*different[-1])                   # the same values in Fortran order are the same values
    assert len(seen) == len(different)
    f(x, 0.0), f(x, -0.0)                              # 0.0 and -0.0 are different eps
    assert len(seen) == len(different) + 2
    signed, _ = _calls(lambda eps: np.array([eps]))
    assert not np.signbit(signed(0.0)[0]) and np.signbit(signed(-0.0)[0])
    x[0, 0] = 7                                        # changed in place after the call: a miss
    assert f(x, 1e-5)[0, 0] == 7 * 2 + 1e-5


def test_an_argument_it_cannot_key_is_computed_every_time(store):
    f, seen = _calls(lambda a: len(a))
    assert f({"a": 1}) == f({"a": 1}) == 1
    assert f(np.array([object()], dtype=object)) == 1
    assert len(seen) == 3 and store.stats()["unkept"] == 3


def test_what_is_kept_cannot_be_changed_by_a_caller(store):
    x = np.linspace(-3, 3, 24, dtype=np.float32).reshape(3, 8)
    y = reference.rms_norm(x, None, 1e-5)
    with pytest.raises(ValueError, match="read-only"):
        y[0, 0] = 0
    b = tolerance.forward_bound(x, None, 1e-5, np.float32)
    b.ref = np.zeros_like(b.ref)                      # a field reassigned by one caller ...
    again = tolerance.forward_bound(x, None, 1e-5, np.float32)
    assert np.array_equal(again.ref, y)               # ... is not what the next one gets
    assert store.stats()["hits"] >= 1


def test_a_result_sharing_memory_with_an_argument_is_kept_as_a_copy(store):
    f, _ = _calls(lambda a: (a, a[1:]))
    x = np.arange(5.0)
    whole, tail = f(x)
    assert whole is not x and not np.shares_memory(whole, x) and not np.shares_memory(tail, x)
    x[0] = 9.0                                         # the caller's array stays its own
    assert x.flags.writeable and whole[0] == 0.0


def test_the_budget_keeps_what_costs_most_per_byte(store, monkeypatch):
    monkeypatch.setenv(memo.BUDGET_ENV, str(3 * 8 * 1000 / 2 ** 20))   # three 1000-float rows
    memo.budget.cache_clear()
    clock = iter(range(0, 10 ** 6, 1))
    monkeypatch.setattr(memo.time, "perf_counter", lambda: next(clock) / 1000.0)

    def make(cost_ms):
        def fn(seed):
            for _ in range(cost_ms - 1):       # each perf_counter read advances 1 ms
                memo.time.perf_counter()
            return np.full(1000, float(seed))
        return memo.by_value(fn)
    cheap, dear = make(2), make(50)
    for seed in range(3):
        cheap(seed)
    assert store.stats()["entries"] == 3
    dear(10)                                   # dearer per byte: a cheap one makes room
    assert store.stats()["entries"] == 3 and store.stats()["bytes"] == 3 * 8000
    cheap(99)                                  # cheaper than everything kept: not kept
    assert store.stats()["entries"] == 3
    hits = store.stats()["hits"]
    dear(10)
    assert store.stats()["hits"] == hits + 1
    too_big = memo.by_value(lambda: np.zeros(4000))
    too_big()                                  # larger than the whole budget: never kept
    assert store.stats()["entries"] == 3 and store.stats()["bytes"] <= memo.budget()


def test_the_budget_from_the_environment(store, monkeypatch):
    monkeypatch.setenv(memo.BUDGET_ENV, "0")
    memo.budget.cache_clear()
    f, seen = _calls(lambda a: a + 1)
    f(1.0), f(1.0)
    assert len(seen) == 2 and store.stats()["entries"] == 0
    monkeypatch.setenv(memo.BUDGET_ENV, "lots")
    memo.budget.cache_clear()
    with pytest.raises(ValueError, match="pass a number of MiB"):
        memo.budget()
    monkeypatch.setenv(memo.BUDGET_ENV, "")
    memo.budget.cache_clear()
    assert 0 < memo.budget() <= memo.DEFAULT_MB * 2 ** 20


def _same(a, b) -> bool:
    """Equal values, NaN where NaN, dtypes and (recursively) fields alike."""
    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(_same(getattr(a, f.name), getattr(b, f.name))
                                           for f in dataclasses.fields(a))
    return a == b or (a != a and b != b)


@settings(max_examples=15, deadline=None)
@given(d=st.sampled_from([1, 7, 33, 256]), rows=st.integers(1, 3),
       dtype=st.sampled_from(["float32", "float16", "bfloat16", "float64"]),
       weighted=st.booleans(), seed=st.integers(0, 2 ** 16),
       eps=st.sampled_from([0.0, 1e-6, 1e-5, 1.0]))
def test_every_kept_function_returns_what_the_call_would(d, rows, dtype, weighted, seed, eps):
    rng = np.random.default_rng(seed)
    dt = strategies.DTYPES[dtype]
    x = rng.standard_normal((rows, d)).astype(dt)
    w = rng.standard_normal(d).astype(dt) if weighted else None
    g, v = rng.standard_normal((rows, d)).astype(dt), rng.standard_normal((rows, d))
    calls = [
        (reference.rms_norm, (x, w, eps)), (reference.rms_norm_dd, (x, w, eps)),
        (reference.rms_norm_vjp, (x, w, eps, g)), (reference.rms_norm_vjp_dd, (x, w, eps, g)),
        (reference.rms_norm_jvp, (x, w, eps, g)), (reference.rms_norm_hvp, (x, w, eps, g, v)),
        (tolerance.forward_bound, (x, w, eps, dt)), (tolerance.vjp_bounds, (x, w, eps, g)),
        (tolerance.jvp_bound, (x, w, eps, g, None, dt)),
        (tolerance.hvp_bound, (x, w, eps, g, v)),
        (tolerance.self_comparison_bound, (x, w, eps, reference.rms_norm(x, w, eps), dt)),
    ]
    if dtype in ("float16", "bfloat16"):
        calls.append((tolerance.rounding_candidates, (x, w, eps, dt)))
    with np.errstate(all="ignore"):
        for fn, args in calls:
            kept = fn(*args)
            assert _same(kept, fn.uncached(*args)), fn.__name__
            assert _same(fn(*args), kept), fn.__name__            # and the entry it left
    plan = strategies.Plan(x_dtype=dtype, d=d, lead=(rows,), seed=seed, exp=0)
    assert _same(plan.x_values(dtype), strategies.Plan.x_values.uncached(plan, dtype))
    assert _same(strategies.weight_values("random", d, dtype, seed),
                 strategies.weight_values.uncached("random", d, dtype, seed))


def test_a_case_holds_arrays_of_its_own(store):
    """The arrays an implementation is given are the case's own, writable (an adapter in the
    suite's process may use them as NumPy gives them), though the plan's values are kept."""
    from rmsnorm_conformance.protocol import Capabilities
    plan = strategies.Plan(x_dtype="float32", d=8, lead=(2,), seed=3, weight="random")
    first, second = plan.build(Capabilities()), plan.build(Capabilities())
    assert store.stats()["hits"] >= 2
    for a, b in ((first.x, second.x), (first.weight, second.weight)):
        assert a.flags.writeable and not np.shares_memory(a, b) and np.array_equal(a, b)


def _run(tmp_path: pathlib.Path, budget: str) -> dict:
    tmp_path.mkdir()
    out = tmp_path / "results.json"           # the same name: cases are filed under it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "FAKE_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(FIXTURES), env.get("PYTHONPATH", ""))
                                        if p)
    env["RMSNORM_CONFORMANCE_ARTIFACTS"] = str(tmp_path / "artifacts")
    env[memo.BUDGET_ENV] = budget
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--assert=plain", "-q",
         "--pyargs", "rmsnorm_conformance.conformance", "--rmsnorm-impl", "numpy-textbook",
         "--rmsnorm-impl", "fake-good", "-k", "ACC or GRAD-2 or SPV-1 or MET-1",
         "--rmsnorm-results", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = results.load(out)
    return {(r.clause, r.impl): (r.status, r.reason, r.examples, json.dumps(
        None if r.worst is None else r.worst.to_json(), sort_keys=True)) for r in doc.results}


@pytest.mark.slow_self_test
def test_a_run_gives_the_same_verdicts_with_the_store_on_or_off(tmp_path):
    """Two implementations judged on the same examples in one process, so that the second one's
    references and bounds come from the store: every cell's status, reason, example count and
    worst element (error, bound, ratio, case) as without the store."""
    on, off = _run(tmp_path / "on", "64"), _run(tmp_path / "off", "0")
    assert on.keys() == off.keys() and len(on) > 10
    assert {k: v for k, v in on.items() if v != off[k]} == {}
