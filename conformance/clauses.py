"""SPEC.md's clauses as data: id -> level and title, parsed from the specification itself.

A clause heading in SPEC.md reads ``### FWD-1 (MUST): Output shape``. Tests name the clause
they check with ``@pytest.mark.clause("FWD-1")``; tests/test_spec_coverage.py checks that the two
agree both ways.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import re

HEADING = re.compile(r"^###\s+([A-Z]+-\d+)\s+\((MUST|SHOULD|MAY)\):\s*(.+?)\s*$")
LEVELS = ("MUST", "SHOULD", "MAY")


@dataclasses.dataclass(frozen=True)
class Clause:
    id: str
    level: str
    title: str


def spec_path() -> pathlib.Path:
    here = pathlib.Path(__file__).resolve().parent
    for candidate in (here / "SPEC.md", here.parent / "SPEC.md"):   # wheel, then checkout
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("SPEC.md not found beside the conformance package")


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
def load() -> dict[str, Clause]:
    return parse(spec_path().read_text(encoding="utf-8"))

