"""Loading and calling an implementation in a supervised child process (SPEC.md, IMP-1, IMP-4,
IMP-5).

An adapter may kill the interpreter (segmentation fault, SIGFPE, abort, ``os._exit``), hang, or
return something absurd, while being imported or while called. With isolation on (the default)
the entry point is loaded in a child process started from a forkserver (NumPy preloaded; the
adapter's framework is imported after the fork: forking after a threaded native library has
initialised is unsafe in general), which reports the adapter's capabilities, why it is
unavailable (if it is) and its environment, and then serves the adapter's calls. A start costs
the framework's import (once per implementation and pytest process, again only after a crash or
hang); a call about half a millisecond of pickling.

The parent waits at most the call's limit. A hung child writes its stacks to a file that the
report includes. The limit is ``--rmsnorm-call-timeout``, or a clause's own (``time_limit``), and after an
implementation's first time-out each later call of it is limited to
``max(AFTER_HANG_MIN, AFTER_HANG_FACTOR x its slowest completed call)`` (at most the call
timeout), so that an implementation that hangs on every call of one kind costs seconds per
affected test, not the full timeout each time.

A crash or a time-out raises ``ImplementationCrashed`` or ``ImplementationTimedOut``. Both derive
from BaseException on purpose: Hypothesis does not catch them, so it neither shrinks (which would
re-run the crash or the hang many times) nor retries; the test fails at once with the exact input
that caused it, and the next call starts a fresh child.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import io
import multiprocessing as mp
import os
import pathlib
import pickle
import signal
import socket
import tempfile
import time
import traceback
from collections import OrderedDict

import numpy as np

from rmsnorm_conformance import protocol
from rmsnorm_conformance.conformance.errors import (BadResult, ImplementationCrashed,  # noqa: F401
                                                     ImplementationDied, ImplementationTimedOut,
                                                     LoadError, Relayed, SuiteError, add_note)
from rmsnorm_conformance.protocol import Capabilities, Implementation, ModuleInfo, as_implementation

#: A result larger than this is not sent back: it is described instead (IMP-5).
MAX_RESULT_BYTES = 256 * 1024 * 1024
AFTER_HANG_MIN = 1.0
AFTER_HANG_FACTOR = 10.0


class _SafeUnpickler(pickle.Unpickler):
    """Rebuilds only plain data: nothing from the child may run code in the suite's process."""

    ALLOWED = ("numpy", "ml_dtypes")
    CLASSES = frozenset((c.__module__, c.__qualname__)
                        for c in (ModuleInfo, Capabilities, complex, slice, OrderedDict))

    def find_class(self, module, name):
        if module.split(".")[0] in self.ALLOWED or (module, name) in self.CLASSES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"numpy.ndarray of shape {value.shape}, dtype {value.dtype}, {value.nbytes} bytes"
    return f"{type(value).__module__}.{type(value).__name__}"


def _plain_problem(value, budget: list) -> str | None:
    """Why ``value`` is not plain data (arrays, numbers, strings, None, ModuleInfo and tuples,
    lists and dicts of those, in all at most MAX_RESULT_BYTES), or None."""
    if value is None or isinstance(value, (bool, int, float, complex, str, np.generic)):
        return None
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            return f"an object array ({_describe(value)})"
        budget[0] -= value.nbytes
        if budget[0] < 0:
            return f"an enormous result ({_describe(value)}, over {MAX_RESULT_BYTES} bytes)"
        return None
    if isinstance(value, ModuleInfo):
        return _plain_problem(value.parameters, budget)
    if isinstance(value, (tuple, list)):
        items = value
    elif isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    else:
        return _describe(value)
    for item in items:
        problem = _plain_problem(item, budget)
        if problem:
            return problem
    return None


def load_entry(spec: str):
    """Import ``module:attr`` and return the adapter (an instance, or a factory's result)."""
    import importlib

    module, _, attr = spec.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return as_implementation(obj)


def describe_loaded(impl) -> tuple:
    """(capabilities as a plain Capabilities, unavailable reason, environment) of a loaded
    adapter; raises LoadError with the reason when the adapter's own answers are malformed."""
    caps = impl.capabilities
    if not isinstance(caps, Capabilities):
        raise LoadError(f"capabilities is {type(caps).__name__}, not "
                        f"rmsnorm_conformance.Capabilities")
    caps = Capabilities(**{f.name: getattr(caps, f.name) for f in dataclasses.fields(caps)})
    try:
        reason = impl.unavailable_reason()
    except Exception as e:   # noqa: BLE001 - the adapter's own defect, reported by IMP-1
        raise LoadError(f"unavailable_reason() raised {type(e).__name__}: {e}") from None
    try:       # where it cannot run, what it would run on may not be knowable: not asked
        env = {} if reason is not None else {
            str(k): str(v) for k, v in (impl.environment() or {}).items()}
    except Exception as e:   # noqa: BLE001
        raise LoadError(f"environment() raised {type(e).__name__}: {e}") from None
    env.setdefault("host", socket.gethostname())     # where it ran (--tx spreads over hosts)
    return caps, (None if reason is None else str(reason)), env


