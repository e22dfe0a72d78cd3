"""The results document (``pytest --rmsnorm-results PATH``): its schema, validation, loading,
atomic writing, and what the tools built on it share (columns, status ranking, clause order).

The document's format is fixed by the JSON Schema shipped beside this module
(``conformance/schema/results-v1.schema.json``, draft 2020-12); ``schema()`` returns it. Every
problem with a document is reported as one :class:`ResultsError` line that says what is wrong and
where (a JSON path such as ``$.results[3].status``), never a traceback. A path ending in ``.gz``
is written gzip-compressed, and ``load`` reads compressed files whatever their name (kept
results, such as docs/history/, are about a tenth of the size).

A *column* is one implementation as run on one host and device: ``Column(impl, host, device)``,
with the device from the implementation's ``environment``. Results files from several hosts (a CI
matrix, a GPU fleet) merge into one table whose columns stay apart.

The document is typed: :class:`Document` holds :class:`ImplementationRecord` and
:class:`Result` (one clause x implementation cell, with :class:`Worst`, :class:`DtypeResult` and
:class:`ByD` records). Each record's fields are named once, in its dataclass, in the order the
JSON object has them; ``from_json`` reads a checked JSON object and ``to_json`` writes it back
(``Document.from_json(d).to_json() == d`` for every valid document of this version). The
collector of a run (``report.py``) builds them, and every tool reads them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import gzip
import hashlib
import importlib.resources
import json
import math
import os
import re
import tempfile
import types
import typing
from typing import Any, ClassVar, Iterable, Mapping

from rmsnorm_conformance.conformance import clauses

SCHEMA_ID = "rmsnorm-conformance/results"
SCHEMA_VERSION = 1
SCHEMA_FILE = "results-v1.schema.json"

#: Statuses from worst to best: the status of a cell that several tests check is the worst one.
STATUSES = ("CRASH", "TIMEOUT", "ERROR", "FAIL", "unmet", "pass", "skip")
#: Higher is worse: CRASH > TIMEOUT > ERROR > FAIL > unmet > pass > skip.
RANK = {s: len(STATUSES) - 1 - k for k, s in enumerate(STATUSES)}
LEVELS = clauses.LEVELS
STATES = ("ok", "unavailable", "broken")
#: The pseudo-implementation of results that check the suite itself.
SUITE_IMPL = "(suite)"

_CLAUSE = re.compile(r"^([A-Z]+)-(\d+)$")


class ResultsError(Exception):
    """A results document is missing, unreadable, foreign or malformed: one line saying what and
    where."""


# --------------------------------------------------------------------------------------------
# the typed model: one dataclass per JSON object of the schema

class Record:
    """A JSON object of the results document as a dataclass. ``from_json`` reads an object that
    has passed ``validate`` (or came from ``to_json``); ``to_json`` writes it back, fields in
    their declared order, leaving out the ``OPTIONAL`` ones that are None. Nested records, lists
    and mappings of records are converted by the fields' annotations; other values (the free-form
    ``environment``, ``capabilities``, ``fingerprint``) are copied as they are."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_json(cls, data: Mapping):
        hints = _hints(cls)
        return cls(**{f.name: _decode(hints[f.name], data[f.name])
                      for f in dataclasses.fields(cls) if f.name in data})

    def to_json(self) -> dict:
        return {f.name: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)
                if not (f.name in self.OPTIONAL and getattr(self, f.name) is None)}


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _decode(hint, value):
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):           # X | None
        (hint,) = [a for a in args if a is not type(None)]
        return _decode(hint, value)
    if origin is list:
        return [_decode(args[0], v) for v in value]
    if origin is dict:
        return {k: _decode(args[1], v) for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_json(value)
    return copy.deepcopy(value)


def _encode(value):
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return copy.deepcopy(value)


@dataclasses.dataclass
class CaseRef(Record):
    """The input behind a worst error: its description, and a repro (small inputs) or a saved
    file (relative to the document)."""

    describe: str
    repro: str | None = None
    file: str | None = None


@dataclasses.dataclass
class Worst(Record):
    """The element with the largest error/bound ratio: its error and bound in ulps of the output
    dtype, the ratio (error / bound: above 1 the bound is exceeded), the dtype key (x's, then
    ``+weight's`` where they differ), which value (``output``, ``dx``, ...) and its input."""

    error_ulps: float
    bound_ulps: float
    ratio: float
    dtype: str
    label: str
    case: CaseRef | None = None


@dataclasses.dataclass
class DtypeResult(Record):
    """One dtype key of a cell: its status, examples and worst error."""

    status: str = "pass"
    examples: int = 0
    worst: Worst | None = None


@dataclasses.dataclass
class ByD(Record):
    """The worst error of one value (``label``) of one dtype key at one last-axis length d, over
    ``examples`` examples with that d."""

    dtype: str
    label: str
    d: int
    error_ulps: float
    bound_ulps: float
    examples: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.dtype, self.label, self.d)

    @property
    def ratio(self) -> float:
        return self.error_ulps / self.bound_ulps if self.bound_ulps else 0.0


