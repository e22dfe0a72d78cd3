"""Error-free transformations, double-double values and accurate row sums, vectorised in NumPy.

The building blocks of the reference's accurate gradients and of its float64 path (SPEC.md REF-3,
REF-4). Every function here is exact or returns a rigorous bound on its own error; the bounds are
derived in the docstrings, with ``U = 2**-53`` the unit roundoff of float64 and no underflow or
overflow (the callers check the ranges: ``TINY`` below).

References: T. J. Dekker, "A floating-point technique for extending the available precision"
(1971) for ``split`` / ``two_prod``; D. E. Knuth, TAOCP vol. 2, for ``two_sum``; S. M. Rump,
T. Ogita, S. Oishi, "Accurate floating-point summation part I: faithful rounding", SIAM J. Sci.
Comput. 31(1), 2008, Algorithm 3.2 (ExtractVector) and Lemma 3.3, for ``row_sum``.
"""

from __future__ import annotations

import math

import numpy as np

U = 2.0 ** -53
#: Below this magnitude a product's rounding error may not be representable (two_prod inexact) and
#: an extraction's grid may fall below the subnormal spacing: results built from smaller values
#: are not certified by the vectorised paths (the callers send them to the exact path).
TINY = 2.0 ** -900
#: Above this magnitude Dekker's split may overflow (it multiplies by 2**27 + 1).
HUGE = 2.0 ** 900
_SPLITTER = 134217729.0  # 2**27 + 1


def gamma(k, u=U):
    """Higham's gamma_k = k u / (1 - k u)."""
    if isinstance(k, int):
        return k * u / (1.0 - k * u)
    k = np.asarray(k, dtype=np.float64)
    return k * u / (1.0 - k * u)


