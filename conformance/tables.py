"""How a table of results reads, wherever it is shown: the end-of-run table in the terminal
(``report.py``) and the tools' pages (``rmsnorm-conformance matrix``, the release history).

They share one cell text (the status and, for a clause judged by an error bound, its worst error
as a multiple of the bound: ``pass 0.98x``), one legend saying what that number is, one set of
numbered notes under the table (a non-pass cell's reason; identical reasons share a number), and
one rule for the implementations left out of the table (nothing tested: every clause skipped).
The terminal's table is also fitted to the terminal's width here (``text_tables``).

Nothing here imports pytest, Hypothesis or the properties: the tools use it.
"""

from __future__ import annotations

import textwrap
from typing import Iterable, Sequence

from rmsnorm_conformance.conformance import results

#: What a cell's number is, said wherever one is shown.
RATIO = "x = worst error / bound"
LEGEND = (
    "Cells: the status (the worst of the tests checking the clause: CRASH > TIMEOUT > ERROR > "
    "FAIL > unmet > pass > skip) and, for a clause judged by an error bound, its worst error as "
    f"a multiple of the bound, {RATIO} (0.98x: 98% of the bound; above 1.00x the bound is "
    "exceeded; the errors in ulps are in the results document). "
    "pass = the clause holds on every example; FAIL = a MUST clause not met (fails the run); "
    "unmet = a SHOULD/MAY clause not met (fails the run only with --rmsnorm-strict-should); "
    "CRASH / TIMEOUT = the implementation's process died or hung (the clause's level decides "
    "whether the run fails); ERROR = a defect of the suite or of the adapter's plumbing (always "
    "fails the run); skip = not applicable here")
#: The clause that loads an implementation: it passes even where nothing else can run.
LOADING = "IMP-1"
#: Continuation lines of a wrapped note, legend or list.
INDENT = "    "


def legend(dash: str, notes: bool = True) -> str:
    """The legend, with what ``-`` means in this table (and ``[n]``, where cells have notes)."""
    return f"{LEGEND}; - = {dash}" + ("; [n] = note n below." if notes else ".")


def cell_text(result: results.Result | None) -> str:
    """``-`` (no result), the status, or the status and the worst error/bound ratio."""
    if result is None:
        return "-"
    if result.worst is None:
        return result.status
    return f"{result.status} {results.format_ratio(result.worst.ratio)}"


def without_impl(reason: str, impl: str) -> str:
    """A reason without its leading implementation id (the column already names it)."""
    for prefix in (f"{impl}: ", f"{impl} "):
        if reason.startswith(prefix):
            return reason[len(prefix):]
    return reason


