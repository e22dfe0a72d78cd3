"""rmsnorm-conformance: a property-based conformance suite for RMSNorm.

The distribution installs this one import package and nothing else at the top level:

    rmsnorm_conformance.protocol     the adapter protocol (``Implementation``, ``Capabilities``)
    rmsnorm_conformance.conformance  the suite: clauses' properties, strategies, bounds, plugin
    rmsnorm_conformance.reference    the float64 reference and the exact oracle
    rmsnorm_conformance.impl         the adapters this distribution registers

Adapter authors import the protocol from here: ``from rmsnorm_conformance import
Capabilities, Implementation``. The names are resolved on first use, so that importing the
package (as pytest does for the plugin in every session) costs nothing.

In the repository the three subpackages are its top-level folders ``conformance/``,
``reference/`` and ``impl/`` (the layout the project is designed around); the wheel places them
inside this package (``pyproject.toml``, ``[tool.hatch.build.targets.wheel.sources]``), and in a
checkout this package's path reaches the repository root for them.
"""

from __future__ import annotations

import importlib
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
if not os.path.isdir(os.path.join(_HERE, "conformance")):      # a checkout, not a wheel
    __path__.append(os.path.dirname(_HERE))   # noqa: F821 - the package's own __path__

#: The entry-point group implementations register under ...
GROUP = "rmsnorm_conformance.implementations"
#: ... or under this one, to be tested only when ``--rmsnorm-impl`` selects them (a run too
#: slow for everyone's default run: MLX's compiled CPU kernels are built by g++ on first use).
OPT_IN_GROUP = "rmsnorm_conformance.implementations.opt_in"

#: What ``from rmsnorm_conformance import *`` and attribute access give: the adapter protocol.
_PROTOCOL = ("Capabilities", "DTYPES", "Implementation", "LAYOUTS", "LOW_PRECISION", "Layout",
             "MIXED", "ModuleInfo", "as_implementation", "cache_dir")
__all__ = [*_PROTOCOL, "GROUP", "OPT_IN_GROUP", "__version__"]


def __getattr__(name: str):
    if name in _PROTOCOL:
        value = getattr(importlib.import_module("rmsnorm_conformance.protocol"), name)
    elif name == "__version__":
        from importlib.metadata import PackageNotFoundError, version
        try:
            value = version("rmsnorm-conformance")
        except PackageNotFoundError:      # a checkout that is not installed
            value = "0+unknown"
    else:
        raise AttributeError(f"module 'rmsnorm_conformance' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
