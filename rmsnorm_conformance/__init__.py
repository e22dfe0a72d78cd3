"""The public import for adapter authors: ``from rmsnorm_conformance import Implementation``.

Everything here is defined in ``impl.protocol`` (the adapter protocol) and re-exported under the
distribution's own, unambiguous name, so that an adapter never has to import a generic top-level
name such as ``impl`` that could collide with a package of its own.
"""

from importlib.metadata import PackageNotFoundError, version as _version

from impl.protocol import (DTYPES, LAYOUTS, MIXED, Capabilities, Implementation, Layout,
                           ModuleInfo, as_implementation)

try:
    __version__ = _version("rmsnorm-conformance")
except PackageNotFoundError:      # running from a checkout that is not installed
    __version__ = "0+unknown"

#: The entry-point group implementations register under ...
GROUP = "rmsnorm_conformance.implementations"
#: ... or under this one, to be tested only when ``--impl`` selects them (a run too slow for
#: everyone's default run: JAX/Flax compile every shape, MLX's compiled CPU kernels are built by
#: g++).
OPT_IN_GROUP = "rmsnorm_conformance.implementations.opt_in"

__all__ = ["Capabilities", "DTYPES", "GROUP", "OPT_IN_GROUP", "Implementation", "LAYOUTS", "Layout", "MIXED",
           "ModuleInfo", "as_implementation", "__version__"]