def two_sum(a, b):
    """s + e == a + b exactly, s = fl(a + b) (Knuth; any magnitudes, no overflow)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def fast_two_sum(a, b):
    """s + e == a + b exactly when |a| >= |b| (or a == 0)."""
    s = a + b
    e = b - (s - a)
    return s, e


def split(a):
    """a == hi + lo exactly, hi and lo with at most 26 significant bits each (Veltkamp)."""
    c = _SPLITTER * a
    hi = c - (c - a)
    return hi, a - hi


def two_prod(a, b):
    """p + e == a * b exactly, p = fl(a * b) (Dekker), for |a|, |b| < HUGE and |a b| >= TINY
    (or a b == 0)."""
    p = a * b
    ah, al = split(a)
    bh, bl = split(b)
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


def _pow2_above(m, shift=0):
    """2**(e + shift) for the power of two 2**e with m <= 2**e <= 2 m (from frexp: m = f 2**e,
    f in [0.5, 1)); 2**shift for m == 0."""
    e = np.frexp(m)[1]
    if shift:
        e += shift
    return np.ldexp(1.0, e)


class DD:
    """A double-double value (array) hi + lo with a rigorous absolute error bound ``err`` on
    |hi + lo - exact|. Arithmetic below propagates the bound and charges its own rounding
    (Joldes, Muller, Popescu, "Tight and rigorous error bounds for basic building blocks of
    double-word arithmetic", ACM TOMS 2017, give the algorithms' worst cases; the charges here
    are above those of the simple forms used):
      addition: two_sum of the highs (exact), the lows added to its error in two roundings, a
        final two_sum (exact): at most U (|lo1 + lo2| + |e + lo1 + lo2|) <= 3 U**2 (|hi1| + |hi2|)
        (1 + 4U): charged 2**-103 (|hi1| + |hi2|);
      product: two_prod of the highs (exact), hi1 lo2 + lo1 hi2 in three roundings, lo1 lo2
        dropped: at most 5 U**2 |hi1 hi2| (1 + 4U): charged 2**-103 |hi1 hi2|;
      quotient: 2**-101 |q| (the remainder's four roundings and the second quotient's)."""

    __slots__ = ("hi", "lo", "err")
    ROUND = 2.0 ** -103
    ROUND_DIV = 2.0 ** -101

    def __init__(self, hi, lo=None, err=None):
        self.hi = hi if isinstance(hi, np.ndarray) else np.asarray(hi, dtype=np.float64)
        # 0.0 (a scalar) where absent: broadcasting makes it an array when one is needed
        self.lo = 0.0 if lo is None else lo
        self.err = 0.0 if err is None else err

    @classmethod
    def exact_sum(cls, a, b):
        s, e = two_sum(a, b)
        return cls(s, e)

    @classmethod
    def exact_prod(cls, a, b):
        p, e = two_prod(a, b)
        return cls(*fast_two_sum(p, e))

    def mag(self):
        """An upper bound of |exact value|."""
        return np.abs(self.hi) + np.abs(self.lo) + self.err

    def __neg__(self):
        return DD(-self.hi, -self.lo, self.err)

    def __add__(self, other):
        other = other if isinstance(other, DD) else DD(other)
        s, e = two_sum(self.hi, other.hi)
        e = e + (self.lo + other.lo)
        hi, lo = two_sum(s, e)
        err = self.err + other.err + self.ROUND * (np.abs(self.hi) + np.abs(other.hi))
        return DD(hi, lo, err)

    def __sub__(self, other):
        return self + (-(other if isinstance(other, DD) else DD(other)))

    def __mul__(self, other):
        other = other if isinstance(other, DD) else DD(other)
        p, e = two_prod(self.hi, other.hi)
        e = e + (self.hi * other.lo + self.lo * other.hi)
        hi, lo = fast_two_sum(p, e)
        err = (self.mag() * other.err + other.mag() * self.err
               + self.ROUND * np.abs(self.hi * other.hi))
        return DD(hi, lo, err)

    def __truediv__(self, other):
        other = other if isinstance(other, DD) else DD(other)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = self.hi / other.hi
            p, e = two_prod(q, other.hi)
            rem = ((self.hi - p) - e) + (self.lo - q * other.lo)
            ql = rem / other.hi
            hi, lo = fast_two_sum(q, ql)
            # |exact quotient of the dd values - (hi + lo)| <= ROUND |q|; the operands' errors:
            # |X/Y - X'/Y'| <= (eX + |X'/Y'| eY) / (|Y'| - eY)
            den = np.abs(other.hi) - np.abs(other.lo) - other.err
            err = (self.ROUND_DIV * np.abs(q)
                   + (self.err + (np.abs(q) * (1 + 4 * U)) * other.err) / den)
            err = np.where(den > 0, err, np.inf)
        return DD(hi, lo, err)

    def rounded(self):
        """The float64 nearest hi + lo (hi itself, the pair being normalised), with the bound
        of its own error |hi - exact| <= |lo| + err."""
        return self.hi, np.abs(self.lo) + self.err


#: Elementwise work is done in blocks of at most CHUNK elements: NumPy temporaries of a few
#: hundred KB are reused by the allocator, larger ones are page-faulted in afresh on each
#: allocation (measured: 9x slower on 1 MB arrays).
CHUNK = 16384


def col_blocks(d: int):
    """Slices of the last axis, each at most CHUNK long."""
    return [slice(i, min(i + CHUNK, d)) for i in range(0, d, CHUNK)] or [slice(0, 0)]


def row_blocks(rows: int, d: int):
    """Slices of the rows, each holding at most CHUNK elements (one row when d > CHUNK)."""
    step = max(1, CHUNK // max(d, 1))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def _sum(t):
    """Sum along the last axis (keepdims). Short rows through einsum (NumPy's reductions along
    a short last axis are 4x slower; BLAS would bring its thread pool in). Every use below is
    either an exact sum (any order is exact) or bounded by gamma_{n-1} sum|t|, which holds for any
    order and tree."""
    if t.shape[-1] >= 128:
        return np.sum(t, axis=-1, keepdims=True)
    if t.shape[-1] == 1:
        return t.copy()
    return np.einsum("...j->...", t)[..., None]


#: Sub-block length of the extraction in ``block_sum``.
SUB = 256
_M_SUB = math.ceil(math.log2(SUB + 2))       # 2**9 >= 258


def _m_for(m: int) -> int:
    """The least M with 2**M >= m + 2 (ExtractVector's condition for m terms)."""
    return max(1, math.ceil(math.log2(m + 2)))


def block_sum(t, passes: int = 2) -> DD:
    """The sums of the rows of a 2-D array ``t`` of exact float64 terms (t is overwritten), as a
    DD (rows, 1) with a rigorous error bound.

    ExtractVector (Rump, Ogita, Oishi 2008, Lemma 3.3), applied to each sub-block of m <= SUB
    consecutive terms: with 2**M >= m + 2 and sigma = 2**M 2**e, 2**e >= max|t_j| over the
    sub-block (2**e is taken >= the floating sum of the |t_j|, which is never below their maximum:
    a floating sum of non-negative terms never decreases), q_j = fl(fl(sigma + t_j) - sigma) is a
    multiple of U sigma with |q_j| <= (2**-M + U) sigma, so every partial sum of the sub-block's
    q_j is a multiple of U sigma below sigma: tau = sum(q_j) is exact (in any order), and
    r_j = t_j - q_j is exact with |r_j| <= U sigma <= 2**(M+1) U sum_sub|t|. ``passes`` extractions
    (each on the previous remainders) leave remainders summed in floating point per sub-block,
    then across the k sub-blocks: error <= (gamma_{m-1} + gamma_{k-1}(1 + gamma_m)) m U
    sum(sigma_last). One pass: about 2**-79 sum|t| for n = 65536 (2**-89 for n = 33); two passes:
    below 2**-110 sum|t|. The exact taus (passes * k per row) are summed by the same procedure,
    recursively, two of them by two_sum. The parts are combined with DD additions. Requires
    |t_j| < 2**1000 and terms on a grid above the subnormal range (callers check: TINY)."""
    rows, n = t.shape
    if n == 0:
        return DD(np.zeros((rows, 1)))
    if n == 1:
        return DD(t.copy())
    if n == 2:
        hi, lo = two_sum(t[:, :1], t[:, 1:])
        return DD(hi, lo)
    m = min(n, SUB)
    k = -(-n // m)
    if k * m != n:
        padded = np.zeros((rows, k * m))
        padded[:, :n] = t
        t = padded
    t3 = t.reshape(rows, k, m)
    shift = _m_for(m)
    taus = []
    sigma = None
    for _ in range(passes):
        norm = _sum(np.abs(t3))                      # (rows, k, 1)
        sigma = _pow2_above(norm, shift)
        q = t3 + sigma
        q -= sigma
        taus.append(_sum(q)[..., 0])                 # (rows, k): exact sub-block sums
        t3 -= q
    rho = np.sum(_sum(t3)[..., 0], axis=-1, keepdims=True)
    err = (float(gamma(m - 1) + gamma(k - 1) * (1 + gamma(m))) * m * U
           * np.sum(sigma[..., 0], axis=-1, keepdims=True))
    return block_sum(np.concatenate(taus, axis=1), passes) + DD(rho, None, err)


def extract_rows(t, nonneg=0):
    """One extraction of the rows of a 2-D ``t`` (overwritten): (tau, rho, err) with tau
    (rows, k) exact partial sums, rho (rows, 1) the floating sum of the remainders and err
    (rows, 1) the bound on rho's error; the row's sum is exactly sum(tau) + (rho +- err). The
    first ``nonneg`` rows hold non-negative terms (their 1-norm needs no abs).

    Rows of n <= SUB terms: one sigma per row from the row's 1-norm (2**M >= n + 2), as in
    ``block_sum``. Longer rows: one sigma per row, 2**M_SUB 2**e with 2**e >= max|t_j| (M_SUB for
    SUB + 2 terms), and the q_j summed per sub-block of SUB consecutive terms (each such sum is
    exact, the lemma's condition being on the terms summed), the remainders per sub-block then
    across: error <= (gamma_{SUB-1} + gamma_{k-1}(1 + gamma_SUB)) n U sigma, about 2**-71 of the
    largest term at n = 65536 (cheaper than block_sum's sigma per sub-block, by half)."""
    rows, n = t.shape
    if n <= SUB:
        if nonneg:
            norm = np.empty((rows, 1))
            norm[:nonneg] = _sum(t[:nonneg])
            norm[nonneg:] = _sum(np.abs(t[nonneg:]))
        else:
            norm = _sum(np.abs(t))
        sigma = _pow2_above(norm, _m_for(n))
        q = t + sigma
        q -= sigma
        tau = _sum(q)
        t -= q
        rho = _sum(t)
        err = float(gamma(n - 1)) * n * U * sigma
        return tau, rho, err
    if nonneg:
        mx = np.empty((rows, 1))
        mx[:nonneg] = np.max(t[:nonneg], axis=1, keepdims=True)
        mx[nonneg:] = np.max(np.abs(t[nonneg:]), axis=1, keepdims=True)
    else:
        mx = np.max(np.abs(t), axis=1, keepdims=True)
    sigma = _pow2_above(mx, _M_SUB)
    q = t + sigma
    q -= sigma
    starts = np.arange(0, n, SUB)
    tau = np.add.reduceat(q, starts, axis=1)
    t -= q
    rho = np.sum(np.add.reduceat(t, starts, axis=1), axis=1, keepdims=True)
    k = starts.size
    err = float(gamma(SUB - 1) + gamma(k - 1) * (1 + gamma(SUB))) * n * U * sigma
    return tau, rho, err


def finish_sum(taus, rho, err) -> DD:
    """The DD of sum(taus) + rho (+- err) (taus: exact floats (rows, K); see extract_rows)."""
    if taus.shape[1] == 1:
        hi, lo = two_sum(taus, rho)
        return DD(hi, lo, err)
    return block_sum(taus) + DD(rho, None, err)


def block_sum_cols(t) -> DD:
    """``block_sum`` of each column of a 2-D ``t``, as a DD (1, cols)."""
    s = block_sum(np.ascontiguousarray(t.T))
    return DD(s.hi.T, np.transpose(s.lo) if np.ndim(s.lo) else s.lo,
              np.transpose(s.err) if np.ndim(s.err) else s.err)


def row_sums(term_fn, shape, count: int, axis: int = -1, passes: int = 2):
    """``count`` sums along ``axis`` (-1: each row's; 0: each column's) of the exact float64
    terms ``term_fn(rs, cs)`` returns (a list of ``count`` new float64 arrays, overwritten here)
    for the block of rows rs and columns cs of a 2-D ``shape``, block by block (at most CHUNK
    elements each), each as a DD (rows, 1) or (1, cols) with a rigorous error bound
    (``block_sum``; the blocks' DDs are added)."""
    rows, d = shape
    if axis == -1:
        out = [DD(*(np.zeros((rows, 1)) for _ in range(3))) for _ in range(count)]
        for rs in row_blocks(rows, d):
            acc = None
            for cs in col_blocks(d):
                parts = [block_sum(t, passes) for t in term_fn(rs, cs)]
                acc = parts if acc is None else [a + b for a, b in zip(acc, parts)]
            for o, a in zip(out, acc):
                o.hi[rs], o.lo[rs], o.err[rs] = a.hi, a.lo, a.err   # (scalars broadcast)
        return out
    if rows * d <= CHUNK:
        return [block_sum_cols(t) for t in term_fn(slice(None), slice(None))]
    # column sums: column blocks outside, row blocks inside
    out = [DD(*(np.zeros((1, d)) for _ in range(3))) for _ in range(count)]
    for cs in col_blocks(d):
        width = cs.stop - cs.start
        acc = None
        step = max(1, CHUNK // max(width, 1))
        for r0 in range(0, rows, step):
            rs = slice(r0, min(r0 + step, rows))
            parts = [block_sum_cols(t) for t in term_fn(rs, cs)]
            acc = parts if acc is None else [a + b for a, b in zip(acc, parts)]
        for o, a in zip(out, acc):
            for mine, theirs in ((o.hi, a.hi), (o.lo, a.lo), (o.err, a.err)):
                mine[0, cs] = np.broadcast_to(theirs, a.hi.shape)[0]
    return out


def row_sum(term_fn, shape=None, axis: int = -1, passes: int = 2) -> DD:
    """One sum of ``row_sums``; ``term_fn`` may also be a 2-D array (shape is then its own)."""
    if not callable(term_fn):
        arr = np.asarray(term_fn, dtype=np.float64)
        shape = arr.shape
        return row_sums(lambda rs, cs: [arr[rs, cs].copy()], shape, 1, axis, passes)[0]
    return row_sums(lambda rs, cs: [term_fn(rs, cs)], shape, 1, axis, passes)[0]


def bracket(exact_terms, rounded_terms=(), rounded_err=0.0, passes: int = 2):
    """The elementwise sum of a few arrays: ``exact_terms`` exact, ``rounded_terms`` with an
    absolute error of at most ``rounded_err`` (an array or scalar) in all. Two extractions over
    the k terms (as in block_sum, along a new leading axis) make the sum exact up to the floating
    sum of k remainders of at most U sigma2 each, sigma2 <= 2**(M+1) k U sigma1, sigma1 <=
    2**(M+1) max_k |term_k|: the result is a DD with error <= gamma_{k-1} k U sigma2 +
    rounded_err, about 2**-140 of the largest term for k <= 16 (``passes=1``: gamma_{k-1} k U
    sigma1, about 2**-95 of it, enough for results stated to 8 U). Returns it and
    max_k |term_k|."""
    terms = list(exact_terms) + list(rounded_terms)
    k = len(terms)
    stack = np.stack(np.broadcast_arrays(*terms))
    shift = _m_for(k)
    mx = np.max(np.abs(stack), axis=0)
    taus = []
    sigma = None
    for _ in range(passes):
        norm = np.sum(np.abs(stack), axis=0)
        sigma = _pow2_above(norm, shift)
        q = stack + sigma
        q -= sigma
        taus.append(np.sum(q, axis=0))
        stack -= q
    rho = np.sum(stack, axis=0)
    hi, lo = two_sum(taus[0], taus[1]) if passes == 2 else (taus[0], 0.0)
    out = DD(hi, lo) + DD(rho, None, float(gamma(k - 1)) * k * U * sigma + rounded_err)
    return out, mx


# ---------------------------------------------------------------------------------------------
# Exact arithmetic in Python integers (the exact path: rare elements the vectorised paths do not
# certify, and the tests' oracle)

def int_parts(values):
    """(m, e) Python ints with values[i] == m[i] * 2**e[i] exactly (finite float64 values)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    f, e = np.frexp(v)
    m = np.ldexp(f, 53).astype(np.int64)
    return [int(a) for a in m], [int(b) - 53 for b in e]


def _exact_sum_floats(t):
    """The exact sum of a 1-D array of finite float64 values, as a Fraction: extraction in
    sub-blocks (block_sum's step) repeated until every remainder is zero, then the few exact
    partial sums added as integers. Values on a grid below 2**-1000 are added as integers
    directly (an extraction's grid could fall below the subnormal range there)."""
    from fractions import Fraction

    t = np.array(t, dtype=np.float64).ravel()
    parts = []
    while t.size > 2 * SUB:
        m = SUB
        k = -(-t.size // m)
        padded = np.zeros(k * m)
        padded[:t.size] = t
        t3 = padded.reshape(k, m)
        norm = np.sum(np.abs(t3), axis=1, keepdims=True)
        sigma = _pow2_above(norm, _m_for(m))
        if np.any((sigma < 2.0 ** -1000) & (norm > 0)):
            break
        q = t3 + sigma
        q -= sigma
        parts.append(np.sum(q, axis=1))
        t3 -= q
        rest = t3.ravel()
        t = rest[rest != 0]
        if parts[-1].size > 2 * SUB:                 # many exact partial sums: reduce them too
            t = np.concatenate([t, parts.pop()])
    vals = np.concatenate(parts + [t]) if parts else t
    vals = vals[vals != 0]
    if vals.size == 0:
        return Fraction(0)
    ms, es = int_parts(vals)
    lo = min(es)
    total = sum(mm << (ee - lo) for mm, ee in zip(ms, es))
    return Fraction(total) * Fraction(2) ** lo if lo >= 0 else Fraction(total, 1 << -lo)


def exact_sum_of_products(*factors):
    """sum_i prod_k factors[k][i] exactly, as a Fraction (float64 arrays of equal length, one
    to three factors). Vectorised where every non-zero factor lies in [2**-250, 2**250] (the
    products' two_prod expansions are then exact), in Python integers otherwise."""
    from fractions import Fraction

    arrs = [np.asarray(f, dtype=np.float64).ravel() for f in factors]
    mags = [np.abs(a) for a in arrs]
    vector_ok = len(arrs) <= 3 and all(
        np.all((m == 0) | ((m >= 2.0 ** -250) & (m <= 2.0 ** 250))) for m in mags)
    if vector_ok and arrs[0].size > 64:
        terms = [arrs[0]]
        for a in arrs[1:]:
            new = []
            for t in terms:
                p, e = two_prod(t, a)
                new += [p, e]
            terms = new
        return _exact_sum_floats(np.concatenate(terms))
    parts = [int_parts(f) for f in arrs]
    n = len(parts[0][0])
    if n == 0:
        return Fraction(0)
    ms = [1] * n
    es = [0] * n
    for m, e in parts:
        ms = [a * b for a, b in zip(ms, m)]
        es = [a + b for a, b in zip(es, e)]
    lo = min(es)
    total = sum(m << (e - lo) for m, e in zip(ms, es))
    return Fraction(total) * Fraction(2) ** lo if lo >= 0 else Fraction(total, 1 << -lo)
