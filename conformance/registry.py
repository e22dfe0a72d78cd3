"""Finding implementations: the entry-point group, load errors kept as findings."""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata as md

from impl.protocol import Implementation, as_implementation

GROUP = "rmsnorm_conformance.implementations"


@dataclasses.dataclass
class Entry:
    """One entry point: loaded into ``impl``, or broken with ``error``."""

    id: str
    value: str
    distribution: str
    impl: Implementation | None = None
    error: str | None = None
    unavailable: str | None = None   # why it can't run here (every clause skipped), or None


def discover(group: str = GROUP) -> list[Entry]:
    """Every entry point in the group, sorted by id (identical on every xdist worker)."""
    entries: list[Entry] = []
    seen: dict[str, str] = {}
    for ep in sorted(md.entry_points(group=group), key=lambda e: (e.name, e.value)):
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "unknown"
        entry = Entry(id=ep.name, value=ep.value, distribution=dist)
        if ep.name in seen:
            entry.id = f"{ep.name}@{ep.dist.name if ep.dist else 'unknown'}"
            entry.error = f"duplicate implementation id {ep.name!r} (also in {seen[ep.name]})"
        else:
            seen[ep.name] = dist
            try:
                entry.impl = copy.copy(as_implementation(ep.load()))   # the id is per entry
                entry.impl.id = ep.name
                entry.unavailable = entry.impl.unavailable_reason()
            except Exception as e:   # noqa: BLE001 - reported per implementation, run goes on
                entry.impl, entry.error = None, f"{type(e).__name__}: {e}"
        entries.append(entry)
    return entries
