"""Run the conformance suite against several MLX releases and write the history page.

For each VERSION: a fresh virtual environment (``PYTHON -m venv``), ``pip install
"mlx[cpu]==VERSION"`` with this suite (a wheel built once from the checkout with ``pip wheel
--no-deps``, installed with its dependencies: the environment running this command is not
touched) and pytest-xdist, then, from an empty working directory,

    python -m pytest --pyargs rmsnorm_conformance.conformance -n auto --rmsnorm-impl mlx-fast-cpu \\
        --rmsnorm-impl mlx-nn-cpu --rmsnorm-results DIR/mlx-VERSION.json -p no:cacheprovider

A non-zero pytest exit is normal (failures are results); a release counts as failed only when it
leaves no valid results file (install failure, time limit). Each release's output goes to
DIR/logs/mlx-VERSION.log; DIR/sweep.json records how each run went. Then the history page
(--history, default DIR/HISTORY.md): a table clause x release per implementation (status and
worst error), and every change between neighbouring releases (status, worst error beyond the
diff margin) with its explanation from the hand-written notes file (--notes, default
docs/history-notes.md beside the page): see that file's format in docs/TOOLS.md. ``--no-run``
regenerates the page from the results already in DIR (mlx-VERSION.json, or gzipped
mlx-VERSION.json.gz, as kept in docs/history/).

exit status: 0 every release gave results and the page was written; 1 some release gave no
results (the page is still written, saying why); 2 bad usage.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from rmsnorm_conformance.conformance import results
from rmsnorm_conformance.conformance.tools import _history, diff
from rmsnorm_conformance.conformance.tools._common import ToolError, display_path, emit

HELP = "run the suite against MLX releases in fresh venvs; write the release history page"

DEFAULT_TIME_LIMIT = 1800.0
#: MLX's eager CPU implementations (the compiled ones are opt-in: g++ builds every kernel)
DEFAULT_IMPL = ("mlx-fast-cpu", "mlx-nn-cpu")
#: a release's results in the output folder: mlx-VERSION.json, or kept compressed (.json.gz)
RESULTS_NAME = re.compile(r"mlx-(.+)\.json(?:\.gz)?")
MLX_SPEC = "mlx[cpu]=={version}" if sys.platform.startswith("linux") else "mlx=={version}"


def add_arguments(parser) -> None:
    parser.add_argument("versions", nargs="*", metavar="VERSION", help="MLX releases, e.g. 0.32.4")
    parser.add_argument("--out-dir", required=True, metavar="DIR",
                        help="where results (mlx-VERSION.json), logs and sweep.json go")
    parser.add_argument("--history", metavar="PATH",
                        help="the history page to write (default DIR/HISTORY.md)")
    parser.add_argument("--notes", metavar="PATH",
                        help="hand-written explanations (default history-notes.md beside the "
                             "history page)")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter the virtual environments are made from "
                             "(default: the one running this command)")
    parser.add_argument("--keep-venvs", action="store_true",
                        help="keep the environments in DIR/venvs (default: removed after each "
                             "release)")
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, metavar="S",
                        help=f"seconds per release, install and run (default "
                             f"{DEFAULT_TIME_LIMIT:.0f})")
    parser.add_argument("--impl", action="append", default=None, metavar="ID",
                        help=f"an implementation id or glob passed to pytest as --rmsnorm-impl (repeatable; default "
                             f"{' '.join(DEFAULT_IMPL)})")
    parser.add_argument("--mlx-spec", default=MLX_SPEC,
                        help=f"pip requirement for a release, {{version}} replaced (default "
                             f"{MLX_SPEC!r})")
    parser.add_argument("--source", metavar="DIR",
                        help="the suite's checkout to build the wheel from (default: the one "
                             "this command runs from)")
    parser.add_argument("--pytest-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for pytest (repeatable), e.g. "
                             "--pytest-arg=--hypothesis-profile=rmsnorm-thorough")
    parser.add_argument("--no-run", action="store_true",
                        help="only regenerate the page from DIR's results (VERSIONs optional: "
                             "default every release in DIR/sweep.json or DIR/mlx-*.json)")
    parser.add_argument("--margin-ratio", type=float, default=diff.DEFAULT_RATIO, metavar="R")
    parser.add_argument("--margin-ulps", type=float, default=diff.DEFAULT_ULPS, metavar="U")


@dataclasses.dataclass
class Outcome:
    version: str
    results: str               # path of the results file (may not exist)
    log: str
    seconds: float
    message: str               # "pytest exit 1", "pip install failed (exit 1)", ...
    ok: bool = False           # a valid results file exists

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


def version_key(v: str):
    from packaging.version import InvalidVersion, Version

    try:
        return (0, Version(v), v)
    except InvalidVersion:
        return (1, None, v)


def find_source(explicit: str | None) -> pathlib.Path:
    if explicit:
        src = pathlib.Path(explicit).resolve()
    else:
        src = pathlib.Path(__file__).resolve().parents[2]
    pyproject = src / "pyproject.toml"
    if not pyproject.is_file() or 'name = "rmsnorm-conformance"' not in pyproject.read_text(
            encoding="utf-8"):
        raise ToolError(f"{src} is not a checkout of rmsnorm-conformance (no pyproject.toml "
                        f"naming it); pass --source DIR")
    return src


def _run_logged(cmd: list[str], log, deadline: float, **kw) -> int | None:
    """Run ``cmd`` with its output appended to ``log``; None when the deadline passed (the whole
    process group is killed)."""
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, **kw)
    try:
        return proc.wait(timeout=remaining)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


class VenvRunner:
    """The real steps: build the wheel once, then per release a venv, pip install, pytest."""

    def __init__(self, out_dir: pathlib.Path, *, python: str, source: pathlib.Path,
                 time_limit: float, keep_venvs: bool, impl: tuple, mlx_spec: str,
                 pytest_args: list[str]):
        self.out_dir, self.python, self.source = out_dir, python, source
        self.time_limit, self.keep_venvs = time_limit, keep_venvs
        self.impl, self.mlx_spec, self.pytest_args = impl, mlx_spec, list(pytest_args)
        self.wheel: pathlib.Path | None = None

    def prepare(self) -> None:
        wheel_dir = self.out_dir / "wheel"
        shutil.rmtree(wheel_dir, ignore_errors=True)
        wheel_dir.mkdir(parents=True)
        log_path = self.out_dir / "logs" / "wheel.log"
        with open(log_path, "w", encoding="utf-8") as log:
            rc = _run_logged([sys.executable, "-m", "pip", "wheel", "--no-deps",
                              "--disable-pip-version-check", "--wheel-dir", str(wheel_dir),
                              str(self.source)], log, time.monotonic() + 600)
        wheels = sorted(wheel_dir.glob("rmsnorm_conformance-*.whl"))
        if rc != 0 or not wheels:
            raise ToolError(f"building the suite's wheel from {self.source} failed; see "
                            f"{log_path}")
        self.wheel = wheels[-1]

    def __call__(self, version: str, out_json: pathlib.Path, log_path: pathlib.Path) -> str:
        deadline = time.monotonic() + self.time_limit
        venv = self.out_dir / "venvs" / f"mlx-{version}"
        shutil.rmtree(venv, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        py = str(venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env["PATH"] = str(pathlib.Path(py).parent) + os.pathsep + env.get("PATH", "")
        try:
            with open(log_path, "w", encoding="utf-8") as log, \
                    tempfile.TemporaryDirectory(prefix="rmsnorm-sweep-") as cwd:
                rc = _run_logged([self.python, "-m", "venv", str(venv)], log, deadline, env=env)
                if rc != 0:
                    return self._failed("python -m venv", rc)
                rc = _run_logged([py, "-m", "pip", "install", "--disable-pip-version-check",
                                  self.mlx_spec.format(version=version), str(self.wheel),
                                  "pytest-xdist"], log, deadline, env=env)
                if rc != 0:
                    return self._failed("pip install", rc)
                rc = _run_logged([py, "-m", "pytest", "--pyargs", "rmsnorm_conformance.conformance", "-n", "auto",
                                  *(a for i in self.impl for a in ("--rmsnorm-impl", i)),
                                  "--rmsnorm-results", str(out_json),
                                  "-p", "no:cacheprovider", *self.pytest_args],
                                 log, deadline, env=env, cwd=cwd)
                if rc is None:
                    return self._failed("pytest", rc)
                return f"pytest exit {rc}"
        finally:
            if not self.keep_venvs:
                shutil.rmtree(venv, ignore_errors=True)
                try:
                    venv.parent.rmdir()            # DIR/venvs, when nothing else is kept there
                except OSError:
                    pass

    def _failed(self, step: str, rc: int | None) -> str:
        if rc is None:
            return f"{step} ran past the time limit of {self.time_limit:.0f} s (killed)"
        return f"{step} failed (exit {rc})"


def run_releases(versions: list[str], out_dir: pathlib.Path, runner) -> list[Outcome]:
    """Run each release with ``runner(version, results_path, log_path) -> message`` and check
    what it left. Tests pass a fake runner that writes canned results files."""
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    outcomes = []
    for v in versions:
        out_json = out_dir / f"mlx-{v}.json"
        log = out_dir / "logs" / f"mlx-{v}.log"
        out_json.unlink(missing_ok=True)
        print(f"mlx {v}: running ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        message = runner(v, out_json, log)
        seconds = time.monotonic() - t0
        outcome = Outcome(v, str(out_json), str(log), round(seconds, 1), message)
        if not out_json.exists():
            outcome.message += f"; no results file (see logs/{log.name} in {out_dir})"
        else:
            try:
                results.load(out_json)
                outcome.ok = True
            except results.ResultsError as e:
                outcome.message += f"; unusable results: {e}"
        print(f"mlx {v}: {'results' if outcome.ok else 'NO RESULTS'} in {seconds:.0f} s "
              f"({outcome.message})", file=sys.stderr, flush=True)
        outcomes.append(outcome)
    return outcomes


def _manifest(out_dir: pathlib.Path) -> dict[str, dict]:
    path = out_dir / "sweep.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {o["version"]: o for o in data.get("releases", [])}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _write_manifest(out_dir: pathlib.Path, outcomes: list[Outcome]) -> None:
    known = _manifest(out_dir)
    known.update({o.version: o.as_json() for o in outcomes})
    data = {"schema": "rmsnorm-conformance/sweep", "schema_version": 1,
            "releases": [known[v] for v in sorted(known, key=version_key)]}
    results.write_text_atomic(out_dir / "sweep.json", json.dumps(data, indent=1) + "\n")


def collect(versions: list[str], out_dir: pathlib.Path,
            base: pathlib.Path | None = None) -> list[_history.Release]:
    """The releases' results as they are in ``out_dir`` (missing or unusable ones say why), with
    paths relative to ``base`` (the history page's directory)."""
    manifest = _manifest(out_dir)
    releases = []
    for v in versions:
        path = out_dir / f"mlx-{v}.json"
        if not path.exists() and path.with_name(path.name + ".gz").exists():   # kept compressed
            path = path.with_name(path.name + ".gz")
        record = manifest.get(v, {})
        message = record.get("message", "")
        try:
            doc = results.load(path)
        except results.ResultsError as e:
            doc = None
            if record.get("ok") or not message:       # the file changed since, or no record
                message = str(e)
        releases.append(_history.Release(v, doc, display_path(path, base), message))
    return releases


def write_history(versions: list[str], out_dir: pathlib.Path, history: pathlib.Path,
                  notes_path: pathlib.Path, margin: diff.Margin, command: str) -> int:
    releases = collect(versions, out_dir, history.parent)
    notes = (_history.parse_notes(notes_path.read_text(encoding="utf-8"))
             if notes_path.is_file() else {})
    text, unexplained = _history.render(releases, notes, margin,
                                        display_path(notes_path, history.parent), command)
    history.parent.mkdir(parents=True, exist_ok=True)
    emit(text, str(history))
    print(f"wrote {history}: {len(releases)} release(s), {unexplained} unexplained change(s)",
          file=sys.stderr)
    return unexplained


def make_runner(args, out_dir: pathlib.Path):
    """The release runner (tests replace this with a fake)."""
    runner = VenvRunner(out_dir, python=args.python, source=find_source(args.source),
                        time_limit=args.time_limit, keep_venvs=args.keep_venvs,
                        impl=tuple(args.impl or DEFAULT_IMPL),
                        mlx_spec=args.mlx_spec, pytest_args=args.pytest_arg)
    runner.prepare()
    return runner


def run(args) -> int:
    out_dir = pathlib.Path(args.out_dir)
    if not (args.margin_ratio >= 1 and args.margin_ulps >= 0):
        raise ToolError("--margin-ratio must be >= 1 and --margin-ulps >= 0")
    versions = list(dict.fromkeys(args.versions))
    if args.no_run and not versions:      # every release run before (sweep.json) or present
        versions = sorted(set(_manifest(out_dir)) | {RESULTS_NAME.fullmatch(p.name)[1]
                                                     for p in out_dir.glob("mlx-*.json*")
                                                     if RESULTS_NAME.fullmatch(p.name)})
    if not versions:
        raise ToolError("name at least one MLX release (e.g. 0.32.4)" if not args.no_run
                        else f"no mlx-*.json results in {out_dir}")
    versions.sort(key=version_key)
    history = pathlib.Path(args.history) if args.history else out_dir / "HISTORY.md"
    notes = pathlib.Path(args.notes) if args.notes else history.parent / "history-notes.md"
    outcomes = []
    if not args.no_run:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "logs").mkdir(exist_ok=True)
        except OSError as e:
            raise ToolError(f"cannot create {out_dir}: {e.strerror or e}") from None
        runner = make_runner(args, out_dir)
        outcomes = run_releases(versions, out_dir, runner)
        _write_manifest(out_dir, outcomes)
    command = "rmsnorm-conformance sweep " + " ".join(versions)
    write_history(versions, out_dir, history, notes, diff.Margin(args.margin_ratio,
                                                                 args.margin_ulps), command)
    if args.no_run:
        return 0 if all(r.doc is not None for r in collect(versions, out_dir)) else 1
    return 0 if all(o.ok for o in outcomes) else 1
