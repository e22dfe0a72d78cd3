"""Import every module of the suite's own packages (a pytest plugin: ``-p tests.preload``).

Why: Hypothesis (6.1xx) draws, with a small probability, integers and floats from a pool of
constants it harvests from the *local* (non-test, non-site-packages) modules loaded in the
process, so a derandomised property meets different examples depending on which of the suite's
modules happen to be imported: ``pytest -n auto`` imports ``reference.exact`` (through
``tests/test_reference.py``), ``pytest conformance`` does not, and their examples differ. With
every suite module imported first, the pool is the same in every run: the default run's. The
kill tests (``tests/shipped.py``) import this module; subprocess runs that must meet the default
run's examples (``tests/test_catches_faults.py``, ``tests/kill_matrix.py``) load it with ``-p``.
Loading it in ``conformance/plugin.py`` instead would make every run agree.
"""

from __future__ import annotations

import importlib
import pkgutil

#: the suite's packages (those the wheel ships)
PACKAGES = ("conformance", "impl", "reference", "rmsnorm_conformance")


def import_suite_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
            if not info.name.startswith("test_"):      # Hypothesis skips test modules
                importlib.import_module(f"{package}.{info.name}")
                names.append(f"{package}.{info.name}")
    return names


import_suite_modules()
