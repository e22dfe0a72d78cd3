"""Adapters: RMSNorm in JAX on the CPU: the formula written in ``jax.numpy`` (id
``jax-numpy-cpu``; JAX ships no RMSNorm of its own: neither ``jax.nn`` nor ``jax.numpy`` nor
``jax.lax`` has one, as of jax 0.10.2) and Flax's layer ``flax.nnx.RMSNorm`` (id
``flax-nnx-cpu``; ``flax.linen.RMSNorm`` where flax has no nnx).

Install with ``pip install 'rmsnorm-conformance[jax]'``. JAX and Flax are imported inside the
functions only, so this module imports (and reports why it can't run) without them. float64 is
enabled around each call (``x64``, thread-local: the process's ``jax_enable_x64`` is left alone)
so that float64 inputs are computed in float64; everything else runs in the inputs' types and
float32, bit for bit as without it.

Both are jitted (``jax.jit``), as models run them; a jitted function is reused across calls and
recompiles per shape and dtype. Where the suite offers a cache directory, each compiled program is
also kept there by its call signature (``Programs``), so that a later run loads it instead of
tracing, lowering and compiling it again. Gradients: ``jax.vjp``, ``jax.jvp``, second order
forward-over-reverse (``jax.jvp`` of the ``jax.vjp`` pullback). JAX arrays have no views, so no
layouts are declared.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import pathlib
import pickle
import platform
import sys

import numpy as np

from rmsnorm_conformance.protocol import Capabilities, DTYPES, Implementation, LOW_PRECISION, \
    ModuleInfo, cache_dir

EXTRA = "pip install 'rmsnorm-conformance[jax]'"


def unavailable(need_flax: bool) -> str | None:
    if importlib.util.find_spec("jax") is None:
        return f"jax is not installed: {EXTRA}"
    if need_flax and importlib.util.find_spec("flax") is None:
        return f"flax is not installed: {EXTRA}"
    return None


def _cpu():
    import jax

    return jax.devices("cpu")[0]


def x64():
    """A context in which float64 inputs stay float64 (``jax.enable_x64(True)``, or
    ``jax.experimental.enable_x64()`` on JAX releases before it; thread-local, so the caller's
    process-wide ``jax_enable_x64`` is left as it was). Without it JAX would silently compute
    float64 inputs in float32; it changes no float32, float16 or bfloat16 result (measured
    bit-identical, docs/notes/float64.md). Every call of the adapters enters it."""
    import jax

    state = getattr(jax, "enable_x64", None)
    if callable(state):
        return state(True)
    from jax.experimental import enable_x64     # older JAX

    return enable_x64()


def to_jax(a: np.ndarray):
    """NumPy -> a JAX array on the CPU device (bfloat16 from ml_dtypes included: exact); call it
    within ``x64()`` for float64 to stay float64."""
    import jax

    return jax.device_put(np.asarray(a), _cpu())


def to_numpy(a) -> np.ndarray:
    """JAX -> NumPy (bfloat16 comes back as ml_dtypes.bfloat16), a writable copy."""
    return np.array(a)


@contextlib.contextmanager
def argument_errors():
    """JAX reports bad shapes with TypeError (broadcasting) or ValueError; the protocol asks for
    ValueError."""
    try:
        yield
    except TypeError as e:
        raise ValueError(f"jax rejected the arguments: {e}") from e


# --- the jax.numpy formula -----------------------------------------------------------------------

def jnp_rms_norm(x, weight, eps):
    """RMSNorm as users write it in jax.numpy, in float32 with one rounding at the end (the
    Gemma / PyTorch pattern, ``output = norm(x.float()) * weight.float(); output.type_as(...)``):
    x converted to float32 once (``promote_types(x.dtype, float32)``: exact), the mean of squares
    and ``lax.rsqrt`` in float32, the weight multiplied in float32, and the product rounded once
    to the promoted type of x and weight (JAX's promotion: float16 with bfloat16 or float32 gives
    float32).

    Two other common orders fail the suite in JAX (docs/notes/frameworks.md): rounding to x's
    type before a wider weight (Hugging Face LLaMA) loses float32 precision with mixed dtypes
    (ACC-1), and multiplying by a half-precision weight in half precision (MLX's order, T5X /
    MaxText) makes JAX's autodiff sum dweight over the batch in that half type (GRAD-14)."""
    import jax
    import jax.numpy as jnp

    compute = jnp.promote_types(x.dtype, jnp.float32)
    xf = x.astype(compute)
    ms = jnp.mean(jnp.square(xf), axis=-1, keepdims=True)
    y = xf * jax.lax.rsqrt(ms + eps)
    if weight is None:
        return y.astype(x.dtype)
    return (y * weight.astype(compute)).astype(jnp.result_type(x, weight))