@dataclasses.dataclass
class Result(Record):
    """One clause x implementation cell: the worst status of the tests that check the clause,
    its one-line reason (None for a pass), and what was measured."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("details", "by_d")

    clause: str
    title: str
    impl: str
    level: str
    status: str
    reason: str | None = None
    tests: int = 0
    examples: int = 0
    time_s: float = 0.0
    worst: Worst | None = None
    dtypes: dict[str, DtypeResult] = dataclasses.field(default_factory=dict)
    details: str | None = None        # the multi-line detail behind the reason
    by_d: list[ByD] | None = None

    def worst_by_dtype(self) -> dict[str, Worst]:
        """dtype key -> worst record, from the per-dtype entries, else the cell's own."""
        found = {k: e.worst for k, e in self.dtypes.items() if e.worst is not None}
        if not found and self.worst is not None:
            found[self.worst.dtype] = self.worst
        return found


@dataclasses.dataclass
class Distribution(Record):
    name: str
    version: str


@dataclasses.dataclass
class ImplementationRecord(Record):
    """What the document says of one implementation (keyed by its id in ``implementations``):
    where it comes from, whether it could run (``state``: ok, unavailable, broken; with the
    reason otherwise), what it runs on, what it declares, and its rounding-order fingerprint."""

    entry_point: str
    distribution: Distribution | None
    state: str
    reason: str | None
    environment: dict[str, str]
    capabilities: dict
    fingerprint: dict | None = None

    @property
    def device(self) -> str | None:
        return self.environment.get("device") or None

    def framework(self) -> str:
        """``mlx 0.32.4``, or '' when the environment does not say."""
        env = self.environment
        return " ".join(v for v in (env.get("framework"), env.get("version")) if v)


@dataclasses.dataclass
class Suite(Record):
    version: str
    commit: str | None
    spec_sha256: str


@dataclasses.dataclass
class Options(Record):
    impl: list[str]
    clause: list[str]
    strict_should: bool
    isolation: str
    call_timeout: float
    workers: int


@dataclasses.dataclass
class Run(Record):
    profile: str
    options: Options
    duration_s: float
    exit_status: int | None


@dataclasses.dataclass
class Host(Record):
    name: str
    platform: str
    machine: str
    python: str
    cpu_count: int | None


@dataclasses.dataclass
class Document(Record):
    """One run of the suite: ``to_json`` adds ``schema`` and ``schema_version``."""

    created: str
    suite: Suite
    run: Run
    host: Host
    implementations: dict[str, ImplementationRecord]
    results: list[Result]
    worker_crashes: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        return {"schema": SCHEMA_ID, "schema_version": SCHEMA_VERSION, **super().to_json()}


# --------------------------------------------------------------------------------------------
# schema and validation

@functools.lru_cache(maxsize=None)
def _schema_text() -> str:
    here = importlib.resources.files(__package__).joinpath("schema")
    return here.joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


def schema() -> dict:
    """The shipped JSON Schema of version ``SCHEMA_VERSION`` (a fresh copy)."""
    return json.loads(_schema_text())


_ANNOTATIONS = frozenset({"description", "title"})


def _inlined(node: Any, defs: dict) -> Any:
    """``node`` with every ``{"$ref": "#/$defs/X", ...}`` replaced by the definition X (merged
    with its sibling keywords, or beside them in an allOf where both constrain the same
    keyword): the same constraints, without a reference lookup per element validated (the
    schema has no recursive definition). Validating a results document of every adapter takes
    half the time this way (jsonschema resolves about 70,000 references in it otherwise)."""
    if isinstance(node, list):
        return [_inlined(v, defs) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = _inlined(defs[ref[len("#/$defs/"):]], defs)
        rest = {k: _inlined(v, defs) for k, v in node.items() if k != "$ref"}
        if set(rest) & set(target) - _ANNOTATIONS:
            return {"allOf": [target, rest]}
        return {**target, **rest}
    return {k: _inlined(v, defs) for k, v in node.items()}


@functools.lru_cache(maxsize=None)
def _validator():
    import jsonschema

    s = json.loads(_schema_text())
    jsonschema.Draft202012Validator.check_schema(s)
    defs = s.pop("$defs", {})
    return jsonschema.Draft202012Validator(_inlined(s, defs))


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit - 3] + "..."


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
               int: "an integer", float: "a number", type(None): "null"}


