"""One pytest session that runs the suite: its state (``Run``, kept in ``config.stash``) and
what the plugin's hooks do once the suite is active (``conformance/plugin.py`` decides when).

``Run`` holds the implementations found and selected, the Hypothesis profile, where large
failing inputs go, and the collector of results (``report.Collector``). Everything a test
measures is kept per item (``item.stash``), in its ledger.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import os
import pathlib
import re
import sys

import pytest

from rmsnorm_conformance.conformance import clauses, errors, ledger, profiles, registry, report
from rmsnorm_conformance.conformance.assertions import ARTIFACTS_ENV, missing_capability
from rmsnorm_conformance.conformance.marks import clause_of, requirements_of

#: Implementation ids naming an accelerator: under xdist all their tests run in one worker, so
#: one process (not one per worker) uses the device (SPEC.md IMP-4; README "GPUs").
ACCELERATOR = re.compile(r"-(gpu|cuda\d*|metal|mps|xpu|rocm)$")
LEDGER = pytest.StashKey["ledger.Ledger"]()
RUN = pytest.StashKey["Run"]()


def _select(entries, wanted):
    unknown = [w for w in wanted if not any(fnmatch.fnmatchcase(e.id, w) for e in entries)]
    if unknown:
        installed = ", ".join(e.id for e in entries) or "(none)"
        raise pytest.UsageError(
            f"unknown --rmsnorm-impl {', '.join(map(repr, unknown))}; installed "
            f"implementations: {installed}")
    return [e for e in entries if any(fnmatch.fnmatchcase(e.id, w) for w in wanted)]


def _check_clauses(wanted):
    spec = clauses.load()
    unknown = [w for w in wanted if not any(fnmatch.fnmatchcase(c, w) for c in spec)]
    if unknown:
        raise pytest.UsageError(
            f"unknown --rmsnorm-clause {', '.join(map(repr, unknown))}; pass a SPEC.md clause "
            f"id such as {next(iter(spec))} or a glob such as 'ACC-*' (sections: "
            f"{', '.join(clauses.sections())})")


def _writable_target(path: str) -> pathlib.Path:
    """The results file's absolute path, its directory created now; a UsageError before the
    run when it cannot be written."""
    target_path = pathlib.Path(path).expanduser().resolve()
    if target_path.is_dir():
        raise pytest.UsageError(f"--rmsnorm-results {path}: is a directory; give a file "
                                f"name, e.g. {os.path.join(path, 'results.json')}")
    try:
        target_path.parent.mkdir(parents=True, exist_ok=True)
        probe = target_path.parent / f".{target_path.name}.probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise pytest.UsageError(f"--rmsnorm-results {path}: cannot write there "
                                f"({e.strerror or e}); choose another path") from None
    return target_path


def implementation_of(nodeid: str, ids) -> str | None:
    """The implementation id in a test's parametrisation (``test_x[mlx-fast-cpu]``,
    ``test_y[shape0-mlx-fast-cpu]``): the longest of ``ids`` that is one of its dash-separated
    parts, or None."""
    m = re.search(r"\[(.*)\]$", nodeid)
    if not m:
        return None
    params = f"-{m.group(1)}-"
    return next((i for i in sorted(ids, key=len, reverse=True) if f"-{i}-" in params), None)


@pytest.fixture(scope="session")
def impl(request):
    """The implementation under test; skipped with its own reason where it can't run here.
    (This module is registered as a plugin while the suite runs, for this fixture alone.)"""
    entry = request.config.stash[RUN].load(request.param)
    if entry.error:
        pytest.skip(f"{entry.id}: not loaded ({entry.error}; IMP-1)")
    if entry.unavailable:
        pytest.skip(f"{entry.id}: {entry.unavailable}")
    return entry.impl


def status_of(call, level: str, strict: bool) -> tuple[str, str]:
    """(status, one-line reason) of a test's phase from its exception (``errors.verdict``)."""
    if call.excinfo is not None and call.excinfo.errisinstance(pytest.skip.Exception):
        exc = call.excinfo.value
        return "skip", str(exc.msg if hasattr(exc, "msg") else exc)
    return errors.verdict(None if call.excinfo is None else call.excinfo.value, level, strict)


def _skip_reason(rep) -> str:
    """The skip's one-line reason (Hypothesis appends the explicit example on further lines)."""
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    return (reason.removeprefix("Skipped: ").strip().splitlines() or ["skipped"])[0]


