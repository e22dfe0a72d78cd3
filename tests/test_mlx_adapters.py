"""The MLX adapters themselves (impl/_mlx.py, mlx_fast.py, mlx_nn.py, mlx_compiled.py).

Every id loads from the entry-point group with a well-formed declaration; conversion keeps every
dtype and is bit-exact for all 65536 bfloat16 patterns; compiled results equal eager ones; a
sequence calls ONE compiled function (traces counted through a Python side effect in the traced
function: MLX runs the Python function only when it traces); plain calls compile afresh; each
declared layout is a view of its source; the benchmark hooks run.

Shapes here avoid an axis length of 1 and a single row with ``shapeless=True``: MLX's CPU
reduction crashes on a reduction over axes of size 1 inside a shapeless-compiled function (see
docs/notes/mlx-releases.md), which the conformance suite reports, not these tests.
"""

from __future__ import annotations

import importlib.metadata

import ml_dtypes
import numpy as np
import pytest
from packaging.version import Version

mx = pytest.importorskip("mlx.core")

from rmsnorm_conformance.impl import _mlx, mlx_compiled, mlx_fast, mlx_nn  # noqa: E402
from rmsnorm_conformance.protocol import DTYPES, LAYOUTS, Implementation, Layout  # noqa: E402
from rmsnorm_conformance import GROUP, OPT_IN_GROUP  # noqa: E402
from rmsnorm_conformance.conformance.marks import clause

#: the adapters load with well-formed, truthful declarations
pytestmark = clause("IMP-1")

IDS = [f"mlx-{kind}-{dev}" for kind in ("fast", "nn", "compiled-fast", "compiled-fast-shapeless",
                                        "compiled-nn", "compiled-nn-shapeless")
       for dev in ("cpu", "gpu")]
ENTRY_POINTS = [*importlib.metadata.entry_points(group=GROUP),
                *importlib.metadata.entry_points(group=OPT_IN_GROUP)]
CPU = {i: ep.load() for ep in ENTRY_POINTS for i in [ep.name] if i in IDS and i.endswith("-cpu")}
COMPILED = [i for i in CPU if "compiled" in i]
EAGER = {"fast": mlx_fast.cpu, "nn": mlx_nn.cpu}


def eager_of(impl):
    return EAGER["nn" if "-nn" in impl.id else "fast"]


