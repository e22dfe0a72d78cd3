"""Self-tests of conformance/fingerprint.py, the rounding-order fingerprint (reported, never
judged).

Ground truth: the NumPy implementations of tests/fakes.py, whose orders are known by
construction, plus small subclasses here for orders fakes.py does not offer (their sums are
written independently of the fingerprint's own models, column by column). Each must be named
correctly, in both modes of the reduction probe; implementations that raise or return junk must
give "inconclusive" with a reason, and an order outside the model must give "other", never a
wrong name. MLX's CPU backend and PyTorch's CPU kernel are run as real subjects when installed.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import pathlib
import sys

import ml_dtypes
import numpy as np
import pytest

from rmsnorm_conformance.conformance import fingerprint as fpm
from rmsnorm_conformance.conformance.fingerprint import describe, fingerprint
from rmsnorm_conformance.protocol import Capabilities, Implementation
from rmsnorm_conformance.conformance.marks import clause
from tests.fakes import F32, FlattenedOutput, Raises, ReturnsList, TextbookFloat32

# The fingerprint is reported with the results (IMP-3), never judged.
pytestmark = clause("IMP-3")

# order -> (weight_order, reduction label, reduction family)
EXPECTED = {
    "sequential": ("round-then-weight", "sequential", "sequential"),
    "pairwise": ("round-then-weight", "pairwise(numpy)", "pairwise"),
    "reversed": ("round-then-weight", "reversed", "reversed"),
    "blocked": ("round-then-weight", "blocked(256)", "blocked"),
    "torch": ("weight-then-round", "sequential", "sequential"),
}

PLAIN_CAPS = dataclasses.replace(TextbookFloat32.capabilities, nonpositive_eps=False)


class PlainTextbook(TextbookFloat32):
    """A textbook implementation that does not declare nonpositive_eps: the reduction probe
    runs in plain mode (eps > 0, no cancellation) and the mean/eps probe is skipped."""

    capabilities = PLAIN_CAPS


def _check_serialisable(fp: dict) -> None:
    assert json.loads(json.dumps(fp)) == fp, "the fingerprint must be JSON-serialisable"
    line = describe(fp)
    assert isinstance(line, str) and "\n" not in line and line, line


def _summary(fp: dict) -> tuple[str, str, str]:
    return fp["weight_order"], fp["reduction"], fp["reduction_family"]


# ---- ground truth: tests/fakes.py ---------------------------------------------------------


@pytest.mark.parametrize("order", list(EXPECTED))
def test_textbook_orders_identified(order):
    fp = fingerprint(TextbookFloat32(order))
    _check_serialisable(fp)
    assert _summary(fp) == EXPECTED[order], describe(fp)
    assert (fp["mean"], fp["eps_add"]) == ("s/d", "float32"), describe(fp)   # q = s/F32(d)+F32(eps)


@pytest.mark.parametrize("order", list(EXPECTED))
def test_textbook_orders_identified_without_negative_eps(order):
    fp = fingerprint(PlainTextbook(order))
    _check_serialisable(fp)
    assert _summary(fp) == EXPECTED[order], describe(fp)
    assert fp["evidence"]["reduction"]["mode"].startswith("plain")
    assert fp["mean"] == "inconclusive"
    assert "nonpositive_eps" in fp["evidence"]["mean_eps"]["reason"]


# ---- ground truth: orders written here, independently of the fingerprint's models ----------


def _columns(sq):
    return [sq[..., j] for j in range(sq.shape[-1])]


def blocked_sum(b):
    def total(sq):
        grand = np.zeros(sq.shape[:-1], F32)
        block = np.zeros(sq.shape[:-1], F32)
        for j, col in enumerate(_columns(sq)):
            block = block + col
            if (j + 1) % b == 0 or j == sq.shape[-1] - 1:
                grand, block = grand + block, np.zeros_like(block)
        return grand
    return total


def _halving(parts):
    while len(parts) > 1:
        parts = [parts[i] + parts[i + 1] for i in range(0, len(parts), 2)]
    return parts[0]


def strided_tree_sum(k):
    def total(sq):
        lanes = [np.zeros(sq.shape[:-1], F32) for _ in range(k)]
        for j, col in enumerate(_columns(sq)):
            lanes[j % k] = lanes[j % k] + col
        return _halving(lanes)
    return total


def pairwise_sum(sq):
    def rec(lo, hi):
        if hi - lo == 1:
            return sq[..., lo]
        mid = (lo + hi) // 2
        return rec(lo, mid) + rec(mid, hi)
    return rec(0, sq.shape[-1])


def float64_sum(sq):
    return np.sum(sq.astype(np.float64), axis=-1).astype(F32)


def kahan_sum(sq):
    s = np.zeros(sq.shape[:-1], F32)
    c = np.zeros_like(s)
    for col in _columns(sq):
        y = col - c
        t = s + y
        c = (t - s) - y
        s = t
    return s


class SumOrder(TextbookFloat32):
    """The textbook computation with the row sum replaced by ``total`` (rows along the last
    axis, returning float32 sums)."""

    def __init__(self, name, total, plain=False):
        super().__init__("sequential")
        self.id, self.total = f"sum-{name}", total
        if plain:
            self.capabilities = PLAIN_CAPS

    def sum_squares(self, xv, x32):
        sq = np.atleast_2d(self.squares(xv, x32))
        return self.total(sq).astype(F32).reshape(x32.shape[:-1] + (1,))


EXTRA = {
    # name: (sum, reduction label in cancellation mode, family)
    "blocked64": (blocked_sum(64), "blocked(64)", "blocked"),
    "strided8-tree": (strided_tree_sum(8), "strided(8)+tree", "strided"),
    "strided256-tree": (strided_tree_sum(256), "strided(256)+tree", "strided"),
    "pairwise": (pairwise_sum, "pairwise(leaf 1)", "pairwise"),
    "float64": (float64_sum, "exact", "exact"),
    "kahan": (kahan_sum, "exact", "exact"),
}


@pytest.mark.parametrize("name", list(EXTRA))
def test_more_orders_identified(name):
    total, label, family = EXTRA[name]
    fp = fingerprint(SumOrder(name, total))
    _check_serialisable(fp)
    assert (fp["reduction"], fp["reduction_family"]) == (label, family), describe(fp)
    assert fp["evidence"]["reduction"]["max_ulps"] == 0.0


@pytest.mark.parametrize("name", list(EXTRA))
def test_more_orders_plain_mode_never_misnamed(name):
    """Without cancellation some orders differ by less than the tolerance: the answer may be
    a list of candidates, but the true order must be among them and no other name given."""
    total, label, _ = EXTRA[name]
    fp = fingerprint(SumOrder(name, total, plain=True))
    _check_serialisable(fp)
    red = fp["evidence"]["reduction"]
    assert fp["reduction"] == label or label in red.get("candidates", []), describe(fp)


class ReciprocalMean(TextbookFloat32):
    """MLX's mean: s * float32(1/d)."""

    def q(self, s, d, eps):
        return s * F32(1.0 / d) + F32(eps)


