"""What the subcommands share: errors, output, Markdown helpers."""

from __future__ import annotations

import sys

from rmsnorm_conformance.conformance import results


class ToolError(Exception):
    """Bad usage or input that is not a results file (exit status 2): one line."""


def emit(text: str, out: str | None) -> None:
    """Write ``text`` to ``out`` atomically, or to standard output when ``out`` is None."""
    if out is None:
        sys.stdout.write(text)
        return
    try:
        results.write_text_atomic(out, text)
    except OSError as e:
        raise ToolError(f"cannot write {out}: {e.strerror or e}") from None


def md(text: object) -> str:
    """``text`` as the content of one Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def cell_text(result: dict | None) -> str:
    """A cell's status with its worst error in ulps where there is one: ``pass 2.1``."""
    if result is None:
        return "-"
    u = results.error_ulps(result)
    return result["status"] if u is None else f"{result['status']} {results.format_ulps(u)}"
