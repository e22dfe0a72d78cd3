"""A test case and how to print it so that anyone can reproduce it, and read it back as data.

A ``Case`` holds what the implementation is given (x, the weight parameter, eps; cotangents and
tangents in ``extras``), the plain values a clause's judgement needs besides (``params``: a
scale exponent, a layout, the row that was poisoned), and, for implementations that apply
``weight_offset + parameter`` (capability ``weight_offset``), that offset. Every failure prints
the case's repro: Python that rebuilds it exactly and names the clause it failed,

    clause = 'ACC-1'
    from rmsnorm_conformance.conformance.cases import Case, decode
    case = Case(x=decode('float32', (3, 8), '...'), weight=decode(...), eps=1e-05)

or ``case = load('path.npz')`` for arrays too large to print. ``parse_repro`` reads such text
back as data, accepting only these constructs (it never executes it), for
``rmsnorm-conformance check``.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import json

import numpy as np

from rmsnorm_conformance.protocol import DTYPES

#: Arrays with at most this many elements are printed in full (exact bytes).
PRINT_LIMIT = 64
#: The module a repro imports from.
MODULE = __name__


@dataclasses.dataclass
class Case:
    x: np.ndarray
    weight: np.ndarray | None          # the weight parameter the implementation is given
    eps: float
    recipe: str = "explicit"   # how the arrays were made (the plan, seed and steps), for the repro
    extras: dict = dataclasses.field(default_factory=dict)   # cotangents, tangents (GRAD)
    params: dict = dataclasses.field(default_factory=dict)   # plain values a judgement needs
    weight_offset: float = 0.0         # capability weight_offset: the weight applied is
                                       # weight_offset + weight, formed in float32

    @property
    def d(self) -> int:
        return self.x.shape[-1]

    @property
    def applied(self) -> np.ndarray | None:
        """The weight the implementation applies: the parameter, or ``weight_offset +
        parameter`` formed in float32 (SPEC.md TOL, "Parametrised weights")."""
        if self.weight is None or not self.weight_offset:
            return self.weight
        return np.float32(self.weight_offset) + self.weight.astype(np.float32)

    def derived(self, note: str, **changes) -> "Case":
        """A copy with ``changes`` (any field), its recipe noting how it was derived."""
        return dataclasses.replace(self, recipe=f"{self.recipe}; {note}", **changes)

    def with_applied(self, applied: np.ndarray | None, note: str) -> "Case":
        """A copy whose applied weight is ``applied`` (the parameter ``applied - offset`` in the
        parameter's dtype: exact for the ones, zeros and small integers the suite uses)."""
        if applied is None or self.weight is None:
            return self.derived(note, weight=applied)
        dtype = self.weight.dtype
        param = (np.asarray(applied, np.float64) - self.weight_offset).astype(dtype)
        return self.derived(note, weight=param)

    def describe(self) -> str:
        w = "None" if self.weight is None else f"{self.weight.dtype.name}{list(self.weight.shape)}"
        extra = "".join(f"  {k}: {v.dtype.name}" for k, v in self.extras.items())
        offset = f"  weight_offset: {self.weight_offset!r}" if self.weight_offset else ""
        params = f"  params: {self.params!r}" if self.params else ""
        return (f"x: {self.x.dtype.name}{list(self.x.shape)}  weight: {w}  eps: {self.eps!r}"
                f"{extra}{offset}{params}  ({self.recipe})")

    def __repr__(self) -> str:
        if self.x.size <= PRINT_LIMIT:
            return f"Case(x={self.x!r}, weight={self.weight!r}, eps={self.eps!r})"
        return f"Case({self.describe()})"

    def repro(self, clause: str | None = None) -> str:
        """Python that rebuilds this exact case (and names ``clause``)."""
        args = [f"x={encode(self.x)}", f"weight={encode(self.weight)}", f"eps={self.eps!r}"]
        if self.extras:
            args.append("extras={" + ", ".join(f"{k!r}: {encode(v)}"
                                                for k, v in self.extras.items()) + "}")
        if self.params:
            args.append(f"params={self.params!r}")
        if self.weight_offset:
            args.append(f"weight_offset={self.weight_offset!r}")
        head = f"clause = {clause!r}\n" if clause else ""
        return f"{head}from {MODULE} import Case, decode\ncase = Case({', '.join(args)})"


def encode(a: np.ndarray | None) -> str:
    if a is None:
        return "None"
    blob = base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()
    return f"decode({a.dtype.name!r}, {tuple(a.shape)!r}, {blob!r})"


def decode(dtype: str, shape: tuple, blob: str) -> np.ndarray:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    return np.frombuffer(base64.b64decode(blob), dtype=DTYPES[dtype]).reshape(shape).copy()


def save(case: Case, path) -> None:
    """Write the exact case to an .npz (no pickles) for arrays too big to print."""
    arrays = {"x": case.x, "eps": np.float64(case.eps), **case.extras}
    if case.weight is not None:
        arrays["weight"] = case.weight
    # bfloat16 has no stable npz encoding: store the raw bits with the dtype name.
    np.savez(path, **{k: (v.view(np.uint16) if v.dtype.name == "bfloat16" else v)
                      for k, v in arrays.items()},
             dtypes=np.array([f"{k}:{v.dtype.name}" for k, v in arrays.items()]),
             params=np.array(json.dumps(case.params)),
             weight_offset=np.float64(case.weight_offset))


def load(path) -> Case:
    """A case saved by ``save`` (``allow_pickle`` stays off: an .npz holding objects is
    refused)."""
    z = np.load(path, allow_pickle=False)
    dt = dict(s.split(":") for s in z["dtypes"])
    get = lambda k: z[k].view(DTYPES["bfloat16"]) if dt.get(k) == "bfloat16" else z[k]
    extras = {k: get(k) for k in dt if k not in ("x", "weight", "eps")}
    params = json.loads(str(z["params"])) if "params" in z else {}
    offset = float(z["weight_offset"]) if "weight_offset" in z else 0.0
    return Case(x=get("x"), weight=get("weight") if "weight" in dt else None,
                eps=float(z["eps"]), recipe=f"loaded from {path}", extras=extras,
                params=params, weight_offset=offset)


# ---- reading a printed repro back, as data --------------------------------------------------

class ReproError(ValueError):
    """Text that is not a repro the suite printed: one line saying what and where."""


def parse_repro(text: str) -> tuple[str | None, Case]:
    """(clause or None, case) from a printed repro. Only the suite's own constructs are read:
    ``clause = '<id>'``, ``from ...cases import Case, decode, load``, and ``case = Case(...)``
    with literal arguments and ``decode(...)`` arrays, or ``case = load('<path>')`` of an .npz
    (no pickles). Nothing is executed; anything else is a ReproError naming its line."""
    lines = [line for line in text.splitlines() if line.strip() not in ("repro:", "")]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError as e:
        raise ReproError(f"not a printed repro: line {e.lineno}: {e.msg}") from None
    clause, case = None, None
    for node in tree.body:
        where = f"line {node.lineno}"
        if isinstance(node, ast.ImportFrom):
            names = {a.name for a in node.names}
            if node.module != MODULE or not names <= {"Case", "decode", "load"}:
                raise ReproError(f"{where}: only 'from {MODULE} import Case, decode, load' is "
                                 f"accepted in a repro")
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name == "clause":
                clause = _literal(node.value, where)
                if not isinstance(clause, str):
                    raise ReproError(f"{where}: clause must be a string such as 'ACC-1'")
            elif name == "case":
                case = _case(node.value, where)
            else:
                raise ReproError(f"{where}: a repro assigns only 'clause' and 'case', not "
                                 f"{name!r}")
        else:
            raise ReproError(f"{where}: not part of a printed repro (only the import, "
                             f"'clause = ...' and 'case = Case(...)' or 'case = load(...)' "
                             f"are read)")
    if case is None:
        raise ReproError("no 'case = Case(...)' or 'case = load(...)' line")
    return clause, case


def _literal(node, where):
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ReproError(f"{where}: {ast.unparse(node)[:60]!r} is not a literal") from None


def _call(node, name: str) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name


def _array(node, where):
    if isinstance(node, ast.Constant) and node.value is None:
        return None
    if not _call(node, "decode") or node.keywords or len(node.args) != 3:
        raise ReproError(f"{where}: arrays are written decode(dtype, shape, base64)")
    try:
        return decode(*(_literal(a, where) for a in node.args))
    except (ValueError, TypeError) as e:
        raise ReproError(f"{where}: decode(...) failed: {e}") from None


def _case(node, where) -> Case:
    if _call(node, "load"):
        if node.keywords or len(node.args) != 1:
            raise ReproError(f"{where}: load takes one path")
        path = _literal(node.args[0], where)
        try:
            return load(path)
        except (OSError, ValueError, KeyError) as e:
            raise ReproError(f"{where}: cannot read the case {path}: {e}") from None
    if not _call(node, "Case") or node.args:
        raise ReproError(f"{where}: expected case = Case(x=..., weight=..., eps=...) or "
                         f"case = load('...npz')")
    fields: dict = {}
    for kw in node.keywords:
        if kw.arg in ("x", "weight"):
            fields[kw.arg] = _array(kw.value, where)
        elif kw.arg == "extras":
            if not isinstance(kw.value, ast.Dict):
                raise ReproError(f"{where}: extras is a dict of decode(...) arrays")
            fields["extras"] = {_literal(k, where): _array(v, where)
                                for k, v in zip(kw.value.keys, kw.value.values)}
        elif kw.arg in ("eps", "params", "weight_offset", "recipe"):
            fields[kw.arg] = _literal(kw.value, where)
        else:
            raise ReproError(f"{where}: Case has no field {kw.arg!r}")
    if "x" not in fields or fields["x"] is None or "eps" not in fields:
        raise ReproError(f"{where}: a case needs x and eps")
    fields.setdefault("weight", None)
    fields.setdefault("recipe", "read from a printed repro")
    return Case(**fields)


# ---- cases derived for one clause ------------------------------------------------------------

def scaled_pair(case: Case, k: int) -> tuple[Case, Case]:
    """(case', case' scaled): x * 2**k with eps * 4**k, extras kept. case' zeroes elements below
    16 * tiny and clips at max / 16 so that the scaling by 2**k (|k| <= 4) is exact."""
    from rmsnorm_conformance.conformance.dtypes import info

    fi = info(case.x.dtype)
    x = case.x.astype(np.float64)
    x[np.abs(x) < fi.tiny * 16] = 0
    base = case.derived("|x| clipped to [tiny*16, max/16]",
                        x=np.clip(x, -fi.max / 16, fi.max / 16).astype(case.x.dtype),
                        extras=dict(case.extras))
    scaled = base.derived(f"x *= 2**{k}, eps *= 4**{k}",
                          x=base.x * np.asarray(2.0 ** k, base.x.dtype), eps=base.eps * 4.0 ** k)
    return base, scaled


def sequence_case(plans, built) -> Case:
    """The sequence as one Case to report: the first call's arrays, and a recipe that replays
    every call (``Plan.build`` is exact)."""
    first = built[0]
    recipe = ("replay: from rmsnorm_conformance.conformance.strategies import Plan; calls = "
              "[(c.x, c.weight, c.eps) for c in (p.build(impl.capabilities) for p in ["
              + ", ".join(map(repr, plans)) + "])]")
    return dataclasses.replace(first, recipe=recipe, extras=dict(first.extras))
