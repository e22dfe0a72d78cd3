"""Finding implementations (the entry-point group) and loading them on first use.

``discover`` lists the entry points without importing anything, so that selecting, collecting
and parametrizing cost nothing and an xdist controller (which runs no test) never imports a
framework. ``Entry.load`` imports one when a test first needs it: in a supervised child process
(``--rmsnorm-isolation process``: a crash or hang while importing is an IMP-1 finding, not the end of the
run) or in-process (``--rmsnorm-isolation none``).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata as md

from rmsnorm_conformance.conformance.supervisor import LoadError, Supervised, describe_loaded, load_entry
from rmsnorm_conformance.protocol import Implementation

from rmsnorm_conformance import GROUP, OPT_IN_GROUP   # noqa: E402 - the public names


@dataclasses.dataclass
class Entry:
    """One entry point; after ``load``: ``impl`` (usable) or ``error`` (broken), and
    ``unavailable`` (why it can't run here) with its ``environment``."""

    id: str
    value: str
    distribution: str                 # "name version", for messages
    dist_name: str | None = None
    dist_version: str | None = None
    impl: Implementation | None = None
    error: str | None = None
    unavailable: str | None = None
    environment: dict = dataclasses.field(default_factory=dict)
    loaded: bool = False
    opt_in: bool = False              # registered in OPT_IN_GROUP
    started: Supervised | None = None  # a child spawned ahead of ``load`` (``prestart``)

    @property
    def state(self) -> str:
        if not self.loaded:
            return "not loaded"
        return "broken" if self.error else ("unavailable" if self.unavailable else "ok")

    def prestart(self, timeout: float = 30.0, cache: str | None = None) -> None:
        """Spawn the supervised child now and let it import the adapter while the caller goes
        on; ``load`` (with isolation "process") then waits for it."""
        if not (self.loaded or self.error or self.started):
            self.started = Supervised(self.id, self.value, timeout, cache)
            self.started.spawn()

    def load(self, isolation: str = "process", timeout: float = 30.0,
             cache: str | None = None) -> "Entry":
        """Import the adapter (once): sets impl, or error; then unavailable and environment.
        ``cache``: the directory offered to a supervised adapter (protocol.cache_dir)."""
        if self.loaded:
            return self
        self.loaded = True
        if self.error:                # e.g. a duplicate id: never imported
            return self
        try:
            if isolation == "process":
                impl = self.started or Supervised(self.id, self.value, timeout, cache)
                self.started = None
                caps, self.unavailable, self.environment = impl.load()
                impl.capabilities = caps
            else:
                impl = copy.copy(load_entry(self.value))      # the id is per entry
                impl.id = self.id
                caps, self.unavailable, self.environment = describe_loaded(impl)
            self.impl = impl
        except LoadError as e:
            self.error = str(e)
        except Exception as e:   # noqa: BLE001 - reported per implementation, run goes on
            self.error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        return self

    def close(self) -> None:
        for impl in (self.impl, self.started):
            if isinstance(impl, Supervised):
                impl.close()
        self.started = None


def discover(group: str = GROUP, opt_in_group: str = OPT_IN_GROUP) -> list[Entry]:
    """Every entry point of both groups, sorted by id (identical on every xdist worker); nothing
    is imported."""
    entries: list[Entry] = []
    seen: dict[str, str] = {}
    found = [(ep, False) for ep in md.entry_points(group=group)] + \
        [(ep, True) for ep in md.entry_points(group=opt_in_group)]
    for ep, opt_in in sorted(found, key=lambda t: (t[0].name, t[0].value)):
        name = ep.dist.name if ep.dist is not None else None
        version = ep.dist.version if ep.dist is not None else None
        dist = f"{name} {version}" if name else "unknown"
        entry = Entry(id=ep.name, value=ep.value, distribution=dist, dist_name=name,
                      dist_version=version, opt_in=opt_in)
        if ep.name in seen:
            entry.id = f"{ep.name}@{name or 'unknown'}"
            entry.error = f"duplicate implementation id {ep.name!r} (also in {seen[ep.name]})"
        else:
            seen[ep.name] = dist
        entries.append(entry)
    return entries