def _describe(error) -> str:
    """One short line for a jsonschema ValidationError (its own messages repeat whole objects)."""
    v, inst = error.validator, error.instance
    if "propertyNames" in error.schema_path and v != "propertyNames":
        return f"key {_short(inst)} is not allowed here ({_describe_plain(error)})"
    return _describe_plain(error)


def _describe_plain(error) -> str:
    v, inst = error.validator, error.instance
    got = _JSON_TYPES.get(type(inst), type(inst).__name__)
    if v == "type":
        want = error.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return f"expected {want}, got {got}"
    if v == "enum":
        return f"{_short(inst)} is not one of {', '.join(map(str, error.validator_value))}"
    if v == "const":
        return f"expected {_short(error.validator_value)}, got {_short(inst)}"
    if v == "pattern":
        return f"{_short(inst)} does not match {error.validator_value}"
    if v in ("required", "additionalProperties", "minimum", "exclusiveMinimum", "minLength",
             "maxLength", "maximum"):
        return error.message.replace("\n", " ")
    if v == "propertyNames":
        return f"key {_short(inst)} is not allowed here"
    return error.message.replace("\n", " ")[:200]


def _semantic_problem(doc: Mapping) -> str | None:
    """What the schema cannot say: results name known implementations, once per clause."""
    impls = doc["implementations"]
    seen: dict[tuple[str, str], int] = {}
    for k, r in enumerate(doc["results"]):
        if r["impl"] not in impls and r["impl"] != SUITE_IMPL:
            return (f"$.results[{k}].impl: {r['impl']!r} is not a key of $.implementations "
                    f"(nor {SUITE_IMPL})")
        key = (r["clause"], r["impl"])
        if key in seen:
            return (f"$.results[{k}]: a second result for clause {key[0]} and implementation "
                    f"{key[1]} (first at $.results[{seen[key]}])")
        seen[key] = k
    return None


def validate(doc: Any) -> None:
    """Raise ResultsError (one line: JSON path and what is wrong) unless ``doc`` is a valid
    results document of this version."""
    import jsonschema

    if not isinstance(doc, dict):
        raise ResultsError(f"$: expected an object, got {_JSON_TYPES.get(type(doc), 'a value')}")
    error = jsonschema.exceptions.best_match(_validator().iter_errors(doc))
    if error is not None:
        raise ResultsError(f"{error.json_path}: {_describe(error)}")
    problem = _semantic_problem(doc)
    if problem:
        raise ResultsError(problem)


# --------------------------------------------------------------------------------------------
# reading

def _foreign(doc: dict) -> str | None:
    """What a JSON object that is not ours looks like, for the error message."""
    if "schema" in doc:
        return f"its schema is {_short(doc['schema'])}, not {SCHEMA_ID!r}"
    if {"tests", "summary"} <= doc.keys() and ("exitcode" in doc or "collectors" in doc):
        return "it looks like a pytest-json-report file"
    if {"results", "implementations"} <= doc.keys() and "python" in doc:
        return "it looks like an old --conformance-report file (no schema field)"
    keys = ", ".join(sorted(doc)[:5]) or "none"
    return f"it has no 'schema' field (keys: {keys})"


def check(doc: Any, where: str = "document") -> dict:
    """``doc`` if it is a results document this reader supports; ResultsError otherwise, naming
    ``where`` (a path)."""
    if not isinstance(doc, dict):
        raise ResultsError(f"{where}: expected a JSON object (a rmsnorm-conformance results "
                           f"document), got {_JSON_TYPES.get(type(doc), 'a value')}")
    if doc.get("schema") != SCHEMA_ID:
        raise ResultsError(f"{where} is not a rmsnorm-conformance results document: "
                           f"{_foreign(doc)}; write one with pytest --rmsnorm-results PATH")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        hint = ("upgrade rmsnorm-conformance to read it"
                if isinstance(version, int) and not isinstance(version, bool)
                and version > SCHEMA_VERSION else "rewrite it with this suite")
        raise ResultsError(f"{where}: schema_version {_short(version)} is not supported by this "
                           f"reader (version {SCHEMA_VERSION}); {hint}")
    try:
        validate(doc)
    except ResultsError as e:
        raise ResultsError(f"{where}: {e}") from None
    return doc