class Float64Eps(TextbookFloat32):
    """eps kept in float64: q = float32(float32(s/d) + eps)."""

    def q(self, s, d, eps):
        return ((s / F32(d)).astype(np.float64) + eps).astype(F32)


class ApproxRsqrt(TextbookFloat32):
    """A GPU-like rsqrt: the correct float32 n moved by up to 2 ulps (fixed pseudo-random)."""

    def __init__(self, order="sequential", plain=False):
        super().__init__(order)
        self.id += "-approx-rsqrt"
        self.rng = np.random.default_rng(7)
        if plain:
            self.capabilities = PLAIN_CAPS

    def rsqrt(self, q):
        n = super().rsqrt(q)
        k = self.rng.integers(-2, 3, size=n.shape)
        return (n.astype(np.float64) + k * np.spacing(n).astype(np.float64)).astype(F32)


def test_mean_and_eps_variants_identified():
    fp = fingerprint(ReciprocalMean())
    assert (fp["mean"], fp["eps_add"]) == ("s*(1/d)", "float32"), describe(fp)
    fp = fingerprint(Float64Eps())
    assert (fp["mean"], fp["eps_add"]) == ("s/d", "float64"), describe(fp)


@pytest.mark.parametrize("order", ["sequential", "pairwise", "reversed", "blocked", "torch"])
def test_inexact_rsqrt_does_not_blur_cancellation_mode(order):
    fp = fingerprint(ApproxRsqrt(order))
    assert _summary(fp) == EXPECTED[order], describe(fp)
    assert (fp["mean"], fp["eps_add"]) == ("s/d", "float32"), describe(fp)
    for name, ev in fp["evidence"]["weight_order"].items():
        # the margin keeps every counted element insensitive to n within a few ulps
        assert ev["neither"] == 0 and ev["agreeing_mismatched"].startswith("0/"), (name, ev)


