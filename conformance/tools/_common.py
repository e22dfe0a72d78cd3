"""What the subcommands share: errors, output, Markdown tables (a cell's text, the notes and the
legend are ``conformance/tables.py``'s, shared with the end-of-run table)."""

from __future__ import annotations

import os
import pathlib
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


def display_path(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """``path`` relative to ``base`` (default: the working directory), with ``/``: what a page
    says of a file, never an absolute path of this machine (unless on another drive)."""
    try:
        return pathlib.Path(os.path.relpath(path, base)).as_posix()
    except ValueError:                  # another drive
        return str(path)


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines

