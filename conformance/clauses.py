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
