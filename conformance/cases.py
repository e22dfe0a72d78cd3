"""A test case (x, weight, eps) and how to print it so that anyone can reproduce it."""

from __future__ import annotations

import base64
import dataclasses

import numpy as np

from rmsnorm_conformance.protocol import DTYPES

#: Arrays with at most this many elements are printed in full (exact bytes).
PRINT_LIMIT = 64


@dataclasses.dataclass
class Case:
    x: np.ndarray
    weight: np.ndarray | None
    eps: float
    recipe: str = "explicit"   # how a bulk-drawn x was made (seed and profile), for the repro
    extras: dict = dataclasses.field(default_factory=dict)   # cotangents, tangents (GRAD)

    @property
    def d(self) -> int:
        return self.x.shape[-1]

    def describe(self) -> str:
        w = "None" if self.weight is None else f"{self.weight.dtype.name}{list(self.weight.shape)}"
        extra = "".join(f"  {k}: {v.dtype.name}" for k, v in self.extras.items())
        return (f"x: {self.x.dtype.name}{list(self.x.shape)}  weight: {w}  eps: {self.eps!r}"
                f"{extra}  ({self.recipe})")

    def __repr__(self) -> str:
        if self.x.size <= PRINT_LIMIT:
            return f"Case(x={self.x!r}, weight={self.weight!r}, eps={self.eps!r})"
        return f"Case({self.describe()})"

    def repro(self) -> str:
        """Python that rebuilds this exact case."""
        extras = ", ".join(f"{k!r}: {encode(v)}" for k, v in self.extras.items())
        return (f"from rmsnorm_conformance.conformance.cases import Case, decode\n"
                f"case = Case(x={encode(self.x)}, weight={encode(self.weight)}, "
                f"eps={self.eps!r}" + (f", extras={{{extras}}})" if extras else ")"))


def encode(a: np.ndarray | None) -> str:
    if a is None:
        return "None"
    blob = base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()
    return f"decode({a.dtype.name!r}, {tuple(a.shape)!r}, {blob!r})"


def decode(dtype: str, shape: tuple, blob: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(blob), dtype=DTYPES[dtype]).reshape(shape).copy()


def save(case: Case, path) -> None:
    """Write the exact case to an .npz (x, weight, eps) for arrays too big to print."""
    arrays = {"x": case.x, "eps": np.float64(case.eps), **case.extras}
    if case.weight is not None:
        arrays["weight"] = case.weight
    # bfloat16 has no stable npz encoding: store the raw bits with the dtype name.
    np.savez(path, **{k: (v.view(np.uint16) if v.dtype.name == "bfloat16" else v)
                      for k, v in arrays.items()},
             dtypes=np.array([f"{k}:{v.dtype.name}" for k, v in arrays.items()]))


def load(path) -> Case:
    z = np.load(path)
    dt = dict(s.split(":") for s in z["dtypes"])
    get = lambda k: z[k].view(DTYPES["bfloat16"]) if dt.get(k) == "bfloat16" else z[k]
    extras = {k: get(k) for k in dt if k not in ("x", "weight", "eps")}
    return Case(x=get("x"), weight=get("weight") if "weight" in dt else None,
                eps=float(z["eps"]), recipe=f"loaded from {path}", extras=extras)


def scaled_by_seed(case: Case, seed: int) -> tuple[Case, Case, int]:
    """``scaled_pair`` with c = 2**k, |k| <= 4, chosen by a plan's seed: (case', scaled, k)."""
    k = seed % 9 - 4
    return (*scaled_pair(case, k), k)


def scaled_pair(case: Case, k: int) -> tuple[Case, Case]:
    """(case', case' scaled): x * 2**k with eps * 4**k, extras kept. case' zeroes elements below
    16 * tiny and clips at max / 16 so that the scaling by 2**k (|k| <= 4) is exact."""
    from rmsnorm_conformance.conformance.dtypes import info

    fi = info(case.x.dtype)
    x = case.x.astype(np.float64)
    x[np.abs(x) < fi.tiny * 16] = 0
    base = Case(np.clip(x, -fi.max / 16, fi.max / 16).astype(case.x.dtype), case.weight,
                case.eps, case.recipe + "; |x| clipped to [tiny*16, max/16]", dict(case.extras))
    scaled = Case(base.x * np.asarray(2.0 ** k, base.x.dtype), base.weight, base.eps * 4.0 ** k,
                  base.recipe + f"; x *= 2**{k}, eps *= 4**{k}", dict(base.extras))
    return base, scaled


def sequence_case(plans, built) -> Case:
    """The sequence as one Case to report: the first call's arrays, and a recipe that replays
    every call (``Plan.build`` is exact)."""
    first = built[0]
    recipe = ("replay: from rmsnorm_conformance.conformance.strategies import Plan; calls = [(c.x, c.weight, c.eps) "
              "for c in (p.build(impl.capabilities) for p in [" + ", ".join(map(repr, plans))
              + "])]")
    return Case(first.x, first.weight, first.eps, recipe, dict(first.extras))