def _child(conn, spec: str, stack_file: str, cache: str | None):
    import faulthandler

    # the child must not react to the terminal's Ctrl-C (the parent handles it)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if cache:                       # protocol.cache_dir: this process is the adapter's own
        os.environ[protocol.CACHE_ENV] = cache
    try:
        impl = load_entry(spec)
        reply = ("loaded", *describe_loaded(impl))
    except Exception as e:   # noqa: BLE001 - sent back: an IMP-1 finding
        impl = None
        first = (str(e).strip().splitlines() or [""])[0]
        reply = ("error", f"{type(e).__name__}: {first}" if not isinstance(e, LoadError)
                 else first)
    conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
    if impl is None:
        return
    while True:
        try:
            name, args, timeout = conn.recv()
        except EOFError:
            return
        # a call about to time out first dumps every thread's stack (read by the parent)
        dump = open(stack_file, "w")
        faulthandler.dump_traceback_later(max(timeout - 1.0, timeout * 0.8), exit=False,
                                          file=dump)
        try:
            value = getattr(impl, name)(*args)
            problem = _plain_problem(value, [MAX_RESULT_BYTES])
            reply = ("bad", f"returned {problem}") if problem else ("ok", value)
        except Exception as e:   # noqa: BLE001 - sent back and re-raised in the parent
            reply = ("raised", [c.__name__ for c in type(e).__mro__], str(e),
                     traceback.format_exc(limit=6))
        finally:
            faulthandler.cancel_dump_traceback_later()
            dump.close()
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:   # noqa: BLE001 - e.g. a lock inside a tuple
            data = pickle.dumps(("bad", f"returned an object that cannot be sent back "
                                        f"({type(e).__name__}: {e})"))
        conn.send_bytes(data)


def _rebuild_exception(names: list, message: str, tb: str) -> Exception:
    """The child's exception as the nearest builtin type, named like the original and marked
    ``Relayed``, with the child's traceback as a note (so ValueError subclasses still satisfy
    VAL clauses)."""
    for base_name in names:
        base = getattr(builtins, base_name, None)
        if isinstance(base, type) and issubclass(base, Exception):
            cls = type(names[0], (base, Relayed), {})
            try:
                exc = cls(message)
            except TypeError:      # constructors with other signatures (UnicodeDecodeError)
                continue
            add_note(exc, "in the implementation's process:\n" + tb)
            return exc
    return type("RuntimeError", (RuntimeError, Relayed), {})(f"{names[0]}: {message}")


