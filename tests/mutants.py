"""The catalogue of mutants: every faulty implementation of ``tests/fakes.py`` and
``tests/grad_fakes.py``, by id (``mutant-<name>``), each with the clause that must catch it.

The same ids are the entry points of the fixture distribution ``tests/mutants_dist`` (so that
``PYTHONPATH=tests/mutants_dist pytest conformance --rmsnorm-impl mutant-<name>`` runs the suite against
one), and the rows of ``docs/MUTANTS.md``.

``SURVIVES_TODAY`` lists the mutants that the shipped run's examples cannot catch yet, and why:
the kill test expects exactly those to survive (strict xfail), so a strategy change that starts
catching one fails until it is taken off the list.
"""

from __future__ import annotations

import inspect

from tests import fakes, grad_fakes


def _classes():
    out = []
    for module in (fakes, grad_fakes):
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, fakes._Named) and obj.target
                    and obj.__module__ == module.__name__):
                out.append(obj)
    return out


#: id -> mutant class (a zero-argument factory), in definition order
MUTANTS = {cls.id: cls for cls in _classes()}


def bug(cls) -> str:
    """The docstring as one line: what the bug is."""
    return " ".join((cls.__doc__ or "").split())


def kind(cls) -> str:
    """forward, backward or module (for the catalogue)."""
    if issubclass(cls, fakes.ModuleMutant):
        return "module"
    return "backward" if cls.__module__ == grad_fakes.__name__ else "forward"


#: mutant id -> why the default run's examples never catch it with today's strategies
SURVIVES_TODAY: dict[str, str] = {}