class ScaledN(TextbookFloat32):
    """n off by a relative 2**-19 (about 8-16 float32 ulps), inside the weight probe's margin."""

    def __init__(self, order, factor):
        super().__init__(order)
        self.factor = factor

    def rsqrt(self, q):
        return (super().rsqrt(q).astype(np.float64) * self.factor).astype(F32)


@pytest.mark.parametrize("order", ["sequential", "torch"])
@pytest.mark.parametrize("factor", [1 - 2.0 ** -19, 1 + 2.0 ** -19])
def test_weight_order_insensitive_to_n_within_margin(order, factor):
    fp = fingerprint(ScaledN(order, factor))
    assert fp["weight_order"] == EXPECTED[order][0], describe(fp)
    for name, ev in fp["evidence"]["weight_order"].items():
        assert ev["neither"] == 0 and ev["agreeing_mismatched"].startswith("0/"), (name, ev)


@pytest.mark.parametrize("order", ["sequential", "pairwise", "reversed", "blocked"])
def test_inexact_rsqrt_plain_mode_never_misnamed(order):
    fp = fingerprint(ApproxRsqrt(order, plain=True))
    label = EXPECTED[order][1]
    assert fp["reduction"] == label or label in fp["evidence"]["reduction"].get(
        "candidates", []), describe(fp)


class ShuffledOrder(SumOrder):
    """Sums in a fixed random permutation of the row: outside every modelled order."""

    def __init__(self):
        perm = np.random.default_rng(3).permutation(fpm.D_REDUCE)
        super().__init__("shuffled", lambda sq: np.cumsum(sq[..., perm] if sq.shape[-1] ==
                                                          fpm.D_REDUCE else sq, axis=-1,
                                                          dtype=F32)[..., -1])


def test_unmodelled_order_is_other_not_misnamed():
    fp = fingerprint(ShuffledOrder())
    assert fp["reduction"] == "other", describe(fp)
    assert "no modelled order" in fp["evidence"]["reduction"]["reason"]


# ---- robustness ---------------------------------------------------------------------------


class ReturnsNaN(TextbookFloat32):
    def finish(self, y, x):
        return np.full_like(y, np.nan)


class ReturnsGarbage(TextbookFloat32):
    """Right shape and dtype, random values."""

    def finish(self, y, x):
        return np.random.default_rng(0).uniform(-1, 1, y.shape).astype(y.dtype)


class Float32Only(TextbookFloat32):
    capabilities = dataclasses.replace(TextbookFloat32.capabilities, dtypes=("float32",))


class Float16Only(TextbookFloat32):
    capabilities = dataclasses.replace(TextbookFloat32.capabilities, dtypes=("float16",))


class Bare:
    """Duck-typed: an rms_norm and no capabilities at all (defaults: float32 only)."""

    def rms_norm(self, x, weight, eps, layout=None):
        return TextbookFloat32().rms_norm(x, weight, eps)


def _all_reasons(fp):
    ev = fp["evidence"]
    return [v.get("reason", "") for v in ev["weight_order"].values()] + [
        ev["reduction"].get("reason", ""), ev["mean_eps"].get("reason", "")]