# --- Flax ----------------------------------------------------------------------------------------

def _nnx():
    try:
        from flax import nnx
    except ImportError:      # flax without nnx: the adapter uses flax.linen
        return None
    return nnx


def linen_rms_norm(x, weight, eps):
    """``flax.linen.RMSNorm(epsilon=eps).apply({"params": {"scale": weight}}, x)``: Flax's
    functional form of the layer (and the whole adapter where flax has no nnx)."""
    from flax import linen

    module = linen.RMSNorm(epsilon=eps, use_scale=weight is not None)
    return module.apply({} if weight is None else {"params": {"scale": weight}}, x)


def nnx_layer(d, eps, use_scale=True):
    """``nnx.RMSNorm(d, epsilon=eps, use_scale=use_scale)`` as constructed by users."""
    nnx = _nnx()
    return nnx.RMSNorm(d, epsilon=eps, use_scale=use_scale, rngs=nnx.Rngs(0))


def nnx_rms_norm(x, weight, eps):
    """The nnx layer with its scale replaced by ``weight`` (``use_scale=False`` for None): split
    into graph and state, the state's one leaf (the scale) swapped for ``weight``, merged and
    called (nnx's functional API: inside jax transformations the weight is a traced value)."""
    nnx = _nnx()
    if nnx is None:
        return linen_rms_norm(x, weight, eps)
    import jax

    graphdef, state = nnx.split(nnx_layer(x.shape[-1], eps, use_scale=weight is not None))
    if weight is not None:
        leaves, tree = jax.tree.flatten(state)
        assert len(leaves) == 1, f"nnx.RMSNorm holds {len(leaves)} arrays, expected the scale"
        state = jax.tree.unflatten(tree, [weight])
    return nnx.merge(graphdef, state)(x)


# --- shared plumbing: every entry point is one jitted function per op -------------------------------

#: Distributions whose versions decide what a stored program is (the adapters' frameworks).
_FRAMEWORKS = ("jax", "jaxlib", "flax", "keras", "equinox", "ml_dtypes", "numpy")


@functools.cache
def _build_key(module: str) -> str:
    """What a program stored by ``Programs`` was built from, besides its function and signature:
    the frameworks' versions, the source of this module and of the module defining the function,
    the Python, the machine and its CPU's features (XLA compiles for the host CPU), and the
    environment variables that configure XLA, JAX and Keras. A change to any of them makes every
    stored program a miss."""
    versions = {}
    for dist in _FRAMEWORKS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    sources = [pathlib.Path(__file__).read_bytes()]
    origin = getattr(sys.modules.get(module), "__file__", None)
    if origin:
        sources.append(pathlib.Path(origin).read_bytes())
    try:
        cpu = next((line for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith(("flags", "Features"))), "")
    except OSError:
        cpu = ""
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(("XLA_", "JAX_", "KERAS_")))
    digest = hashlib.sha256()
    for part in (repr(versions), sys.version, platform.machine(), platform.processor(), cpu,
                 repr(env), *sources):
        digest.update(part if isinstance(part, bytes) else part.encode())
    return digest.hexdigest()


