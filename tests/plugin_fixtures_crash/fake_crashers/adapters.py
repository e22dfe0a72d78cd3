"""Adapters that are correct float32 RMSNorms except that, when called, they

    crash-segv      dereference NULL (SIGSEGV), on every call
    crash-fpe       raise SIGFPE, only for long rows (d > LONG_D)
    crash-exit      call os._exit(3), on every call
    crash-abort     call os.abort() (SIGABRT), only for long rows (d > LONG_D)
    crash-hang      sleep for an hour, only for long rows (d > LONG_D)
    hang-always     sleep for an hour, on every call
    garbage-str     return a string
    garbage-lambda  return a lambda (cannot be pickled)
    garbage-lock    return a threading.Lock (cannot be pickled)
    garbage-huge    return a 4 TiB float32 array (a broadcast view: a few bytes of memory)
    garbage-unpickle return an object that pickles in the child but fails to unpickle

``LONG_D`` is above every axis length DTY-1 (d <= 40) and FWD-1 (d <= 64) draw, so the
conditional ones pass those clauses and crash ACC-1 on an input with d > LONG_D: the reported
input then shows which input did it. Every crasher turns off core dumps first.

With ``FAKE_CRASHERS_LOG`` set, every call that is about to misbehave first appends a line
``<class> <shape of x>`` to that file, so that a test can count the crashing calls (a crash
must not be retried or shrunk).

The ``evil-*`` ones are left out of ``--impl 'garbage-*'`` on purpose:

    evil-unpickle-exit  returns an object whose unpickling calls os._exit(3) (in the parent)

Everything here runs in the supervised child process (conformance/supervisor.py); importing
this module is harmless (the parent imports it through the entry point).
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import threading
import time

import numpy as np

from rmsnorm_conformance import reference
from rmsnorm_conformance.protocol import Capabilities, Implementation

CAPS = Capabilities(dtypes=("float32",), weight_none=True)
LONG_D = 100


def _rms_norm(x, weight, eps):
    """Correct to float32 rounding: the project's float64 reference, rounded once."""
    return reference.rms_norm(x, weight, eps).astype(np.float32)


def _no_core():
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _log(obj, x):
    path = os.environ.get("FAKE_CRASHERS_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{type(obj).__name__} {list(x.shape)}\n".encode())
        finally:
            os.close(fd)


class Good(Implementation):
    capabilities = CAPS

    def misbehave(self, x):
        """Return NotImplemented to compute normally, or anything else to return it."""
        return NotImplemented

    def rms_norm(self, x, weight, eps, layout=None):
        out = self.misbehave(x)
        return _rms_norm(x, weight, eps) if out is NotImplemented else out


class Segv(Good):
    def misbehave(self, x):
        _log(self, x)
        _no_core()
        ctypes.string_at(0)


class Fpe(Good):
    def misbehave(self, x):
        if x.shape[-1] > LONG_D:
            _log(self, x)
            _no_core()
            os.kill(os.getpid(), signal.SIGFPE)
        return NotImplemented


class Exit3(Good):
    def misbehave(self, x):
        _log(self, x)
        os._exit(3)


class Abort(Good):
    def misbehave(self, x):
        if x.shape[-1] > LONG_D:
            _log(self, x)
            _no_core()
            os.abort()
        return NotImplemented


class Hang(Good):
    def misbehave(self, x):
        if x.shape[-1] > LONG_D:
            _log(self, x)
            time.sleep(3600)
        return NotImplemented


class HangAlways(Good):
    """Hangs on every call: after its first time-out the others get a shortened limit."""

    def misbehave(self, x):
        _log(self, x)
        time.sleep(3600)


class ReturnsStr(Good):
    def misbehave(self, x):
        return "not an array"


class ReturnsLambda(Good):
    def misbehave(self, x):
        return lambda: x


class ReturnsLock(Good):
    def misbehave(self, x):
        return threading.Lock()


HUGE = (1 << 40,)   # 4 TiB of float32; np.broadcast_to makes it a view of one element


class ReturnsHuge(Good):
    def misbehave(self, x):
        return np.broadcast_to(np.float32(0), HUGE)


def _refuse_unpickling(message):
    raise ValueError(message)


class BadPickle:
    """Pickles fine (in the child) but raises while being unpickled (in the parent)."""

    def __reduce__(self):
        return _refuse_unpickling, ("this object refuses to be unpickled",)


class ReturnsBadPickle(Good):
    def misbehave(self, x):
        return BadPickle()


class ExitOnUnpickle:
    """Pickles fine (in the child); unpickling it (in the parent) calls os._exit(3)."""

    def __reduce__(self):
        return os._exit, (3,)


class ReturnsExitOnUnpickle(Good):
    def misbehave(self, x):
        return ExitOnUnpickle()


segv = Segv()
fpe = Fpe()
exit3 = Exit3()
abort = Abort()
hang = Hang()
hang_always = HangAlways()
returns_str = ReturnsStr()
returns_lambda = ReturnsLambda()
returns_lock = ReturnsLock()
returns_huge = ReturnsHuge()
returns_bad_pickle = ReturnsBadPickle()
returns_exit_on_unpickle = ReturnsExitOnUnpickle()
