"""Running implementation calls in a supervised child process (SPEC.md, IMP-4 and IMP-5).

An adapter may kill the interpreter (segmentation fault, SIGFPE, abort, ``os._exit``), hang, or
return something absurd. With isolation on (the default) every adapter call runs in a child
process started from a forkserver (NumPy preloaded; the adapter's framework is imported after the
fork: forking after a threaded native library has initialised is unsafe in general). A start
costs the framework's import (about half a second for MLX, once per implementation and pytest
process, again only after a crash or hang); a call about half a millisecond of pickling. The parent waits at most
``timeout`` seconds, and a hung child writes its stacks to a file that the report includes.

A crash or a time-out raises ``ImplementationCrashed`` or ``ImplementationTimedOut``. Both derive
from BaseException on purpose: Hypothesis does not catch them, so it neither shrinks (which would
re-run the crash or the hang many times) nor retries; the test fails at once with the exact input
that caused it, and the next call starts a fresh child.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import multiprocessing as mp
import os
import pathlib
import pickle
import signal
import tempfile
import time
import traceback

import numpy as np

from impl.protocol import Implementation, ModuleInfo, as_implementation

#: A result larger than this is not sent back: it is described instead (IMP-5).
MAX_RESULT_BYTES = 256 * 1024 * 1024
CALLS = ("rms_norm", "vjp", "jvp", "hvp", "module_info", "functional", "functional_vjp")


class ImplementationDied(BaseException):
    """The implementation's process crashed or hung. BaseException: not shrunk by Hypothesis."""

    kind = "died"


class ImplementationCrashed(ImplementationDied):
    kind = "crashed"


class ImplementationTimedOut(ImplementationDied):
    kind = "timed out"


class BadResult(Exception):
    """The adapter returned something that is not plain data (IMP-5): a clause failure."""


class _SafeUnpickler(pickle.Unpickler):
    """Rebuilds only plain data: nothing from the child may run code in the suite's process."""

    ALLOWED = ("numpy", "ml_dtypes")

    def find_class(self, module, name):
        if module.split(".")[0] in self.ALLOWED or (module, name) in (
                ("impl.protocol", "ModuleInfo"), ("builtins", "complex"), ("builtins", "slice"),
                ("collections", "OrderedDict")):
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


def _child(conn, spec: str, timeout: float, stack_file: str):
    import faulthandler

    # the child must not react to the terminal's Ctrl-C (the parent handles it)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    module, _, attr = spec.partition(":")
    import importlib
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    impl = as_implementation(obj)
    while True:
        try:
            name, args = conn.recv()
        except EOFError:
            return
        # a call about to time out first dumps every thread's stack (read by the parent)
        dump = open(stack_file, "w")
        faulthandler.dump_traceback_later(max(timeout * 0.9, timeout - 2), exit=False, file=dump)
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
    """The child's exception as the nearest builtin type, named like the original, with the
    child's traceback as a note (so ValueError subclasses still satisfy VAL clauses)."""
    for base_name in names:
        base = getattr(builtins, base_name, None)
        if isinstance(base, type) and issubclass(base, Exception):
            cls = base if base_name == names[0] else type(names[0], (base,), {})
            try:
                exc = cls(message)
            except TypeError:      # constructors with other signatures (UnicodeDecodeError)
                continue
            exc.add_note("in the implementation's process:\n" + tb)
            return exc
    return RuntimeError(f"{names[0]}: {message}")


def _signal_name(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name} ({-code})"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class Supervised(Implementation):
    """A proxy for an adapter whose calls run in a supervised child process."""

    def __init__(self, inner: Implementation, spec: str, timeout: float):
        self.inner = inner
        self.id = inner.id
        self.capabilities = inner.capabilities
        self.spec = spec
        self.timeout = timeout
        self._proc = None
        self._conn = None

    def unavailable_reason(self):
        return self.inner.unavailable_reason()

    def _start(self):
        ctx = mp.get_context("forkserver")
        # Preload only what is fork-safe: the adapter's framework is imported after the fork.
        ctx.set_forkserver_preload(["numpy", "ml_dtypes", "impl.protocol"])
        parent, child = ctx.Pipe()
        fd, self._stack_file = tempfile.mkstemp(prefix=f"rmsnorm-{self.id}-", suffix=".stack")
        os.close(fd)
        self._proc = ctx.Process(target=_child, daemon=True,
                                 args=(child, self.spec, self.timeout, self._stack_file),
                                 name=f"rmsnorm-impl-{self.id}")
        self._proc.start()
        child.close()
        self._conn = parent

    def close(self):
        if getattr(self, "_stack_file", None):
            pathlib.Path(self._stack_file).unlink(missing_ok=True)
            self._stack_file = None
        if self._proc is not None and self._proc.pid is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(5)
        self._proc = self._conn = None

    def _call(self, name, *args):
        if self._proc is None or not self._proc.is_alive():
            self.close()
            self._start()
        try:
            self._conn.send((name, args))
            ready = self._conn.poll(self.timeout)
            data = self._conn.recv_bytes() if ready else None
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
            ready, data = True, None
        reply = None
        if data is not None:
            try:
                reply = _SafeUnpickler(io.BytesIO(data)).load()
            except Exception as e:   # noqa: BLE001 - whatever the bytes were, a clause failure
                raise BadResult(f"returned an object that is not plain data "
                                f"({type(e).__name__}: {e})") from None
        if reply is None:
            if not ready:
                time.sleep(min(2.0, self.timeout * 0.1))   # let the stack dump land
                stack = pathlib.Path(self._stack_file).read_text(errors="replace").strip()
                self.close()
                raise ImplementationTimedOut(
                    f"{self.id}: {name} did not return within {self.timeout:g} s "
                    f"(--call-timeout); the process was killed. Its stacks:\n{stack}")
            self._proc.join(5)
            code = self._proc.exitcode
            self.close()
            how = (_signal_name(code) if code is not None
                   else "its pipe closed while it was still alive (killed)")
            raise ImplementationCrashed(f"{self.id}: the process running {name} died with "
                                        f"{how}")
        status = reply[0]
        if status == "ok":
            return reply[1]
        if status == "raised":
            raise _rebuild_exception(*reply[1:])
        raise BadResult(reply[1])   # not plain data, or enormous: a clause failure


@contextlib.contextmanager
def time_limit(impl, seconds: float):
    """Within the block, calls of a supervised implementation time out after at most ``seconds``
    (for calls that have no work to do, e.g. zero-size inputs)."""
    if not isinstance(impl, Supervised):
        yield
        return
    saved, impl.timeout = impl.timeout, min(impl.timeout, seconds)
    try:
        yield
    finally:
        impl.timeout = saved


def _forward(name):
    def method(self, *args):
        return self._call(name, *args)
    method.__name__ = name
    return method


for _name in CALLS:
    setattr(Supervised, _name, _forward(_name))