@pytest.mark.parametrize("subject, words", [
    (Raises(), "raised RuntimeError"),
    (ReturnsList(), "returned list"),
    (FlattenedOutput(), "returned shape"),
    (ReturnsNaN(), "non-finite"),
])
def test_broken_implementations_are_inconclusive_with_reason(subject, words):
    fp = fingerprint(subject)
    _check_serialisable(fp)
    assert (fp["weight_order"], fp["reduction"], fp["mean"]) == ("inconclusive",) * 3
    assert all(words in r for r in _all_reasons(fp)), _all_reasons(fp)


def test_garbage_values_are_not_named():
    fp = fingerprint(ReturnsGarbage())
    _check_serialisable(fp)
    assert fp["weight_order"] not in ("round-then-weight", "weight-then-round"), describe(fp)
    assert fp["reduction"] == "inconclusive", describe(fp)
    assert "not x times one per-row scale" in fp["evidence"]["reduction"]["reason"]


def test_undeclared_dtypes_are_skipped_with_reason():
    fp = fingerprint(Float32Only())
    assert fp["weight_order"] == "inconclusive"
    assert all("not declared" in v["reason"] for v in fp["evidence"]["weight_order"].values())
    assert fp["reduction"] == "sequential"
    fp = fingerprint(Float16Only())
    assert fp["weight_order"] == "round-then-weight"
    assert fp["evidence"]["weight_order"]["bfloat16"]["reason"] == "bfloat16 is not declared"
    assert fp["reduction"] == "inconclusive"
    assert fp["evidence"]["reduction"]["reason"] == "float32 is not declared"


def test_duck_typed_adapter_without_capabilities():
    fp = fingerprint(Bare())
    _check_serialisable(fp)
    assert fp["weight_order"] == "inconclusive"
    assert fp["reduction"] == "sequential"          # plain mode: nonpositive_eps not declared


def test_cheap_for_numpy_implementations():
    fp = fingerprint(TextbookFloat32("blocked"))
    assert fp["seconds"] < 1.0, f"fingerprint took {fp['seconds']} s (budget 1 s)"


CRASH_FIXTURES = pathlib.Path(__file__).resolve().parent / "plugin_fixtures_crash"


@pytest.mark.parametrize("attr, words", [("segv", "SIGSEGV"), ("hang", "did not return")])
def test_supervised_crash_or_hang_stops_the_probes(attr, words, monkeypatch):
    """Through the supervisor (conformance/supervisor.py), a crash or hang is reported and the
    remaining probes are not run (one crash, one timeout), never an exception."""
    from rmsnorm_conformance.conformance.supervisor import Supervised

    monkeypatch.syspath_prepend(str(CRASH_FIXTURES))
    adapters = importlib.import_module("fake_crashers.adapters")
    sup = Supervised(getattr(adapters, attr), f"fake_crashers.adapters:{attr}", timeout=2)
    sup.capabilities = Capabilities(dtypes=("float32",), nonpositive_eps=True)
    try:
        fp = fingerprint(sup)
    finally:
        sup.close()
    _check_serialisable(fp)
    assert fp["reduction"] == "inconclusive" and fp["mean"] == "inconclusive"
    reason = fp["evidence"]["reduction"]["reason"]
    assert "process died" in reason and words in reason, reason
    assert fp["evidence"]["mean_eps"]["reason"].startswith("not run: "), fp["evidence"]


# ---- the probe design --------------------------------------------------------------------


def test_cancellation_mode_separates_every_pair_of_candidates():
    """The property behind 'many ulps, not one': with eps = -4080 every two modelled orders
    predict n more than twice the tolerance apart on at least one row, so no observation
    within tolerance of one is within tolerance of another."""
    x = fpm.reduction_rows()
    preds = {o.label: fpm._predict_n(o, x * x, fpm.EPS_CANCEL)["1/sqrt"]
             for o in fpm.candidate_orders(x.shape[-1])}
    close = [(a, b) for a, b in itertools.combinations(preds, 2)
             if fpm._ulps(preds[a], preds[b]).max() <= 2 * fpm.TOL_ULPS]
    assert not close, f"indistinguishable candidate orders: {close}"