def load(path: str | os.PathLike) -> Document:
    """Read and check one results file; every problem is one ResultsError line."""
    return Document.from_json(load_json(path))


def load_json(path: str | os.PathLike) -> dict:
    """``load``, as the checked JSON object."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ResultsError(f"{p}: no such results file") from None
    except IsADirectoryError:
        raise ResultsError(f"{p} is a directory, not a results file") from None
    except OSError as e:
        raise ResultsError(f"{p}: cannot read ({e.strerror or e})") from None
    if raw[:2] == b"\x1f\x8b":          # gzip's magic number
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ResultsError(f"{p} is not a readable gzip file ({e})") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ResultsError(f"{p} is not JSON: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        what = "empty file" if not raw.strip() else f"{e.msg} at line {e.lineno} column {e.colno}"
        raise ResultsError(f"{p} is not JSON: {what}") from None
    except RecursionError:
        raise ResultsError(f"{p} is not a results document: nested too deeply") from None
    digest = hashlib.blake2b(raw, digest_size=16).digest()
    if digest not in _CHECKED:
        check(doc, p)
        _CHECKED.add(digest)
    return doc


#: Digests of the texts ``load_json`` has checked in this process: whether a document is valid
#: depends on its text alone, and the schema's validation is the slow part of reading one
#: (0.1-0.2 s for a baseline of every adapter), so a text read again (the committed baselines,
#: read by several tools and self-tests) is parsed but not validated again.
_CHECKED: set[bytes] = set()


# --------------------------------------------------------------------------------------------
# writing

@contextlib.contextmanager
def _replacing(path: str | os.PathLike, mode: str):
    """A file object whose content replaces ``path`` atomically when the block ends normally:
    a temporary file in the same directory, flushed and fsynced, then ``os.replace``. If the
    block raises (or the process dies), ``path`` keeps its old content; the temporary file is
    removed on an exception. The new file gets the permissions of the one it replaces, or the
    umask's."""
    p = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(p)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _copy_mode(p, tmp)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: ``path`` is always either its old content or the
    new one, never a truncated mix."""
    with _replacing(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_atomic(path: str | os.PathLike, doc: Document | Mapping) -> None:
    """Validate ``doc`` (a Document, or its JSON object; ResultsError if invalid, and nothing is
    written), then write it as JSON atomically: an interrupted write leaves ``path`` as it was.
    A path ending in ``.gz`` gets gzip-compressed JSON (with no timestamp in the header, so equal
    documents give equal bytes)."""
    if isinstance(doc, Document):
        doc = doc.to_json()
    validate(doc)
    if os.fspath(path).endswith(".gz"):
        text = json.dumps(doc, indent=1) + "\n"
        write_bytes_atomic(path, gzip.compress(text.encode("utf-8"), mtime=0))
        return
    with _replacing(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def _copy_mode(target: str, tmp: str) -> None:
    try:
        mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(tmp, mode)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:          # e.g. platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# what the tools share

def clause_sort_key(clause: str) -> tuple:
    """SPEC.md order: by section (``clauses.sections()``, the order of SPEC.md's headings;
    unknown sections last, alphabetically), then number."""
    sections = clauses.sections()
    m = _CLAUSE.match(clause)
    if not m:
        return (len(sections) + 1, clause, 0)
    section, number = m.group(1), int(m.group(2))
    if section in sections:
        return (sections.index(section), "", number)
    return (len(sections), section, number)


@dataclasses.dataclass(frozen=True, order=True)
class Column:
    """One implementation as run on one host and device."""

    impl: str
    host: str
    device: str | None = None

    def label(self, full: bool = True) -> str:
        """``mlx-fast-gpu @ h100-1 (cuda)`` (full) or ``mlx-fast-gpu``."""
        if not full:
            return self.impl
        return f"{self.impl} @ {self.host}" + (f" ({self.device})" if self.device else "")


def column(doc: Document, impl: str) -> Column:
    """The column of implementation ``impl`` in ``doc``."""
    record = doc.implementations.get(impl)
    return Column(impl, doc.host.name, record.device if record else None)


def full_labels(columns: Iterable[Column]) -> bool:
    """Whether labels need host and device: several hosts, or one implementation id on several
    devices."""
    cols = set(columns)
    hosts = {c.host for c in cols}
    ids = [c.impl for c in cols]
    return len(hosts) > 1 or len(ids) != len(set(ids))


def labels(columns: Iterable[Column]) -> dict[Column, str]:
    cols = sorted(set(columns))
    full = full_labels(cols)
    return {c: c.label(full) for c in cols}


@dataclasses.dataclass
class ColumnInfo:
    """Where a column comes from: its implementation record and the document around it."""

    column: Column
    implementation: ImplementationRecord | None     # None for SUITE_IMPL
    doc: Document
    path: str


@dataclasses.dataclass
class Merged:
    """Several results documents as one table: clause x column."""

    columns: dict[Column, ColumnInfo]
    cells: dict[tuple[str, Column], Result]        # (clause, column) -> result
    clauses: dict[str, tuple[str, str]]            # clause -> (level, title)
    sources: list[tuple[str, Document]]            # (path, document), in the order given

    def clause_ids(self) -> list[str]:
        return sorted(self.clauses, key=clause_sort_key)

    def column_list(self) -> list[Column]:
        return sorted(self.columns)

    def labels(self) -> dict[Column, str]:
        return labels(self.columns)

    def column_cells(self, col: Column) -> list[Result]:
        """Every result of one column, in clause order."""
        return [self.cells[c, col] for c in self.clause_ids() if (c, col) in self.cells]


def _column_records(doc: Document, impl: str) -> tuple[Any, list]:
    return (doc.implementations.get(impl),
            sorted((r for r in doc.results if r.impl == impl), key=lambda r: r.clause))


def merge(sources: Iterable[tuple[str, Document]]) -> Merged:
    """Merge checked documents ``(path, doc)``. The same column in two documents is a
    ResultsError unless its implementation record and results are identical there (e.g. the same
    file given twice)."""
    merged = Merged({}, {}, {}, [])
    for path, doc in sources:
        merged.sources.append((path, doc))
        impl_ids = set(doc.implementations) | {r.impl for r in doc.results}
        for impl in sorted(impl_ids):
            col = column(doc, impl)
            if col in merged.columns:
                prior = merged.columns[col]
                if _column_records(prior.doc, impl) != _column_records(doc, impl):
                    raise ResultsError(
                        f"{col.label()} is in both {prior.path} and {path} with different "
                        f"results; give each run of one host once (several runs of one host "
                        f"and device can't share a table)")
                continue
            merged.columns[col] = ColumnInfo(col, doc.implementations.get(impl), doc, path)
        for r in doc.results:
            col = column(doc, r.impl)
            merged.cells.setdefault((r.clause, col), r)
            merged.clauses.setdefault(r.clause, (r.level, r.title))
    return merged


def load_merged(paths: Iterable[str | os.PathLike]) -> Merged:
    """Load several results files and merge them (ResultsError on any problem)."""
    return merge((os.fspath(p), load(p)) for p in paths)


def format_ulps(value: float | None) -> str:
    """``2.1``, ``12``, ``1.2e+03``, ``inf``; '' for None."""
    if value is None:
        return ""
    if value != value:
        return "nan"
    if value in (float("inf"), float("-inf")):
        return "inf"
    return f"{value:.2g}" if value < 10 else f"{value:.3g}" if value < 1000 else f"{value:.2g}"


def format_ratio(value: float) -> str:
    """A worst error as a multiple of its bound (error / bound), ``x`` its unit: ``0.98x``,
    ``1.01x``, ``42x``, ``1.2e+06x``. Below 10 it has two decimals, rounded away from 1, so that
    a value within the bound never reads above ``1.00x`` and one beyond it never reads
    ``1.00x``; ``<0.01x`` for tiny values, ``0x`` for none."""
    if value != value:
        return "nan x"
    if value == float("inf"):
        return "inf x"
    if value == 0:
        return "0x"
    if value < 0.01:
        return "<0.01x"
    if value < 10:
        hundredths = round(value * 100, 6)
        return f"{(math.floor(hundredths) if value < 1 else math.ceil(hundredths)) / 100:.2f}x"
    return f"{value:.0f}x" if value < 999.5 else f"{value:.1e}x"
