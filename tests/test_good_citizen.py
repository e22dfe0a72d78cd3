"""The suite installed beside another project changes nothing there (SPEC.md IMP-8).

An unrelated two-test project (its own ``--impl`` and ``--clause`` options and its own ``impl``
fixture, as a project may well have) is run with pytest in a subprocess, once as installed and
once with the plugin disabled (``-p no:rmsnorm_conformance``, which is what not having the
package looks like to pytest): the terminal output must be identical but for pytest's
``plugins:`` line and the duration, and so must xdist's scheduler under ``-n 2``. Its conftest
records which modules the session imported: the plugin adds only its own two small modules.

The repository side: the wheel (built from this checkout) holds one top-level name, and no
tracked text names a path outside the repository.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import zipfile

import pytest

from rmsnorm_conformance.conformance.marks import clause

ROOT = pathlib.Path(__file__).resolve().parent.parent

UNRELATED_TESTS = '''
def test_one(impl):
    assert impl == "theirs"


def test_two(request):
    assert request.config.getoption("--impl") == "x" and request.config.getoption("--clause")
'''

UNRELATED_CONFTEST = '''
import json
import os
import sys

import pytest


def pytest_addoption(parser):
    parser.addoption("--impl", default="x")          # names the suite used to register
    parser.addoption("--clause", default="y")


@pytest.fixture
def impl():
    return "theirs"


@pytest.hookimpl(wrapper=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    scheduler = yield
    with open(os.environ["UNRELATED_LOG"], "a") as f:
        f.write("scheduler " + (type(scheduler).__name__ if scheduler is not None
                                 else "xdist's default") + "\\n")
    return scheduler


def pytest_unconfigure(config):
    if hasattr(config, "workerinput"):
        return
    with open(os.environ["UNRELATED_LOG"], "a") as f:
        f.write("modules " + json.dumps(sorted(sys.modules)) + "\\n")
'''

#: What the plugin itself may import into a session that does not run the suite.
PLUGIN_MODULES = {"rmsnorm_conformance", "rmsnorm_conformance.conformance",
                  "rmsnorm_conformance.conformance.plugin",
                  "rmsnorm_conformance.conformance.marks"}


def _unrelated(tmp_path: pathlib.Path, *args: str, plugin: bool) -> tuple[str, list[str]]:
    """(normalised terminal output, log lines) of the unrelated project's pytest run."""
    project = tmp_path / ("with" if plugin else "without")
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "conftest.py").write_text(UNRELATED_CONFTEST)
    (project / "test_theirs.py").write_text(UNRELATED_TESTS)
    log = project / "log.txt"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "RMSNORM_", "HYPOTHESIS"))}
    env["UNRELATED_LOG"] = str(log)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    if not plugin:
        cmd += ["-p", "no:rmsnorm_conformance"]
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.replace(str(project), "<project>")
    out = re.sub(r"^plugins: .*$", "plugins: ...", out, flags=re.M)
    out = re.sub(r" in \d+\.\d+s( \(\d+:\d\d:\d\d\))?", " in N s", out)
    # a header's padding follows the width of its text (the summary's time: 9.9s, 10.1s)
    out = re.sub(r"^=+ (.*?) =+$", r"= \1 =", out, flags=re.M)
    out = re.sub(r"^(created|\d+ workers).*$", r"\1 ...", out, flags=re.M)
    return out, log.read_text().splitlines()


@clause("IMP-8")
@pytest.mark.parametrize("args", [(), pytest.param(("-n", "2"), marks=pytest.mark.slow_self_test)],
                         ids=["serial", "xdist"])
def test_an_unrelated_project_is_unchanged(tmp_path, args):
    """Same output, same scheduler; the plugin imports nothing of the suite's core."""
    if args and not _has_xdist():
        pytest.skip("pytest-xdist is not installed")
    with_out, with_log = _unrelated(tmp_path, *args, plugin=True)
    without_out, without_log = _unrelated(tmp_path, *args, plugin=False)
    assert with_out == without_out
    schedulers = [line for line in with_log if line.startswith("scheduler")]
    assert schedulers == [line for line in without_log if line.startswith("scheduler")]
    assert schedulers == ([] if not args else ["scheduler LoadScheduling"])
    added = _modules(with_log) - _modules(without_log)
    assert added == PLUGIN_MODULES, f"the plugin imported {sorted(added - PLUGIN_MODULES)} " \
                                    f"into a session that does not run the suite"


def _modules(log: list[str]) -> set[str]:
    return {m for line in log if line.startswith("modules ")
            for m in json.loads(line[len("modules "):])}


def _has_xdist() -> bool:
    return importlib.util.find_spec("xdist") is not None