def test_mean_eps_probe_separates_every_pair_of_variants():
    x, sums = fpm.mean_eps_rows()
    eps = fpm.mean_eps_eps()
    preds = {k: fpm._rsqrt(q(sums, x.shape[-1], eps))["1/sqrt"]
             for k, q in fpm.MEAN_VARIANTS.items()}
    close = [(a, b) for a, b in itertools.combinations(preds, 2)
             if fpm._ulps(preds[a], preds[b]).max() <= 2 * fpm.TOL_ULPS]
    assert not close, f"indistinguishable (mean, eps) variants: {close}"


def test_weight_probe_has_many_deciding_elements():
    fp = fingerprint(TextbookFloat32())
    for name in ("float16", "bfloat16"):
        ev = fp["evidence"]["weight_order"][name]
        assert ev["deciding"] >= 100 and ev["neither"] == 0, ev


@pytest.mark.parametrize("n", [1, 5, 8, 9, 100, 128, 129, 1000, 4096, 5003])
def test_numpy_pairwise_model_is_numpys_sum(n):
    rng = np.random.default_rng(n)
    a = (rng.standard_normal((16, n)) ** 2 * 10.0 ** rng.uniform(-4, 4, (16, n))).astype(F32)
    assert np.array_equal(fpm.numpy_pairwise(a), np.sum(a, axis=-1, dtype=F32))


# ---- real subjects -----------------------------------------------------------------------


def test_mlx_cpu():
    """MLX's CPU fallback (mlx/fast.cpp): mean(square(x)) = sum * float32(1/d), the sum by the
    generic CPU reduce, whose SIMD width is 1 on Linux (one accumulator: left to right);
    astype(out) then multiply by the weight in the output type."""
    pytest.importorskip("mlx.core")
    from rmsnorm_conformance.impl.mlx_fast import cpu

    fp = fingerprint(cpu)
    _check_serialisable(fp)
    assert fp["weight_order"] == "round-then-weight", describe(fp)
    assert (fp["mean"], fp["eps_add"]) == ("s*(1/d)", "float32"), describe(fp)
    if sys.platform == "linux":
        assert fp["reduction"] == "sequential", describe(fp)


def _torch_adapter():
    torch = pytest.importorskip("torch")

    def to_torch(a):
        if a.dtype == ml_dtypes.bfloat16:
            return torch.from_numpy(a.view(np.uint16).copy()).view(torch.bfloat16)
        return torch.from_numpy(np.ascontiguousarray(a))

    def to_numpy(t):
        if t.dtype == torch.bfloat16:
            return t.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()

    class TorchFunctional(Implementation):
        id = "torch-functional-cpu"
        capabilities = Capabilities(dtypes=("float32", "float16", "bfloat16"),
                                    nonpositive_eps=True)

        def rms_norm(self, x, weight, eps, layout=None):
            w = None if weight is None else to_torch(weight)
            return to_numpy(torch.nn.functional.rms_norm(to_torch(x), (x.shape[-1],), w, eps))

    return TorchFunctional()


def test_torch_functional_cpu():
    """PyTorch's rms_norm on CPU: weight applied in float32 before one rounding; the mean is
    sum / d with ATen's cascade sum (SIMD lanes x 4 accumulators, chunked)."""
    fp = fingerprint(_torch_adapter())
    _check_serialisable(fp)
    assert fp["weight_order"] == "weight-then-round", describe(fp)
    assert fp["reduction_family"] == "cascade", describe(fp)
    assert (fp["mean"], fp["eps_add"]) == ("s/d", "float32"), describe(fp)


def test_torch_cascade_model_is_torchs_sum():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    fits = set()
    for vec in (4, 8, 16):
        ok = True
        for n in (64, 4096, 5000):
            a = (rng.standard_normal((8, n)) ** 2 * 10.0 ** rng.uniform(-4, 4, (8, n)))
            a = a.astype(F32)
            ok &= np.array_equal(fpm.torch_cascade(a, vec), torch.from_numpy(a).sum(-1).numpy())
        if ok:
            fits.add(vec)
    assert len(fits) == 1, f"torch.sum matches the cascade model for vector widths {fits}"