def _signal_name(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name} ({-code})"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class Supervised(Implementation):
    """A proxy for an adapter that lives in a supervised child process: ``load`` starts it and
    learns its capabilities; every call runs there."""

    def __init__(self, impl_id: str, spec: str, timeout: float, cache: str | None = None):
        self.id = impl_id
        self.spec = spec
        self.timeout = timeout
        self.cache = cache              # offered to the adapter (protocol.cache_dir)
        self.capabilities = Capabilities()
        self.hung = False
        self.slowest = 0.0
        self._limit: tuple[float, str] | None = None
        self._proc = None
        self._conn = None
        self._stack_file = None
        self._spawned = 0.0

    # ---- the child process ----------------------------------------------------------------
    def spawn(self) -> None:
        """Start the child, which begins importing the entry point, without waiting for it
        (``load`` waits): a run can let the import overlap its own collection. Does nothing
        when the child is already started."""
        if self._proc is not None:
            return
        ctx = mp.get_context("forkserver")
        # Preload only what is fork-safe: the adapter's framework is imported after the fork.
        ctx.set_forkserver_preload(["numpy", "ml_dtypes", protocol.__name__])
        parent, child = ctx.Pipe()
        fd, self._stack_file = tempfile.mkstemp(prefix=f"rmsnorm-{self.id}-", suffix=".stack")
        os.close(fd)
        self._proc = ctx.Process(target=_child, daemon=True,
                                 args=(child, self.spec, self._stack_file, self.cache),
                                 name=f"rmsnorm-impl-{self.id}")
        self._proc.start()
        self._spawned = time.monotonic()
        child.close()
        self._conn = parent

    def _start(self):
        self.spawn()
        return self._receive("loading", self.timeout, "--rmsnorm-call-timeout",
                             started=self._spawned)

    def load(self):
        """Start the child, which imports the entry point: (capabilities, unavailable reason,
        environment); LoadError (IMP-1) when the import fails, crashes or hangs."""
        try:
            reply = self._start()
        except ImplementationDied as e:
            raise LoadError(str(e).splitlines()[0]) from None
        if reply[0] == "error":
            self.close()
            raise LoadError(reply[1])
        _, self.capabilities, reason, env = reply
        if reason is not None:
            self.close()               # nothing will be called
        return self.capabilities, reason, env

    def close(self):
        if self._stack_file:
            pathlib.Path(self._stack_file).unlink(missing_ok=True)
            self._stack_file = None
        if self._proc is not None and self._proc.pid is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(5)
        self._proc = self._conn = None

    @contextlib.contextmanager
    def limited(self, seconds: float, why: str):
        """Within the block, calls time out after at most ``seconds`` (a clause's own limit for
        calls that have no work to do, e.g. zero-size inputs); ``why`` names the limit in the
        report."""
        saved = self._limit
        self._limit = (min(self.timeout, seconds), why)
        try:
            yield
        finally:
            self._limit = saved

    def _current_limit(self) -> tuple[float, str]:
        limit, why = self._limit or (self.timeout, "--rmsnorm-call-timeout")
        if self.hung:
            short = min(limit, max(AFTER_HANG_MIN, AFTER_HANG_FACTOR * self.slowest))
            if short < limit:
                return short, (f"the shortened limit after an earlier time-out of "
                               f"{self.id} ({AFTER_HANG_FACTOR:g} x its slowest completed call, "
                               f"at least {AFTER_HANG_MIN:g} s)")
        return limit, why

    def _receive(self, name: str, limit: float, why: str, started: float):
        try:
            ready = self._conn.poll(limit)
            data = self._conn.recv_bytes() if ready else None
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
            ready, data = True, None
        if data is not None:
            try:
                return _SafeUnpickler(io.BytesIO(data)).load()
            except Exception as e:   # noqa: BLE001 - whatever the bytes were, a clause failure
                raise BadResult(f"returned an object that is not plain data "
                                f"({type(e).__name__}: {e})") from None
        if not ready:
            stack = self._read_stack()
            self.close()
            self.hung = True
            raise ImplementationTimedOut(
                f"{self.id}: {name} did not return within {limit:g} s ({why}); the process "
                f"was killed. Its stacks:\n{stack or '(none written)'}",
                summary=f"{name} did not return within {limit:g} s ({why})")
        self._proc.join(5)
        code = self._proc.exitcode
        self.close()
        how = (_signal_name(code) if code is not None
               else "its pipe closed while it was still alive (killed)")
        raise ImplementationCrashed(f"{self.id}: the process running {name} died with {how}",
                                    summary=f"the process running {name} died with {how}")

    def _read_stack(self) -> str:
        """The hung child's stacks (faulthandler writes them shortly before the limit)."""
        path = pathlib.Path(self._stack_file)
        for _ in range(20):
            text = path.read_text(errors="replace").strip() if path.exists() else ""
            if text:
                return text
            time.sleep(0.05)
        return ""

    def _call(self, name, *args):
        """Run ``name(*args)`` in the child: its value, or what it raised (``Relayed``); a crash
        or hang raises ImplementationDied, garbage BadResult, and an exception of the suite's
        own making on the way (sending, receiving, rebuilding) SuiteError."""
        try:
            return self._relay(name, *args)
        except (ImplementationDied, BadResult, LoadError, Relayed):
            raise
        except Exception as e:   # noqa: BLE001 - the suite's own defect: never a verdict
            raise SuiteError(f"relaying {self.id}'s {name} failed: {type(e).__name__}: {e}") \
                from e

    def _relay(self, name, *args):
        if self._proc is None or not self._proc.is_alive():
            self.close()
            reply = self._start()
            if reply[0] == "error":
                raise LoadError(reply[1])
        limit, why = self._current_limit()
        started = time.monotonic()
        try:
            self._conn.send((name, args, limit))
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass                       # the child died: _receive reports how
        reply = self._receive(name, limit, why, started)
        self.slowest = max(self.slowest, time.monotonic() - started)
        status = reply[0]
        if status == "ok":
            return reply[1]
        if status == "raised":
            raise _rebuild_exception(*reply[1:])
        raise BadResult(reply[1])   # not plain data, or enormous: a clause failure

    # ---- the protocol's calls, each run in the child (``_call``) ------------------------------
    def rms_norm(self, x, weight, eps, layout=None):
        return self._call("rms_norm", x, weight, eps, layout)

    def rms_norm_sequence(self, calls):
        return self._call("rms_norm_sequence", calls)

    def vjp(self, x, weight, eps, g):
        return self._call("vjp", x, weight, eps, g)

    def vjp_sequence(self, calls):
        return self._call("vjp_sequence", calls)

    def jvp(self, x, weight, eps, tx, tweight):
        return self._call("jvp", x, weight, eps, tx, tweight)

    def hvp(self, x, weight, eps, g, v):
        return self._call("hvp", x, weight, eps, g, v)

    def module_info(self, dims, eps=None):
        return self._call("module_info", dims, eps)

    def functional(self, x, weight, eps):
        return self._call("functional", x, weight, eps)

    def functional_vjp(self, x, weight, eps, g):
        return self._call("functional_vjp", x, weight, eps, g)


@contextlib.contextmanager
def time_limit(impl, seconds: float, why: str):
    """Within the block, calls of a supervised implementation time out after at most ``seconds``
    (``Supervised.limited``); an in-process one is not limited."""
    if not isinstance(impl, Supervised):
        yield
        return
    with impl.limited(seconds, why):
        yield