def md(text: object) -> str:
    """``text`` as the content of one Markdown table cell (or one line of a list)."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


class Notes:
    """The numbered one-line notes under a table; identical text shares a number, and each note
    knows the columns that refer to it."""

    def __init__(self):
        self.owners: dict[str, list[str]] = {}      # note text -> column labels, in order

    @property
    def texts(self) -> list[str]:
        return list(self.owners)

    def ref(self, text: str, owner: str | None = None) -> int:
        """The number of the note ``text`` (a new one if unseen), referred to by ``owner``."""
        who = self.owners.setdefault(text, [])
        if owner is not None and owner not in who:
            who.append(owner)
        return self.texts.index(text) + 1

    def cell(self, result: results.Result | None, owner: str) -> str:
        """A cell's text, with the number of its reason's note where it is not a pass."""
        text = cell_text(result)
        if result is not None and result.status != "pass" and result.reason:
            text += f" [{self.about(result.status, result.reason, result.impl, owner)}]"
        return text

    def about(self, what: str, reason: str, impl: str, owner: str) -> int:
        """The number of the note ``what: reason`` (``what`` a status, or an implementation's
        state; the reason's first line, without its leading implementation id)."""
        return self.ref(f"{what}: {without_impl(reason.splitlines()[0], impl)}", owner)

    def untested(self, record: results.ImplementationRecord | None,
                 cells: Sequence[results.Result]) -> int:
        """The number of the note saying why a column's implementation was not tested (the
        line that lists such columns names them, not the note)."""
        what = record.state if record is not None and record.reason else "skip"
        return self.ref(f"{what}: {untested_reason(record, cells)}")

    def lines(self, *, markdown: bool = False, owners: bool = True,
              width: int | None = None) -> list[str]:
        """``[1] text (owners)`` for a terminal, wrapped to ``width``; ``1. text (owners)`` for
        Markdown (an ordered list)."""
        out = []
        for k, (text, who) in enumerate(self.owners.items(), 1):
            tail = f" ({', '.join(who)})" if owners and who else ""
            if markdown:
                out.append(f"{k}. {md(text + tail)}")
            else:
                out += wrap(f"[{k}] {text}{tail}", width)
        return out


def wrap(text: str, width: int | None) -> list[str]:
    """One logical line as terminal lines of at most ``width`` (continuations indented; a word
    longer than the width stays whole)."""
    if not width:
        return [text]
    return textwrap.wrap(text, width, subsequent_indent=INDENT, break_long_words=False,
                         break_on_hyphens=False) or [""]


# --------------------------------------------------------------------------------------------
# implementations that were not tested

def untested(cells: Iterable[results.Result]) -> bool:
    """Whether an implementation's results say nothing was tested: every clause skipped (its
    loading, IMP-1, counts only where it is all there is)."""
    cells = list(cells)
    judged = [c for c in cells if c.clause != LOADING] or cells
    return all(c.status == "skip" for c in judged)


def left_out(cells: Iterable[results.Result]) -> bool:
    """Whether a column says nothing a table needs: untested, and every cell pass or skip (a
    broken implementation's IMP-1 failure stays in the table)."""
    cells = list(cells)
    return untested(cells) and all(c.status in ("pass", "skip") for c in cells)


def untested_reason(record: results.ImplementationRecord | None,
                    cells: Iterable[results.Result]) -> str:
    """Why an implementation was not tested: its own reason (unavailable, broken), else its
    clauses' skip reasons."""
    if record is not None and record.reason:
        return record.reason.splitlines()[0]
    reasons: list[str] = []
    for c in cells:
        if c.status == "skip" and c.reason:
            text = without_impl(c.reason.splitlines()[0], c.impl)
            if text not in reasons:
                reasons.append(text)
    if not reasons:
        return "every selected clause was skipped"
    more = f"; and {len(reasons) - 3} other reasons" if len(reasons) > 3 else ""
    return "; ".join(reasons[:3]) + more


def left_out_line(items: Sequence[tuple[str, int]]) -> str:
    """The one line that lists the columns left out of a table, ``(label, note number)`` (see
    ``Notes.untested``), those with the same note together."""
    by_note: dict[int, list[str]] = {}
    for label, note in items:
        by_note.setdefault(note, []).append(label)
    return ("Not in the table (nothing tested: every clause skipped): "
            + "; ".join(f"{', '.join(labels)} [{n}]" for n, labels in by_note.items()) + ".")


# --------------------------------------------------------------------------------------------
# the terminal's table

#: The title column's width: at most (titles are cut with ``~``), and at least, before the
#: implementation columns are split into several tables.
TITLE_MAX, TITLE_MIN = 44, 16
GAP = "  "


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 1, 0)] + "~"


def text_tables(rows: Sequence[tuple[str, str, str]], labels: Sequence[str],
                cells: Sequence[Sequence[str]], width: int) -> list[str]:
    """The table clause x implementation as text lines of at most ``width`` characters:
    ``rows`` are (clause, level, title), ``labels`` the implementation columns, ``cells[i][j]``
    the text of row i, column j. Where one table would be wider than ``width``, the columns are
    split into several tables, as evenly as fits, each repeating clause, level and title (the
    title cut to what room is left; left out below 5 characters); a column wider than the
    terminal on its own is cut with ``~``. Tables are separated by an empty line."""
    if not labels or not rows:
        return []
    key = [max(len("clause"), *(len(r[0]) for r in rows)),
           max(len("level"), *(len(r[1]) for r in rows))]
    fixed = key[0] + 1 + key[1] + 1
    title_w = min(TITLE_MAX, max(len("title"), *(len(r[2]) for r in rows)))
    room = max(width - fixed, 1)
    col_w = [min(room, max(len(label), *(len(row[j]) for row in cells)))
             for j, label in enumerate(labels)]

    def span(group):
        return sum(col_w[j] for j in group) + len(GAP) * (len(group) - 1)

    def fits(group):
        return fixed + min(title_w, TITLE_MIN) + 1 + span(group) <= width

    groups: list[list[int]] = []
    for j in range(len(labels)):
        if groups and fits(groups[-1] + [j]):
            groups[-1].append(j)
        else:
            groups.append([j])
    if len(groups) > 1:                      # as many tables, the columns spread evenly
        size = -(-len(labels) // len(groups))
        even = [list(range(k, min(k + size, len(labels)))) for k in range(0, len(labels), size)]
        if len(even) == len(groups) and all(fits(g) for g in even):
            groups = even
    out: list[str] = []
    for group in groups:
        tw = min(title_w, width - fixed - span(group) - 1)
        tw = tw if tw >= 5 else 0
        if out:
            out.append("")
        for row, texts in [(("clause", "level", "title"), labels), *zip(rows, cells)]:
            line = f"{row[0]:<{key[0]}} {row[1]:<{key[1]}} "
            if tw:
                line += f"{_cut(row[2], tw):<{tw}} "
            line += GAP.join(_cut(texts[j], col_w[j]).ljust(col_w[j]) for j in group)
            out.append(line.rstrip())
    return out
