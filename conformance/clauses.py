"""SPEC.md's clauses as data: id -> level and title, parsed from the specification itself.

A clause heading in SPEC.md reads ``### FWD-1 (MUST): Output shape``. Tests name the clause
they check with ``@clause("FWD-1")``; tests/test_spec_coverage.py checks that the two
agree both ways.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import re

HEADING = re.compile(r"^###\s+([A-Z]+-\d+)\s+\((MUST|SHOULD|MAY)\):\s*(.+?)\s*$")
SECTION = re.compile(r"^##\s+([A-Z]+):\s")
WITHDRAWN = "## Withdrawn clauses"
CHECKED_BY = re.compile(r"\*Checked by:\*(.*?)(?:\n\n|\Z)", flags=re.S)
LEVELS = ("MUST", "SHOULD", "MAY")


@dataclasses.dataclass(frozen=True)
class Clause:
    id: str
    level: str
    title: str


def spec_path() -> pathlib.Path:
    """SPEC.md: at the repository root in a checkout, inside ``rmsnorm_conformance/`` in the
    wheel; one folder above this package either way."""
    path = pathlib.Path(__file__).resolve().parent.parent / "SPEC.md"
    if not path.is_file():
        raise FileNotFoundError(f"SPEC.md not found at {path}")
    return path


def parse(text: str) -> dict[str, Clause]:
    found: dict[str, Clause] = {}
    for line in text.splitlines():
        m = HEADING.match(line)
        if m:
            cid, level, title = m.groups()
            if cid in found:
                raise ValueError(f"SPEC.md defines clause {cid} twice")
            found[cid] = Clause(cid, level, title)
    return found


@functools.lru_cache(maxsize=None)
def _text() -> str:
    return spec_path().read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def load() -> dict[str, Clause]:
    """Every clause of SPEC.md, in the document's order."""
    return parse(_text())


@functools.lru_cache(maxsize=None)
def body(cid: str) -> str:
    """The text of clause ``cid`` in SPEC.md, from its heading to the next heading ('' for an
    unknown clause)."""
    found, lines = False, []
    for line in _text().splitlines():
        if line.startswith("#"):
            if found:
                break
            m = HEADING.match(line)
            found = bool(m) and m.group(1) == cid
        if found:
            lines.append(line)
    return "\n".join(lines)


@functools.lru_cache(maxsize=None)
def sections() -> tuple[str, ...]:
    """SPEC.md's sections of clauses (``## FWD: ...``), in the document's order."""
    return tuple(m.group(1) for line in _text().splitlines() if (m := SECTION.match(line)))


def sort_key(clause: str) -> tuple:
    """SPEC.md order: by section (unknown sections last, alphabetically), then number."""
    section, _, number = clause.partition("-")
    order = sections()
    rank = order.index(section) if section in order else len(order)
    return (rank, section if rank == len(order) else "", int(number) if number.isdigit() else 0,
            clause)


@functools.lru_cache(maxsize=None)
def withdrawn() -> frozenset[str]:
    """The ids listed under SPEC.md's "Withdrawn clauses" (one bullet each, the id in bold:
    ``- **MET-6** (title): why``): never reused, and no test may claim to check them."""
    text = _text()
    if WITHDRAWN not in text:
        return frozenset()
    section = text[text.index(WITHDRAWN):].split("\n## ", 1)[0]
    return frozenset(re.findall(r"^- \*\*([A-Z]+-\d+)\*\*", section, flags=re.M))


@functools.lru_cache(maxsize=None)
def checked_by() -> dict[str, tuple[tuple[str, str | None, str], ...]]:
    """Clause id -> the backticked references of its *Checked by:* line, each as (written,
    file, test): the file relative to the repository (a bare ``test_<section>.py`` is
    ``conformance/``'s; None where a bare test name follows no file), the test '' where a whole
    file is named (a bare function name continues the file named before it)."""
    spec = load()
    found: dict[str, tuple] = {}
    for block in re.split(r"^### ", _text(), flags=re.M)[1:]:
        cid = block.split(" ", 1)[0]
        m = CHECKED_BY.search(block)
        if cid not in spec or not m:
            continue
        refs, current = [], None
        for name in re.findall(r"`([^`]+)`", m.group(1)):
            path, _, func = name.partition("::")
            if not func and not path.endswith((".py", "/run")):
                path, func = current, path          # a bare function name
            if path and "/" not in path and path.startswith("test_"):
                path = f"conformance/{path}"
            current = path
            refs.append((name, path, func))
        found[cid] = tuple(refs)
    return found


@functools.lru_cache(maxsize=None)
def self_test_sections() -> tuple[str, ...]:
    """The sections that are the suite's own guarantees (TOL, REF, COV): none of their clauses'
    *Checked by* lines names a test of ``conformance/``, so they have no section module."""
    by_section: dict[str, set] = {}
    for cid, refs in checked_by().items():
        by_section.setdefault(cid.split("-")[0], set()).update(
            (path or "").split("/")[0] for _, path, _ in refs)
    return tuple(sec for sec in sections()
                 if sec in by_section and "conformance" not in by_section[sec])