@dataclasses.dataclass
class Run:
    """The suite's state for one pytest session (``config.stash[RUN]``)."""

    config: pytest.Config
    entries: list            # the implementations under test (registry.Entry)
    opt_in: list             # opt-in implementations left out (not selected)
    profile: str
    artifacts: pathlib.Path
    cache: pathlib.Path      # offered to supervised adapters (protocol.cache_dir)
    collector: report.Collector = None

    @classmethod
    def start(cls, config) -> "Run":
        """Find and select the implementations, check the options (UsageError before anything
        runs), and make the collector of results."""
        option = config.getoption
        entries = registry.discover()
        wanted = option("rmsnorm_impl")
        opt_in = []
        if wanted:
            entries = _select(entries, wanted)
        else:
            opt_in = [e for e in entries if e.opt_in]
            entries = [e for e in entries if not e.opt_in]
        _check_clauses(option("rmsnorm_clause"))
        results = option("rmsnorm_results")
        if results and not hasattr(config, "workerinput"):
            config.option.rmsnorm_results = str(_writable_target(results))
        artifacts = pathlib.Path(os.environ.get(ARTIFACTS_ENV) or option("rmsnorm_artifacts")
                                 or config.rootpath / ".rmsnorm-conformance").resolve()
        cache = pathlib.Path(option("rmsnorm_cache") or artifacts / "cache").expanduser().resolve()
        profile = option("hypothesis_profile", None) or profiles.DEFAULT
        profiles.register()
        run = cls(config, entries, opt_in, profile, artifacts, cache)
        run.collector = report.Collector(config, entries, run.load)
        config.stash[RUN] = run
        config.pluginmanager.register(sys.modules[__name__], "rmsnorm-conformance-fixtures")
        run.prestart()
        return run

    def load(self, entry) -> registry.Entry:
        option = self.config.getoption
        return entry.load(option("rmsnorm_isolation"), option("rmsnorm_call_timeout"),
                          str(self.cache))

    def prestart(self) -> None:
        """In a run without xdist, the first implementation's process is started before
        collection, so that its framework's import overlaps the collection (a second or more
        for JAX or PyTorch); every other one starts on first use, as under xdist, where no
        worker knows beforehand which implementations it will be given."""
        option = self.config.getoption
        if (self.entries and option("rmsnorm_isolation") == "process"
                and not option("collectonly") and not hasattr(self.config, "workerinput")
                and not option("numprocesses", None)):
            self.entries[0].prestart(option("rmsnorm_call_timeout"), str(self.cache))

    # ---- reporting ---------------------------------------------------------------------------
    def header_lines(self) -> list[str]:
        lines = [f"  {e.id} = {e.value} [{e.distribution}]" + (f" BROKEN: {e.error}" if e.error
                                                                else "") for e in self.entries]
        if self.opt_in:
            lines.append(f"  not selected (opt-in, select with --rmsnorm-impl): "
                         f"{', '.join(e.id for e in self.opt_in)}")
        return [f"rmsnorm-conformance: {len(self.entries)} implementation(s), hypothesis "
                f"profile {self.profile!r}"] + lines

    # ---- collection --------------------------------------------------------------------------
    def generate_tests(self, metafunc) -> None:
        if clause_of(metafunc.function) is None:
            return
        ids = [e.id for e in self.entries]
        if "entry" in metafunc.fixturenames:       # loading itself is under test (IMP-1)
            metafunc.parametrize("entry", self.entries, ids=ids)
        elif "impl" in metafunc.fixturenames:
            metafunc.parametrize("impl", self.entries, ids=ids, indirect=True, scope="session")

    def modify_items(self, items) -> None:
        spec = clauses.load()
        wanted = self.config.getoption("rmsnorm_clause")
        keep, drop = [], []
        for item in items:
            cid = clause_of(item)
            if wanted and not (cid and any(fnmatch.fnmatchcase(cid, w) for w in wanted)):
                drop.append(item)
                continue
            keep.append(item)
            if cid is None:
                continue
            fn = getattr(item, "obj", None)
            if "impl" in getattr(item, "fixturenames", ()) and hasattr(fn, "hypothesis"):
                profiles.ship(fn, self.profile)
            item.extra_keyword_matches.add(cid)          # -k ACC-1 selects the clause's tests
            params = getattr(item, "callspec", None)
            params = params.params if params else {}
            target_entry = params.get("impl", params.get("entry"))
            impl_id = getattr(target_entry, "id", None) or report.SUITE
            level = spec[cid].level if cid in spec else "MUST"
            item.user_properties += [(report.CLAUSE, cid), (report.LEVEL, level),
                                     (report.IMPL, impl_id)]
        if drop:
            self.config.hook.pytest_deselected(items=drop)
            items[:] = keep

    # ---- running -----------------------------------------------------------------------------
    def setup(self, item) -> None:
        """Skip, before anything is drawn, an implementation that cannot run here or lacks a
        capability the clause needs (``@requires``)."""
        params = getattr(item, "callspec", None)
        entry = params.params.get("impl") if params else None
        if entry is None:
            return
        entry = self.load(entry)
        if entry.error or entry.unavailable:
            return                          # the impl fixture skips with the reason
        caps = entry.impl.capabilities
        for need in requirements_of(item):
            why = missing_capability(caps, **need)
            if why:
                pytest.skip(f"{entry.id} {why}")

    @contextlib.contextmanager
    def calling(self, item):
        """Around a property's call: its ledger, and the same examples everywhere."""
        if clause_of(item) is None or not hasattr(getattr(item, "obj", None), "hypothesis"):
            yield
            return
        book = ledger.Ledger(record_calls=self.config.getoption("rmsnorm_coverage"),
                             artifacts=self.artifacts, clause=clause_of(item))
        item.stash[LEDGER] = book
        with ledger.active(book), profiles.same_examples_everywhere():
            yield

    def makereport(self, item, call, rep) -> None:
        """Attach the cell's status, reason and measurements to the report (xdist forwards
        them to the controller's collector)."""
        props = dict(item.user_properties)
        if report.CLAUSE not in props:
            return
        level = props[report.LEVEL]
        strict = self.config.getoption("rmsnorm_strict_should")
        entry = _entry_of(item)
        if rep.when == "setup" and entry is not None:
            rep.user_properties.append((report.ENTRY, report.entry_summary(entry)))
        if rep.when == "setup" and rep.skipped:
            rep.user_properties.append((report.STATUS, ("skip", _skip_reason(rep))))
        if rep.when != "call":
            if rep.failed:
                rep.user_properties.append((report.STATUS, status_of(call, level, strict)))
            return
        status, reason = status_of(call, level, strict)
        if status == "skip":
            reason = _skip_reason(rep)
        rep.user_properties.append((report.STATUS, (status, reason)))
        if status not in ("pass", "skip"):
            details = "\n".join(str(call.excinfo.value).splitlines()[:60])
            rep.user_properties.append((report.DETAILS, details))
        book = item.stash.get(LEDGER, None)
        if book is not None:
            rep.user_properties.append((report.LEDGER, report.ledger_summary(
                book, self.config, status in ("FAIL", "unmet"))))
            if self.config.getoption("rmsnorm_coverage"):
                from rmsnorm_conformance.conformance import coverage
                rep.user_properties.append((report.COVERAGE, coverage.summarise(book)))
        if status in ("FAIL", "unmet", "CRASH", "TIMEOUT") and self.config.getoption("verbose") < 1:
            rep.longrepr = report.short_failure(item, status, call.excinfo.value)
        if status in ("unmet", "CRASH", "TIMEOUT") and level in ("SHOULD", "MAY") and not strict:
            rep.outcome = "skipped"
            rep.wasxfail = (f"{level} clause {props[report.CLAUSE]} unmet by "
                            f"{props[report.IMPL]}: {reason}")

    def finish(self) -> None:
        for e in self.entries:
            e.close()

    # ---- xdist ---------------------------------------------------------------------------------
    def scheduler(self, log):
        """Under ``-n`` (xdist's default ``--dist load``) every test of one implementation goes
        to one worker, as one unit: each framework is imported, its child started and (JAX)
        compiled for once per run, not once per worker; the implementations naming an
        accelerator share one unit, so one process, not one per worker, uses the device. Other
        tests are spread one by one. (Like ``--dist loadgroup``, which pytest 9's node ids no
        longer support.)"""
        if self.config.getvalue("dist") != "load":
            return None
        from xdist.scheduler import LoadScopeScheduling

        ids = [e.id for e in self.entries]

        class ByImplementation(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                impl = implementation_of(nodeid, ids)
                if impl is None:
                    return nodeid
                return "accelerator" if ACCELERATOR.search(impl) else f"implementation {impl}"

        return ByImplementation(self.config, log)


def _entry_of(item):
    params = getattr(item, "callspec", None)
    if params is None:
        return None
    entry = params.params.get("impl", params.params.get("entry"))
    return entry if isinstance(entry, registry.Entry) else None