@clause("IMP-8")
def test_options_markers_and_profiles_carry_the_suites_name():
    """Every option the plugin registers is ``--rmsnorm-*``, its markers ``rmsnorm_*``, its
    Hypothesis profiles ``rmsnorm-*``."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    section = proc.stdout.split("rmsnorm-conformance:", 1)[1].split("\n\n", 1)[0]
    options = re.findall(r"^\s+(--[\w-]+)", section, flags=re.M)
    assert options and all(o.startswith("--rmsnorm-") for o in options), options
    from rmsnorm_conformance.conformance import marks, profiles
    assert all(name.startswith("rmsnorm_") for name in marks.MARKERS)
    assert all(name.startswith("rmsnorm-") for name in profiles.NAMES)


@clause("IMP-8")
def test_the_wheel_installs_one_import_name(tmp_path):
    """The wheel built from this checkout holds ``rmsnorm_conformance`` (with the three folders
    and SPEC.md inside it) and its metadata, nothing else at the top level."""
    pytest.importorskip("hatchling")
    out = tmp_path / "wheel"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(out), str(ROOT)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheel, = out.glob("rmsnorm_conformance-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"rmsnorm_conformance",
                                                 f"{wheel.name.split('-py3')[0]}.dist-info"}
    for inside in ("conformance/plugin.py", "reference/__init__.py", "impl/mlx_fast.py",
                   "protocol.py", "SPEC.md", "conformance/schema/results-v1.schema.json"):
        assert f"rmsnorm_conformance/{inside}" in names, inside
    assert not any("__pycache__" in n for n in names)


#: Absolute paths that belong to one machine.
ABSOLUTE = re.compile(r"(?<![\w.:/~-])/(?:work|home|root|Users|tmp|opt|mnt|srv|scratch|var)/[\w.$-]"
                      r"|(?<![\w])[A-Z]:\\\\[\w]")
#: Relative paths that climb: they must stay inside the repository.
CLIMBING = re.compile(r"(?:\.\./)+[\w.-]*")
#: Generated data kept as it was recorded (results carry the recording host's paths).
RECORDED = ("docs/history/", "baselines/")


@clause("IMP-8")
def test_tracked_text_stays_inside_the_repository():
    """No tracked text file names an absolute path of one machine or a path outside the
    repository (examples in prose use relative paths or placeholders)."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    found = []
    for name in files:
        if name.startswith(RECORDED) or name == "tests/test_good_citizen.py":
            continue
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue          # binary (images, gzipped results)
        here = (ROOT / name).parent
        for n, line in enumerate(text.splitlines(), 1):
            outside = ABSOLUTE.search(line) or any(
                ROOT not in [(here / m).resolve(), *(here / m).resolve().parents]
                for m in CLIMBING.findall(line))
            if outside:
                found.append(f"{name}:{n}: {line.strip()[:100]}")
    assert not found, "\n".join(found)


BORROWING_TESTS = '''
from rmsnorm_conformance.conformance.test_dty import test_same_dtype_output  # noqa: F401
'''


@clause("IMP-8")
@pytest.mark.parametrize("args", [(), pytest.param(("-n", "2"), marks=pytest.mark.slow_self_test)],
                         ids=["serial", "xdist"])
def test_a_project_running_a_property_activates_the_suite_when_collected(tmp_path, args):
    """A project's own test module that imports one of the suite's properties, run with no
    ``--rmsnorm-*`` option and arguments that do not reach the suite: the suite activates when
    that test is collected (on an xdist controller, when its first report arrives), so the
    property is parametrised by implementation and the table is printed."""
    if args and not _has_xdist():
        pytest.skip("pytest-xdist is not installed")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_borrowing.py").write_text(BORROWING_TESTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "RMSNORM_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests" / "plugin_fixtures"),
                                                      env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "--assert=plain", "-k", "fake-good", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout, proc.stdout[-2000:]
    assert re.search(r"^DTY-1 +MUST +Same-dtype inputs +pass\s*$", proc.stdout, re.M), \
        proc.stdout[-2000:]


@clause("IMP-8")
def test_only_a_supervised_adapter_is_offered_a_cache(tmp_path):
    """``cache_dir`` gives a supervised adapter ``<artifacts>/cache/<name>`` (where the JAX
    adapters keep compiled programs) and gives None in the caller's own process, whose
    configuration the suite leaves alone."""
    from rmsnorm_conformance.conformance.supervisor import Supervised
    from rmsnorm_conformance.protocol import CACHE_ENV, cache_dir

    assert cache_dir("probe") is None and CACHE_ENV not in os.environ
    impl = Supervised("cache-probe", "tests.fakes:CacheProbe", 30.0, str(tmp_path / "cache"))
    try:
        _, _, env = impl.load()
    finally:
        impl.close()
    assert env["cache"] == str(tmp_path / "cache" / "probe")
    assert (tmp_path / "cache" / "probe").is_dir() and CACHE_ENV not in os.environ


@clause("IMP-8")
def test_a_process_started_ahead_is_the_one_used_or_closed(tmp_path):
    """Without xdist the first implementation's process starts before collection
    (``Entry.prestart``) so that its import overlaps it: loading then uses that process, not a
    second one, and a run that never loads it (every test deselected) leaves no process
    behind."""
    from rmsnorm_conformance.conformance.registry import Entry

    used = Entry(id="cache-probe", value="tests.fakes:CacheProbe", distribution="tests")
    used.prestart(30.0, str(tmp_path / "cache"))
    started = used.started
    assert started is not None and started._proc.is_alive()
    try:
        used.load("process", 30.0, str(tmp_path / "cache"))
        assert used.impl is started and used.started is None and not used.error
    finally:
        used.close()
    assert started._proc is None

    unused = Entry(id="cache-probe", value="tests.fakes:CacheProbe", distribution="tests")
    unused.prestart(30.0, str(tmp_path / "cache"))
    proc = unused.started._proc
    unused.close()
    assert not proc.is_alive() and unused.started is None