def data(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(DTYPES[dtype])


def ints(shape, dtype, seed=0):
    """Small integers: with a power-of-two axis length every sum rms_norm and its derivatives
    take is exact in float32. With d <= 1024 the mean's factor 1/d has at most 7 significant
    digits too: before MLX 0.32.3 compiled CPU kernels hold float constants printed with 7
    significant digits (1/4096 becomes 0.0002441406, not 2**-12)."""
    return np.random.default_rng(seed).integers(-8, 9, shape).astype(DTYPES[dtype])


@pytest.fixture
def traces(monkeypatch):
    """A list that grows by one entry (x's shape) each time MLX runs mx.fast.rms_norm's Python
    call: once per call eagerly, once per trace inside mx.compile."""
    seen, real = [], mx.fast.rms_norm

    def counting(x, *args, **kwargs):
        seen.append(tuple(x.shape))
        return real(x, *args, **kwargs)
    monkeypatch.setattr(mx.fast, "rms_norm", counting)
    return seen


# ---- loading and declarations ---------------------------------------------------------------

def test_every_id_is_registered_and_loads():
    eps = {ep.name: ep for ep in ENTRY_POINTS}
    assert set(IDS) <= set(eps), f"not registered: {sorted(set(IDS) - set(eps))}"
    for i in IDS:
        impl = eps[i].load()
        assert isinstance(impl, Implementation) and impl.id == i
        caps = impl.capabilities
        assert caps.problems() == [], (i, caps.problems())
        assert caps.device == i.rsplit("-", 1)[1]
        # every dtype on the CPU; float64 is rejected by MLX's GPU backends
        assert set(caps.dtypes) == set(DTYPES) - ({"float64"} if caps.device == "gpu" else set())
        assert set(caps.layouts) == set(LAYOUTS)
        assert caps.module == ("-nn" in i) and caps.weight_none == ("-fast" in i)
        assert impl.environment()["version"] == mx.__version__


def test_gpu_ids_say_why_they_cannot_run():
    reason = _mlx.gpu_unavailable_reason()
    for impl in (mlx_fast.gpu, mlx_nn.gpu, mlx_compiled.fast_gpu, mlx_compiled.nn_shapeless_gpu):
        assert impl.unavailable_reason() == reason
    for impl in CPU.values():
        assert impl.unavailable_reason() is None


@pytest.mark.parametrize("version, expected", [("0.26.5", ("vjp",)), ("0.30.0", ("vjp",)),
                                               ("0.30.1", ("vjp", "jvp", "hvp")),
                                               ("0.32.4", ("vjp", "jvp", "hvp")),
                                               ("0.32.5.dev0", ("vjp", "jvp", "hvp"))])
def test_forward_mode_declared_from_0_30_1(monkeypatch, version, expected):
    monkeypatch.setattr(_mlx, "mlx_version", lambda: Version(version))
    assert tuple(mlx_fast.cpu.capabilities.gradients) == expected
    assert tuple(mlx_compiled.fast_cpu.capabilities.gradients) == expected
    assert tuple(mlx_compiled.fast_shapeless_cpu.capabilities.gradients) == ("vjp",)
    assert tuple(mlx_nn.cpu.capabilities.gradients) == ("vjp",)


def test_declared_gradients_work_on_this_release():
    x, g = data((3, 8), "float32"), data((3, 8), "float32", 1)
    for impl in CPU.values():
        for name in impl.capabilities.gradients:
            args = {"vjp": (x, x[0], 1e-5, g), "jvp": (x, x[0], 1e-5, g, x[1]),
                    "hvp": (x, x[0], 1e-5, g, g)}[name]
            out = getattr(impl, name)(*args)
            assert all(isinstance(o, np.ndarray) for o in (out if name == "vjp" else [out]))


# ---- conversion -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", list(DTYPES))
def test_conversion_keeps_dtype_and_values(dtype):
    a = data((2, 5), dtype)
    m = _mlx.to_mx(a)
    assert m.dtype == getattr(mx, dtype) and tuple(m.shape) == a.shape
    back = _mlx.to_np(m)
    assert back.dtype == a.dtype and back.tobytes() == a.tobytes()
    # MLX-made arrays come back with their dtype too (outputs are never built from NumPy)
    assert _mlx.to_np(mx.ones((2,), dtype=getattr(mx, dtype))).dtype == DTYPES[dtype]


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_conversion_of_views_with_any_strides(dtype):
    """A reversed, a strided and a transposed view convert to their values (in the suite's own
    process, ``--rmsnorm-isolation none``, MET-7's sources are such views)."""
    a = data((3, 6), dtype)
    for view in (a[..., ::-1], a[::-1], a[:, ::2], a.T, a[:, :1][..., ::-1]):
        assert _mlx.to_np(_mlx.to_mx(view)).tobytes() == np.ascontiguousarray(view).tobytes()


def test_bfloat16_round_trip_is_bit_exact_for_every_pattern():
    bits = np.arange(2 ** 16, dtype=np.uint16)
    a = bits.view(ml_dtypes.bfloat16)
    m = _mlx.to_mx(a)
    assert m.dtype == mx.bfloat16
    assert np.array_equal(_mlx.to_np(m).view(np.uint16), bits)
    # and MLX reads the values NumPy meant: compare finite values through float32 in MLX
    finite = np.isfinite(a.astype(np.float32))
    as_f32 = np.array(m.astype(mx.float32))
    assert np.array_equal(as_f32[finite], a.astype(np.float32)[finite])


# ---- compiled == eager ----------------------------------------------------------------------

SHAPES = [(2, 8), (3, 4, 32), (16,), (2, 1024)]


@pytest.mark.parametrize("impl_id", COMPILED)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_compiled_equals_eager(impl_id, dtype):
    """Same op graph, same float32 arithmetic, exact sums and constants: bit-identical results
    on the CPU, on every release."""
    impl = CPU[impl_id]
    eager = eager_of(impl)
    for k, shape in enumerate(SHAPES):
        x, w, g = ints(shape, dtype, k), ints(shape[-1:], dtype, k + 1), ints(shape, dtype, k + 2)
        assert impl.rms_norm(x, w, 1e-5).tobytes() == eager.rms_norm(x, w, 1e-5).tobytes()
        for a, b in zip(impl.vjp(x, w, 1e-5, g), eager.vjp(x, w, 1e-5, g)):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
        if impl.capabilities.weight_none:
            assert impl.rms_norm(x, None, 0.0).tobytes() == eager.rms_norm(x, None, 0.0).tobytes()
        if "jvp" in impl.capabilities.gradients:
            assert impl.jvp(x, w, 1e-5, g, w).tobytes() == eager.jvp(x, w, 1e-5, g, w).tobytes()
            assert impl.hvp(x, w, 1e-5, g, x).tobytes() == eager.hvp(x, w, 1e-5, g, x).tobytes()
    if impl.capabilities.module:
        x, w = ints((2, 8), dtype), ints((8,), dtype, 1)
        assert impl.functional(x, w, 1e-5).tobytes() == eager.functional(x, w, 1e-5).tobytes()


@pytest.mark.skipif(_mlx.mlx_version() < Version("0.32.3"), reason="before MLX 0.32.3 compiled CPU "
                    "kernels round float constants (1/d, eps) to 7 significant digits")
@pytest.mark.parametrize("impl_id", COMPILED)
def test_compiled_equals_eager_bit_for_bit_on_any_data(impl_id):
    impl = CPU[impl_id]
    x, w, g = data((64, 33), "float32"), data((33,), "float32", 1), data((64, 33), "float32", 2)
    assert impl.rms_norm(x, w, 1e-5).tobytes() == eager_of(impl).rms_norm(x, w, 1e-5).tobytes()
    for a, b in zip(impl.vjp(x, w, 1e-5, g), eager_of(impl).vjp(x, w, 1e-5, g)):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("impl_id", COMPILED)
def test_compiled_validation_raises_value_error(impl_id):
    impl = CPU[impl_id]
    with pytest.raises(ValueError):
        impl.rms_norm(np.ones((2, 4), np.float32), np.ones(3, np.float32), 1e-5)


# ---- one compiled function per sequence -----------------------------------------------------

# axis lengths and row counts change; same ndim except the last call
SEQ = [(4, 8), (4, 16), (2, 16), (7, 4), (7, 4), (4, 8), (2, 5, 32)]


def _calls(dtype, with_g=False):
    out = []
    for k, s in enumerate(SEQ):
        c = (ints(s, dtype, k), ints(s[-1:], dtype, 100 + k), 1e-5)
        out.append(c + (ints(s, dtype, 200 + k),) if with_g else c)
    return out


@pytest.mark.parametrize("impl_id", COMPILED)
def test_sequence_reuses_one_compiled_function(impl_id, traces):
    """Without shapeless, MLX retraces once per new shape (and never for a shape seen before);
    with it, once per number of dimensions. Results equal eager calls, so each call's own weight
    reached the compiled function."""
    impl = CPU[impl_id]
    expected = len({len(s) for s in SEQ}) if "shapeless" in impl_id else len(set(SEQ))
    calls = _calls("float32")
    ys = impl.rms_norm_sequence(calls)
    assert len(traces) == expected, traces
    for y, c in zip(ys, calls):
        assert y.tobytes() == eager_of(impl).rms_norm(*c).tobytes()

    traces.clear()
    vcalls = _calls("bfloat16", with_g=True)
    grads = impl.vjp_sequence(vcalls)
    per_trace = 2 if "-nn" in impl_id else 1    # the module's: value_and_grad and grad
    assert len(traces) == expected * per_trace, traces
    for (dx, dw), c in zip(grads, vcalls):
        ex, ew = eager_of(impl).vjp(*c)
        assert dx.tobytes() == ex.tobytes() and dw.tobytes() == ew.tobytes()


def test_trace_count_detects_a_compile_per_call(traces):
    """The counter is able to fail: plain calls (a fresh compiled function each) trace every
    time, even for one repeated shape, which a sequence must not do."""
    impl = mlx_compiled.fast_cpu
    calls = [(data((4, 8), "float32", k), data((8,), "float32"), 1e-5) for k in range(3)]
    Implementation.rms_norm_sequence(impl, calls)     # the protocol's default: rms_norm per call
    assert len(traces) == 3
    traces.clear()
    impl.rms_norm_sequence(calls)
    assert len(traces) == 1


def test_fast_sequence_retraces_on_a_new_eps_or_weight_presence(traces):
    x, w = ints((3, 8), "float32"), ints((8,), "float32", 1)
    calls = [(x, w, 1e-5), (x, w, 1.0), (x, w, 1e-5), (x, None, 1e-5), (x, None, 1e-5)]
    ys = mlx_compiled.fast_shapeless_cpu.rms_norm_sequence(calls)
    assert len(traces) == 3          # (w, 1e-5), (w, 1.0), (None, 1e-5)
    for y, c in zip(ys, calls):
        assert y.tobytes() == mlx_fast.cpu.rms_norm(*c).tobytes()


def test_module_sequence_refuses_several_eps():
    x, w = data((3, 8), "float32"), data((8,), "float32", 1)
    with pytest.raises(ValueError, match="one eps"):
        mlx_compiled.nn_cpu.rms_norm_sequence([(x, w, 1e-5), (x, w, 1e-3)])


# ---- layouts ----------------------------------------------------------------------------------

def _layouts(x, w):
    shape = x.shape
    return [
        Layout("transposed", np.ascontiguousarray(np.swapaxes(x, -1, -2)), shape),
        Layout("strided", np.repeat(x, 2, axis=-1), shape),
        Layout("broadcast", np.ascontiguousarray(x[:1, :1]), shape),
        Layout("offset", np.concatenate([np.zeros(5, x.dtype), x.ravel()]), shape, offset=5),
        Layout("padded", np.concatenate([x, np.zeros(shape[:-1] + (3,), x.dtype)], -1), shape),
        Layout("reversed", np.ascontiguousarray(x[..., ::-1]), shape),
        Layout("weight_strided", None, shape, weight_source=np.repeat(w, 2)),
    ]


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_every_layout_is_a_view_of_its_source(dtype):
    x, w = data((3, 4, 6), dtype), data((6,), dtype, 1)
    layouts = _layouts(x, w)
    assert [layout.kind for layout in layouts] == list(LAYOUTS)
    for layout in layouts:
        made = []

        def asarray(a):
            made.append(_mlx.to_mx(a))
            return made[-1]
        xv, wv = layout.view(x, w, asarray, mx.swapaxes, mx.broadcast_to)
        view = wv if layout.kind == "weight_strided" else xv
        mx.eval(view, *made)
        # MLX arrays expose their strides through the buffer protocol (bfloat16 as uint16)
        host = (lambda a: np.asarray(a.view(mx.uint16)) if a.dtype == mx.bfloat16
                else np.asarray(a))
        assert any(np.shares_memory(host(view), host(m)) for m in made), layout.kind
        if layout.kind == "reversed":
            assert host(view).strides[-1] < 0


# ---- benchmark hooks ------------------------------------------------------------------------

@pytest.mark.parametrize("impl_id", ["mlx-fast-cpu", "mlx-nn-cpu", "mlx-compiled-fast-cpu",
                                     "mlx-compiled-nn-shapeless-cpu"])
def test_benchmark_hooks_run(impl_id):
    impl = CPU[impl_id]
    for op in ("forward", "backward", "copy"):
        run = impl.benchmark(op, (4, 64), "bfloat16")
        assert callable(run)
        assert run() is None and run() is None
    assert impl.benchmark("sideways", (4, 64), "float32") is None
