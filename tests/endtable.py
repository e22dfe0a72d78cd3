"""Reading the end-of-run table (conformance/report.py, laid out by conformance/tables.py) back
from a run's output, for the self-tests that run the plugin: tests/test_plugin.py and
tests/test_isolation.py.

The table may be split into several tables of columns (each with its header line ``clause level
[title] impl ...``); cells are read at the offsets of their column's label in the header, so a
cell may hold spaces (``pass 0.98x``). Under the tables: numbered notes ``[n] text`` and other
lines (the implementations left out, the legend, the suite's own clauses), each possibly wrapped
onto indented continuation lines, which are joined back with one space.
"""

from __future__ import annotations

import dataclasses
import re

SEP = "RMSNorm conformance: clause x implementation"
ROW = re.compile(r"^[A-Z]+-\d+ +(MUST|SHOULD|MAY|\?)( |$)")
NOTE = re.compile(r"^\[(\d+)\] (.*)$")
#: The first words of the lines under the table that belong to it.
UNDER = ("Not in the table", "Cells:", "the suite's own clauses")


@dataclasses.dataclass
class EndTable:
    cells: dict[tuple[str, str], str]        # (clause, impl) -> cell text
    notes: dict[str, str]                    # "1" -> note text
    under: list[str]                         # the other lines under the table, unwrapped
    headers: list[str]                       # the header line of each table
    raw: list[str]                           # every line of the table, as printed

    @property
    def impls(self) -> list[str]:
        """The columns, in the order shown."""
        seen: list[str] = []
        for _, impl in self.cells:
            if impl not in seen:
                seen.append(impl)
        return seen

    def line(self, start: str) -> str:
        """The (unwrapped) line under the table that starts with ``start``."""
        return next(text for text in self.under if text.startswith(start))

    def note(self, key: tuple[str, str]) -> str:
        """The text of the note a cell refers to."""
        m = re.search(r"\[(\d+)\]$", self.cells[key])
        assert m, self.cells[key]
        return self.notes[m.group(1)]


def _columns(header: str) -> list[tuple[str, int]]:
    """(label, offset) of each implementation column of a header line."""
    words = [(m.group(), m.start()) for m in re.finditer(r"\S+", header)]
    names = [w for w, _ in words]
    assert names[:2] == ["clause", "level"], header
    return words[3:] if names[2:3] == ["title"] else words[2:]


def parse(lines: list[str]) -> EndTable:
    start = next(i for i, line in enumerate(lines) if SEP in line)
    table = EndTable({}, {}, [], [], [])
    columns: list[tuple[str, int]] = []
    logical: list[str] = []        # lines under the table, continuations joined
    for line in lines[start + 1:]:
        if line.startswith("clause "):
            columns = _columns(line)
            table.headers.append(line)
        elif ROW.match(line):
            clause = line.split()[0]
            for k, (impl, offset) in enumerate(columns):
                end = columns[k + 1][1] if k + 1 < len(columns) else None
                table.cells[clause, impl] = line[offset:end].strip()
        elif line.startswith("    ") and logical:
            logical[-1] += " " + line.strip()
        elif NOTE.match(line) or line.startswith(UNDER):
            logical.append(line)
        elif line.strip():
            break
        table.raw.append(line)
    for text in logical:
        m = NOTE.match(text)
        if m:
            table.notes[m.group(1)] = m.group(2)
        else:
            table.under.append(text)
    return table
