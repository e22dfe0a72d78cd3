"""Results of the reference and of the bounds, kept per process by the values of their arguments.

Every implementation is judged on the same examples (the default profile is derandomised, and
``profiles.same_examples_everywhere``), and the plugin runs all of one implementation's tests in
one worker, one implementation after another. What the suite computes from an example alone
(the float64 and double-double references, the error bounds, the example's arrays) is therefore
the same for every implementation a worker judges; ``by_value`` computes it once per worker
(SPEC.md REF-5).

A call is looked up by the function and the *values* of its arguments: an array by its dtype,
shape and a digest of its bytes (so equal values in different arrays share an entry, and an
array changed in place after the call misses), a float by its exact bits (0.0 and -0.0, or the
float32 and the float64 nearest to 1e-5, are different arguments), None, a dtype, a type, and
tuples, lists and dataclasses of these (a ``strategies.Plan``). A call with any other argument
is computed and not kept.

What is kept is returned read-only: its arrays (also inside a tuple or a dataclass) cannot be
written to, and a dataclass comes back as a fresh shallow copy, so a caller that reassigns a
field does not change what the next caller gets. The store holds at most ``budget()`` bytes of
arrays; when a result does not fit, the results that cost the least time to compute per byte
held are dropped for it, as long as they cost less per byte than it does (a double-double
reference of extreme values, about 30 ms per MB, stays before a float64 product, about 5 ms
per MB). What is kept depends on how long calls took, never what a call returns, so the verdict
of a run does not depend on it. ``RMSNORM_CONFORMANCE_MEMO_MB`` sets the budget in MiB (0 turns
the store off).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import heapq
import itertools
import os
import time

import numpy as np

#: Environment variable: the store's budget in MiB (0 turns the store off).
BUDGET_ENV = "RMSNORM_CONFORMANCE_MEMO_MB"
#: The budget where the environment does not set one: at most this many MiB per process, and
#: at most an eighth of the machine's memory shared among its cores (pytest -n auto's workers).
DEFAULT_MB = 256


class Store:
    """What is kept, and the counts of ``stats``."""

    def __init__(self):
        self.results: dict = {}      # key -> (result, bytes)
        self.heap: list = []         # (seconds per byte, order, key): the cheapest first
        self.order = itertools.count()
        self.held = 0                # bytes of arrays kept
        self.counts = {"hits": 0, "misses": 0, "unkept": 0}


#: This process's store (a self-test swaps in its own).
STORE = Store()


class _Unkeyable(Exception):
    pass


@functools.cache
def budget() -> int:
    """The store's size in bytes: ``RMSNORM_CONFORMANCE_MEMO_MB`` MiB if set, else the smaller
    of ``DEFAULT_MB`` MiB and an eighth of physical memory divided by the number of CPUs."""
    chosen = os.environ.get(BUDGET_ENV, "").strip()
    if chosen:
        try:
            mb = float(chosen)
        except ValueError:
            raise ValueError(f"{BUDGET_ENV}={chosen!r}: pass a number of MiB (0 turns the "
                             "store off)") from None
        return max(0, int(mb * 2 ** 20))
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):      # a platform without sysconf
        memory = 8 * 2 ** 30
    return min(DEFAULT_MB * 2 ** 20, memory // (8 * (os.cpu_count() or 1)))


def _key(value):
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, (np.ndarray, np.generic)):
        if value.dtype.hasobject:
            raise _Unkeyable("an array of Python objects")
        return (type(value).__name__, value.dtype.name, value.dtype.str, value.shape,
                hashlib.blake2b(value.tobytes(), digest_size=20).digest())
    if isinstance(value, np.dtype):
        return ("dtype", value.name, value.str)
    if isinstance(value, type):
        return ("type", value.__module__, value.__qualname__)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__,) + tuple(_key(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__module__, type(value).__qualname__) + tuple(
            (f.name, _key(getattr(value, f.name))) for f in dataclasses.fields(value))
    raise _Unkeyable(type(value).__name__)


def _arrays(values):
    for v in values:
        if isinstance(v, np.ndarray):
            yield v
        elif isinstance(v, tuple):
            yield from _arrays(v)


def _detached(value, inputs: list):
    """``value`` with every array that shares memory with an argument replaced by a copy: what
    the store keeps (and makes read-only) is its own, never the caller's."""
    if isinstance(value, np.ndarray):
        return value.copy() if any(np.may_share_memory(value, a) for a in inputs) else value
    if type(value) is tuple:
        return tuple(_detached(v, inputs) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changed = {}
        for f in dataclasses.fields(value):
            old = getattr(value, f.name)
            new = _detached(old, inputs)
            if new is not old:
                changed[f.name] = new
        return dataclasses.replace(value, **changed) if changed else value
    return value


def _frozen(value):
    """``value`` with its arrays made read-only (in place: they belong to the store)."""
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    elif isinstance(value, tuple):
        for v in value:
            _frozen(v)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _frozen(getattr(value, f.name))
    return value


def _nbytes(value) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(_nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    return 0


def _handed_out(value):
    """What a caller gets: a dataclass as a shallow copy (its fields reassignable by the
    caller alone), anything else as it is (read-only arrays, tuples)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return copy.copy(value)
    return value


def by_value(fn):
    """``fn`` with its results kept per process, looked up by the values of its arguments (see
    the module's docstring). ``fn`` must be a pure function of those values."""
    name = f"{fn.__module__}.{fn.__qualname__}"

    @functools.wraps(fn)
    def kept(*args, **kwargs):
        if budget() == 0:
            return fn(*args, **kwargs)
        store = STORE
        try:
            key = (name, _key(args), tuple(sorted((k, _key(v)) for k, v in kwargs.items())))
        except _Unkeyable:
            store.counts["unkept"] += 1
            return fn(*args, **kwargs)
        found = store.results.get(key)
        if found is not None:
            store.counts["hits"] += 1
            return _handed_out(found[0])
        store.counts["misses"] += 1
        start = time.perf_counter()
        # read-only whether kept or not, so that a caller writing into a result fails alike
        result = _frozen(_detached(fn(*args, **kwargs), list(_arrays((*args, *kwargs.values())))))
        _keep(store, key, result, time.perf_counter() - start)
        return _handed_out(result)

    kept.uncached = fn
    return kept


def _keep(store: Store, key, result, seconds: float) -> None:
    """Keep ``result`` if it fits in the budget once every kept result cheaper per byte than it
    is dropped; drop those."""
    size = _nbytes(result)
    density = seconds / max(size, 1)
    room = budget() - store.held
    if size > budget():
        return
    if size > room:
        dropped, freed = [], 0
        while size > room + freed and store.heap and store.heap[0][0] < density:
            entry = heapq.heappop(store.heap)
            dropped.append(entry)
            freed += store.results[entry[2]][1]
        if size > room + freed:      # not enough cheaper results to make room: keep them
            for entry in dropped:
                heapq.heappush(store.heap, entry)
            return
        for _, _, old in dropped:
            store.held -= store.results.pop(old)[1]
    store.results[key] = (result, size)
    heapq.heappush(store.heap, (density, next(store.order), key))
    store.held += size


def stats() -> dict:
    """Hits, misses, calls not kept (an argument it cannot key), bytes and entries kept."""
    return dict(STORE.counts, bytes=STORE.held, entries=len(STORE.results))
