"""Importing this module kills the interpreter (SIGSEGV): an entry point that cannot even be
loaded (IMP-1); the supervisor loads it in a child process, so the run goes on."""

import ctypes
import resource

resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
ctypes.string_at(0)

adapter = None   # never reached