@functools.cache
def _without_persistent_cache() -> None:
    """JAX's persistent compilation cache off in this (the adapter's supervised) process, which a
    user's ``JAX_COMPILATION_CACHE_DIR`` would turn on: an executable that cache loaded
    serializes without its code (jax 0.10.2: stored and loaded again, it fails with "NOT_FOUND:
    Function ... not found"), so ``Programs`` stores only what XLA has just compiled."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)


class Programs:
    """A ``jax.jit`` function whose compiled programs are kept in the suite's cache directory
    (``protocol.cache_dir("jax-programs")``), one file per call signature (the arguments' pytree,
    shapes and dtypes, and whether x64 is on), keyed also by ``_build_key``. A call whose program
    is stored loads it (``jax.experimental.serialize_executable``: about 3 ms) instead of tracing
    and lowering it (about 25 ms) and compiling it (40-90 ms); it is the executable that
    ``jax.jit`` compiles for that signature, stored after its first compilation. JAX's own
    persistent cache is turned off in that process (``_without_persistent_cache``). Without a
    cache directory (the adapter in the caller's own process) it is the jitted function alone,
    and nothing of JAX's configuration is changed."""

    def __init__(self, jitted, fn, op: str):
        self.jitted = jitted
        self.name = f"{fn.__module__}.{fn.__qualname__}/{op}"
        self.module = fn.__module__
        self.loaded: dict = {}
        self.from_store: set = set()     # signatures whose loaded program has not run yet

    def __call__(self, *args, **kwargs):
        where = cache_dir("jax-programs")
        if where is None:
            return self.jitted(*args, **kwargs)
        import jax

        leaves, tree = jax.tree.flatten((args, kwargs))
        signature = (str(tree), bool(jax.config.jax_enable_x64),
                     tuple((tuple(a.shape), a.dtype.name) if hasattr(a, "dtype") else
                           type(a).__name__ for a in leaves))
        program = self.loaded.get(signature)
        if program is None:
            program = self.loaded[signature] = self._program(where, signature, args, kwargs)
        try:
            out = program(*args, **kwargs)
        except Exception:
            if signature not in self.from_store:
                raise
            # A stored program that does not run is a defect of the store, not of the
            # implementation: it is compiled afresh (and stored again); what that one raises is
            # the implementation's.
            self.from_store.discard(signature)
            program = self.loaded[signature] = self._program(where, signature, args, kwargs,
                                                             load=False)
            return program(*args, **kwargs)
        self.from_store.discard(signature)    # it ran: from now on it is the compiled program
        return out

    def _program(self, where: pathlib.Path, signature, args, kwargs, load: bool = True):
        try:
            from jax.experimental import serialize_executable
        except ImportError:  # a JAX that cannot serialize executables: jitted, nothing stored
            return self.jitted
        key = repr((_build_key(self.module), self.name, signature)).encode()
        path = where / f"{hashlib.sha256(key).hexdigest()}.program"
        if load:
            try:
                payload, in_tree, out_tree = pickle.loads(path.read_bytes())
                program = serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
                self.from_store.add(signature)
                return program
            except Exception:    # not stored yet, or unreadable: compiled (and stored) again
                pass
        _without_persistent_cache()
        program = self.jitted.lower(*args, **kwargs).compile()
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        try:
            partial.write_bytes(pickle.dumps(serialize_executable.serialize(program)))
            os.replace(partial, path)
        except Exception:    # a program that cannot be serialized, or a full disk: not stored
            partial.unlink(missing_ok=True)
        return program


@functools.cache
def compiled(fn, op):
    """``op`` of ``fn(x, weight, eps)`` as one ``jax.jit`` function (eps traced, a float32 scalar
    as in a layer's constant, so one program serves every eps; weight None is an empty pytree),
    its programs kept between runs (``Programs``). The whole VJP, JVP or second-order product is
    jitted, as in a jitted training step."""
    import jax

    def with_weight(w, f1, f2):
        return f1() if w is None else f2()

    if op == "forward":
        body = fn
    elif op == "vjp":
        def body(x, w, g, eps):
            return with_weight(
                w, lambda: (jax.vjp(lambda a: fn(a, None, eps), x)[1](g)[0], None),
                lambda: jax.vjp(lambda a, b: fn(a, b, eps), x, w)[1](g))
    elif op == "jvp":
        def body(x, w, tx, tw, eps):
            return with_weight(
                w, lambda: jax.jvp(lambda a: fn(a, None, eps), (x,), (tx,))[1],
                lambda: jax.jvp(lambda a, b: fn(a, b, eps), (x, w), (tx, tw))[1])
    elif op == "hvp":
        def body(x, w, g, v, eps):
            def dx(a):
                return jax.vjp(lambda z: fn(z, w, eps), a)[1](g)[0]
            return jax.jvp(dx, (x,), (v,))[1]
    else:
        raise ValueError(f"unknown op {op!r}")
    return Programs(jax.jit(body), fn, op)


def _j(a):
    return None if a is None else to_jax(a)


def forward(fn, x, weight, eps):
    with x64(), argument_errors():
        return to_numpy(compiled(fn, "forward")(_j(x), _j(weight), eps=eps))


def vjp(fn, x, weight, eps, g):
    with x64():
        dx, dw = compiled(fn, "vjp")(_j(x), _j(weight), _j(g), eps=eps)
        return to_numpy(dx), (None if dw is None else to_numpy(dw))


def jvp(fn, x, weight, eps, tx, tweight):
    with x64():
        tw = None if weight is None else _j(tweight)
        return to_numpy(compiled(fn, "jvp")(_j(x), _j(weight), _j(tx), tw, eps=eps))


def hvp(fn, x, weight, eps, g, v):
    """d/dt of the VJP's dx at x + t v (g fixed): jax.jvp of the jax.vjp pullback."""
    with x64():
        return to_numpy(compiled(fn, "hvp")(_j(x), _j(weight), _j(g), _j(v), eps=eps))


def benchmark(fn, op, shape, dtype):
    """A closure timing one op on arrays already on the CPU device, waiting with
    block_until_ready. "backward" times the jitted pullback of one jax.vjp (forward excluded)."""
    import jax
    import jax.numpy as jnp

    key_x, key_w, key_g = jax.random.split(jax.random.key(0), 3)
    dt = jnp.dtype(DTYPES[dtype])
    with jax.default_device(_cpu()):
        x = jax.random.normal(key_x, shape, jnp.float32).astype(dt)
        w = (1 + 0.1 * jax.random.uniform(key_w, shape[-1:], jnp.float32)).astype(dt)
        if op == "forward":
            f = compiled(fn, "forward")
            run = lambda: f(x, w, eps=1e-5).block_until_ready()   # noqa: E731
        elif op == "backward":
            y, pullback = jax.vjp(jax.jit(lambda a, b: fn(a, b, 1e-5)), x, w)
            g = jax.random.normal(key_g, shape, jnp.float32).astype(y.dtype)
            apply = jax.jit(lambda p, c: p(c))
            run = lambda: jax.block_until_ready(apply(pullback, g))   # noqa: E731
        elif op == "copy":
            copy = jax.jit(jnp.copy)
            run = lambda: copy(x).block_until_ready()   # noqa: E731
        else:
            return None
    run()   # compile
    return run


class _JaxBase(Implementation):
    need_flax = False

    def unavailable_reason(self):
        return unavailable(self.need_flax)

    def environment(self):
        import jax

        env = {"framework": "jax", "version": jax.__version__, "device": "cpu"}
        if self.need_flax:
            import flax

            env["framework"] = "flax.nnx" if _nnx() is not None else "flax.linen"
            env["flax"] = flax.__version__
        return env

    def _fn(self):
        raise NotImplementedError

    def rms_norm(self, x, weight, eps, layout=None):
        if layout is not None:
            raise ValueError(f"{self.id} declares no layouts (JAX arrays have no views)")
        return forward(self._fn(), x, weight, eps)

    def vjp(self, x, weight, eps, g):
        return vjp(self._fn(), x, weight, eps, g)

    def jvp(self, x, weight, eps, tx, tweight):
        return jvp(self._fn(), x, weight, eps, tx, tweight)

    def hvp(self, x, weight, eps, g, v):
        return hvp(self._fn(), x, weight, eps, g, v)

    def benchmark(self, op, shape, dtype):
        return benchmark(self._fn(), op, shape, dtype)


class JaxNumpy(_JaxBase):
    """The jax.numpy formula (``jnp_rms_norm``), jitted."""

    id = "jax-numpy-cpu"
    # mixed "promote": the output is JAX's promotion of x and weight (float16 with float32 or
    # bfloat16 gives float32), as MLX. nonpositive_eps: a formula validates nothing. validation off: a weight of shape (1, d)
    # or (1,) broadcasts instead of being rejected (VAL-2, VAL-3).
    capabilities = Capabilities(dtypes=LOW_PRECISION + ("float64",), mixed="promote",
                                weight_none=True, nonpositive_eps=True, validation=False,
                                gradients=("vjp", "jvp", "hvp"), device="cpu",
                                compiles_per_shape=True)

    def _fn(self):
        return jnp_rms_norm


class FlaxRMSNorm(_JaxBase):
    """``flax.nnx.RMSNorm(d, epsilon=eps)`` with its scale replaced by the given weight
    (``use_scale=False`` for weight None), applied jitted through nnx.split / nnx.merge. Flax has
    no functional RMSNorm (so MOD-3 and GRAD-13 do not apply: ``functional`` is not declared);
    ``functional`` here is Flax's functional form of the same layer, for comparisons by hand:
    ``flax.linen.RMSNorm(...).apply({"params": {"scale": weight}}, x)``."""

    id = "flax-nnx-cpu"
    need_flax = True
    # mixed "promote": x and the scale are promoted to a common type first (float16 with float32
    # gives float32). nonpositive_eps: epsilon is not validated (0 and < 0 accepted). The module
    # is not MLX's: default epsilon 1e-6, its parameter is called "scale", eps <= 0 accepted.
    capabilities = Capabilities(dtypes=LOW_PRECISION + ("float64",), mixed="promote",
                                weight_none=True, nonpositive_eps=True, validation=False, module=True,
                                mlx_module=False, gradients=("vjp", "jvp", "hvp"), device="cpu",
                                compiles_per_shape=True)

    def _fn(self):
        return nnx_rms_norm

    def module_info(self, dims, eps=None):
        nnx = _nnx()
        kw = {} if eps is None else {"epsilon": eps}
        if nnx is None:
            import jax
            from flax import linen

            module = linen.RMSNorm(**kw)
            params = module.init(jax.random.key(0), np.ones((1, dims), np.float32))["params"]
            return ModuleInfo(eps=module.epsilon,
                              parameters={k: to_numpy(v) for k, v in params.items()})
        import jax

        layer = nnx.RMSNorm(dims, rngs=nnx.Rngs(0), **kw)
        state = nnx.state(layer, nnx.Param)
        flat = nnx.to_flat_state(state) if hasattr(nnx, "to_flat_state") else state.flat_state()
        params = {".".join(map(str, path)): to_numpy(jax.tree.leaves(variable)[0])
                  for path, variable in flat}
        return ModuleInfo(eps=layer.epsilon, parameters=params)

    def functional(self, x, weight, eps):
        return forward(linen_rms_norm, x, weight, eps)

    def functional_vjp(self, x, weight, eps, g):
        return vjp(linen_rms_norm, x, weight, eps, g)


numpy_cpu = JaxNumpy()
flax_cpu = FlaxRMSNorm()
