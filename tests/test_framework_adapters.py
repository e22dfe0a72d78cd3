"""Self-tests of the adapters for other frameworks (impl/torch_rmsnorm.py, impl/jax_rmsnorm.py,
impl/hf_rmsnorm.py, impl/keras_rmsnorm.py, impl/onnx_rmsnorm.py, impl/equinox_rmsnorm.py) and of
the example plug-in (examples/rmsnorm-example-plugin).

They check the adapters' plumbing, not the frameworks' numerics (that is the conformance
suite's job): each adapter loads or says why not, arrays cross the boundary bit for bit
(bfloat16 included), declared layouts are built as real views, gradients come back with the
right shapes and dtypes, declared capabilities match what the framework does, and the adapter
modules import without their framework. A framework that is not installed skips its tests with
the extra to install.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from rmsnorm_conformance import reference
from rmsnorm_conformance.conformance.cases import Case
from rmsnorm_conformance.conformance.regions import MIXED_PAIRS
from rmsnorm_conformance.conformance.registry import discover
from rmsnorm_conformance.conformance.test_met import layout_for, layout_input
from rmsnorm_conformance.conformance.tolerance import forward_bound
from rmsnorm_conformance.impl import equinox_rmsnorm, hf_rmsnorm, jax_rmsnorm, keras_rmsnorm, \
    onnx_rmsnorm, torch_rmsnorm
from rmsnorm_conformance.protocol import DTYPES, Layout
from rmsnorm_conformance.conformance.marks import clause

pytestmark = clause("IMP-1")

ROOT = pathlib.Path(__file__).resolve().parent.parent
BF16 = np.dtype(ml_dtypes.bfloat16)
HAVE_TORCH = torch_rmsnorm.unavailable("cpu") is None
HAVE_JAX = jax_rmsnorm.unavailable(need_flax=False) is None
HAVE_FLAX = jax_rmsnorm.unavailable(need_flax=True) is None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason=str(torch_rmsnorm.unavailable("cpu")))
needs_jax = pytest.mark.skipif(not HAVE_JAX, reason=str(jax_rmsnorm.unavailable(False)))
needs_flax = pytest.mark.skipif(not HAVE_FLAX, reason=str(jax_rmsnorm.unavailable(True)))

TORCH = [pytest.param(torch_rmsnorm.functional_cpu, id="torch-functional-cpu"),
         pytest.param(torch_rmsnorm.module_cpu, id="torch-module-cpu")]
JAX = [pytest.param(jax_rmsnorm.numpy_cpu, id="jax-numpy-cpu", marks=needs_jax),
       pytest.param(jax_rmsnorm.flax_cpu, id="flax-nnx-cpu", marks=needs_flax)]
ALL_CPU = [pytest.param(p.values[0], id=p.id, marks=[needs_torch]) for p in TORCH] + JAX
IDS = {"torch-functional-cpu", "torch-functional-cuda", "torch-module-cpu", "torch-module-cuda",
       "jax-numpy-cpu", "flax-nnx-cpu", "hf-llama-cpu", "hf-gemma-cpu", "hf-t5-cpu",
       "keras-ops-cpu", "keras-layer-cpu", "onnxruntime-cpu", "equinox-cpu"}


def _x(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(DTYPES[dtype])


def _all_bf16():
    """Every bfloat16 bit pattern: zeros, subnormals, normals, infinities, NaN payloads."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(BF16)


def _bits(a):
    return a.view(f"u{a.dtype.itemsize}")


# --- loading ------------------------------------------------------------------------------------

def test_entry_points_registered_and_load():
    """Every framework id is registered (in the default or the opt-in group); each loads, and is
    usable or says why not."""
    entries = {e.id: e for e in discover()}
    missing = IDS - set(entries)
    assert not missing, f"not registered (reinstall the package: pip install -e .): {missing}"
    for i in IDS:
        e = entries[i].load(isolation="none")
        assert e.error is None, f"{i}: {e.error}"
        assert not e.impl.capabilities.problems(), (i, e.impl.capabilities.problems())
        assert e.unavailable is None or e.unavailable.strip(), i


#: (frameworks made absent, adapter module, its adapters, the extra their reason names)
WITHOUT = [
    (("torch",), "rmsnorm_conformance.impl.torch_rmsnorm", ("functional_cpu", "module_cuda"), "[torch]"),
    (("jax", "flax"), "rmsnorm_conformance.impl.jax_rmsnorm", ("numpy_cpu", "flax_cpu"), "[jax]"),
    (("flax",), "rmsnorm_conformance.impl.jax_rmsnorm", ("flax_cpu",), "[jax]"),
    (("transformers",), "rmsnorm_conformance.impl.hf_rmsnorm",
     ("llama_cpu", "gemma_cpu", "t5_cpu"), "[hf]"),
    (("keras",), "rmsnorm_conformance.impl.keras_rmsnorm", ("ops_cpu", "layer_cpu"), "[keras]"),
    (("onnxruntime",), "rmsnorm_conformance.impl.onnx_rmsnorm", ("cpu",), "[onnx]"),
    (("equinox",), "rmsnorm_conformance.impl.equinox_rmsnorm", ("cpu",), "[equinox]"),
]

#: One interpreter for all the cases of WITHOUT: after each case the modules it imported
#: are forgotten again (sys.modules as it was), so each adapter module is imported anew with
#: only that case's frameworks absent (``sys.modules[name] = None``: ``import name`` raises).
_WITHOUT_PROGRAM = """
import json, sys
import rmsnorm_conformance.protocol       # the core (NumPy): imported once, never forgotten
cases, found = json.loads(sys.argv[1]), []
for blocked, module, attrs in cases:
    before = dict(sys.modules)
    sys.modules.update({name: None for name in blocked})
    try:
        adapters = __import__(module, fromlist=["_"])
        found.append([getattr(adapters, name).unavailable_reason() for name in attrs])
    finally:
        sys.modules.clear()
        sys.modules.update(before)
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def reasons_without():
    """unavailable_reason() of each adapter of each WITHOUT case, from one subprocess."""
    cases = json.dumps([[blocked, module, attrs] for blocked, module, attrs, _ in WITHOUT])
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_PROGRAM, cases], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]      # an adapter module that did not import
    return json.loads(proc.stdout)


@pytest.mark.parametrize("case", range(len(WITHOUT)),
                         ids=[f"{module.rsplit('.', 1)[1]}-without-{'-'.join(blocked)}"
                              for blocked, module, _, _ in WITHOUT])
def test_imports_without_framework_and_names_the_extra(reasons_without, case):
    """With the framework absent the adapter module still imports, and unavailable_reason()
    names the extra to install."""
    _, _, attrs, extra = WITHOUT[case]
    out = reasons_without[case]
    assert len(out) == len(attrs) and all(
        line and "is not installed" in line and extra in line for line in out), out


@needs_torch
def test_cuda_available_or_skipped_with_reason():
    """The CUDA ids run where torch sees a GPU and say why not elsewhere."""
    import torch

    reason = torch_rmsnorm.functional_cuda.unavailable_reason()
    assert reason == torch_rmsnorm.module_cuda.unavailable_reason()
    if reason is not None:
        assert not torch.cuda.is_available() and "CUDA" in reason, reason
        pytest.skip(f"no CUDA here: {reason}")
    x, w = _x((3, 8), "float32"), np.ones(8, np.float32)
    for impl in (torch_rmsnorm.functional_cuda, torch_rmsnorm.module_cuda):
        assert impl.environment()["device"].startswith("cuda")
        y = impl.rms_norm(x, w, 1e-5)
        np.testing.assert_allclose(y, reference.rms_norm(x, w, 1e-5), rtol=1e-5)
        dx, dw = impl.vjp(x, w, 1e-5, x)
        assert dx.shape == x.shape and dw.shape == w.shape


@pytest.mark.parametrize("adapter", ALL_CPU)
def test_environment(adapter):
    env = adapter.environment()
    assert {"framework", "version", "device"} <= set(env) and env["device"] == "cpu", env
    assert all(isinstance(v, str) for v in env.values()), env


# --- crossing the boundary ------------------------------------------------------------------------

@needs_torch
@clause("DTY-1")
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_torch_round_trip_is_exact(dtype):
    """NumPy -> torch -> NumPy keeps every bit; bfloat16 over all 65536 patterns (torch cannot
    read ml_dtypes arrays: it goes through an int16 view)."""
    import torch

    a = _all_bf16() if dtype == "bfloat16" else _x((7, 33), dtype)
    t = torch_rmsnorm.to_torch(a, "cpu")
    assert t.dtype == getattr(torch, dtype) and tuple(t.shape) == a.shape
    back = torch_rmsnorm.to_numpy(t)
    assert back.dtype == a.dtype and np.array_equal(_bits(back), _bits(a))
    if dtype == "bfloat16":     # and the values, as torch reads them, are the same numbers
        finite = np.isfinite(a.astype(np.float32))
        assert np.array_equal(t.float().numpy()[finite], a.astype(np.float32)[finite])


@needs_jax
@clause("DTY-1")
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_jax_round_trip_is_exact(dtype):
    import jax.numpy as jnp

    a = _all_bf16() if dtype == "bfloat16" else _x((7, 33), dtype)
    with jax_rmsnorm.x64():
        j = jax_rmsnorm.to_jax(a)
        assert j.dtype == jnp.dtype(a.dtype) and j.shape == a.shape
        back = jax_rmsnorm.to_numpy(j)
    assert back.dtype == a.dtype and np.array_equal(_bits(back), _bits(a))


@needs_torch
@clause("MET-7")
@pytest.mark.parametrize("kind", torch_rmsnorm.TORCH_LAYOUTS)
def test_torch_layouts_are_views(kind):
    """Each declared layout is a view of the source tensor (same storage, no copy), with the
    strides the layout means; and "reversed" is not declared because torch can't build it."""
    x = _x((3, 4, 6), "float32")
    w = np.linspace(0.5, 2, 6).astype(np.float32)
    case = layout_input(kind, Case(x, w, 1e-5, ""))
    layout = layout_for(kind, case, seed=4)   # offset 5, padding 5
    x, w = case.x, case.weight
    xv, wv = torch_rmsnorm._tensors(x, w, "cpu", layout)
    assert np.array_equal(xv.numpy(), x) and np.array_equal(wv.numpy(), w)
    view, source = (wv, layout.weight_source) if kind == "weight_strided" else (xv, layout.source)
    assert view._base is not None or view.storage_offset() > 0, "not a view"
    assert view.untyped_storage().nbytes() == source.nbytes, "a copy, not a view of the source"
    expect = {"transposed": lambda: not xv.is_contiguous(),
              "strided": lambda: xv.stride()[-1] == 2,
              "broadcast": lambda: xv.stride()[0] == 0,
              "offset": lambda: xv.storage_offset() == layout.offset,
              "padded": lambda: xv.stride()[-2] == 6 + 5,
              "weight_strided": lambda: wv.stride() == (2,)}[kind]
    assert expect(), (kind, xv.stride(), xv.storage_offset())
    for impl in (torch_rmsnorm.functional_cpu, torch_rmsnorm.module_cpu):
        got = impl.rms_norm(x, w, 1e-5, layout)
        assert np.all(np.isfinite(got)), "read the NaN gaps of the strided source"
        np.testing.assert_allclose(got, impl.rms_norm(x, w, 1e-5), rtol=4e-7, atol=0)


@needs_torch
def test_torch_has_no_reversed_view():
    import torch

    assert "reversed" not in torch_rmsnorm.functional_cpu.capabilities.layouts
    with pytest.raises(ValueError, match="step must be greater than zero"):
        torch.ones(4)[::-1]


# --- capabilities match the frameworks ------------------------------------------------------------

@clause("DTY-2")
@pytest.mark.parametrize("adapter", ALL_CPU)
@pytest.mark.parametrize("x_dt, w_dt", [p for p in MIXED_PAIRS if p[1] == "float32"])
def test_declared_output_dtype_is_what_the_framework_returns(adapter, x_dt, w_dt):
    """torch returns x's dtype ("input"); JAX and Flax promote ("promote")."""
    y = adapter.rms_norm(_x((2, 8), x_dt), np.ones(8, DTYPES[w_dt]), 1e-5)
    assert y.dtype == adapter.capabilities.output_dtype(DTYPES[x_dt], DTYPES[w_dt])


@clause("VAL-5")
@pytest.mark.parametrize("adapter", ALL_CPU)
def test_nonpositive_eps_accepted_as_declared(adapter):
    """eps = 0, < 0 and inf are computed, not rejected (capability nonpositive_eps)."""
    assert adapter.capabilities.nonpositive_eps
    x = np.array([[3.0, 4.0]], np.float32)
    for eps in (0.0, -1e-6, np.inf):
        y = adapter.rms_norm(x, None, eps)
        np.testing.assert_allclose(y, reference.rms_norm(x, None, eps), rtol=1e-6)
    assert np.all(np.isnan(adapter.rms_norm(np.zeros((1, 3), np.float32), None, 0.0)))


@needs_torch
@clause("VAL-2")
@pytest.mark.parametrize("adapter", TORCH)
def test_torch_argument_errors_are_value_errors(adapter):
    """torch's RuntimeErrors for bad shapes and dtypes come back as ValueError (protocol), and
    complex input is accepted: why validation (VAL-1..4, MLX's rules) is not declared."""
    x = np.ones((3, 8), np.float32)
    for w in (np.ones((1, 8), np.float32), np.ones(7, np.float32), np.ones(1, np.float32)):
        with pytest.raises(ValueError, match="torch rejected"):
            adapter.rms_norm(x, w, 1e-5)
    with pytest.raises(ValueError, match="torch rejected"):
        adapter.rms_norm(np.ones((2, 4), np.int32), None, 1e-5)
    assert not adapter.capabilities.validation
    assert adapter.rms_norm(np.ones((2, 4), np.complex64), None, 1e-5).dtype == np.complex64


@clause("ACC-1")
@pytest.mark.parametrize("adapter", ALL_CPU)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_forward_within_bound(adapter, dtype):
    """A plain case per dtype, to know the adapter computes RMSNorm (the suite does the rest);
    with and without weight."""
    x = _x((3, 100), dtype)
    for w in (np.linspace(-2, 2, 100).astype(DTYPES[dtype]), None):
        y = adapter.rms_norm(x, w, 1e-5)
        fb = forward_bound(x, w, 1e-5, y.dtype)
        assert np.all(np.abs(y.astype(np.float64) - fb.ref) <= fb.bound)


# --- gradients -------------------------------------------------------------------------------------

@clause("GRAD-3")
@pytest.mark.parametrize("adapter", ALL_CPU)
@pytest.mark.parametrize("x_dt, w_dt, shape", [
    ("float32", "float32", (3, 5)), ("bfloat16", "float32", (3, 5)),   # same and mixed dtypes
    ("bfloat16", None, (3, 5)), ("float16", "float16", (0, 5)),        # no weight, zero-size
    ("float32", None, (2, 0, 4))])      # (the conformance suite's GRAD-3 draws every other one)
def test_gradient_shapes_and_dtypes(adapter, x_dt, w_dt, shape):
    """dx like x, dweight like the weight (None without), the tangent and the second-order
    product like the output and x; zero-size arrays included; the cotangent in the output's
    dtype as the adapter declares it."""
    x = _x(shape, x_dt, 1)
    w = None if w_dt is None else np.linspace(0.5, 1.5, shape[-1]).astype(DTYPES[w_dt])
    out = adapter.capabilities.output_dtype(x.dtype, None if w is None else w.dtype)
    g, v = _x(shape, out.name, 2), _x(shape, x_dt, 3)
    tw = None if w is None else _x(w.shape, w_dt, 4)
    dx, dw = adapter.vjp(x, w, 1e-5, g)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    assert dw is None if w is None else (dw.shape == w.shape and dw.dtype == w.dtype)
    ty = adapter.jvp(x, w, 1e-5, v, tw)
    assert ty.shape == x.shape and ty.dtype == out
    hv = adapter.hvp(x, w, 1e-5, g, v)
    assert hv.shape == x.shape and hv.dtype == x.dtype


@clause("GRAD-1")
@pytest.mark.parametrize("adapter", ALL_CPU)
def test_gradients_match_reference(adapter):
    """float32: dx, dweight, the tangent and H v agree with the float64 reference (so the
    adapters wire the right arguments to the right transforms)."""
    x, g, v = _x((4, 16), "float32", 5), _x((4, 16), "float32", 6), _x((4, 16), "float32", 7)
    w, tw = np.linspace(0.5, 2, 16).astype(np.float32), _x((16,), "float32", 8)
    dx, dw = adapter.vjp(x, w, 1e-3, g)
    rdx, rdw = reference.rms_norm_vjp(x, w, 1e-3, g)
    np.testing.assert_allclose(dx, rdx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dw, rdw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(adapter.jvp(x, w, 1e-3, v, tw),
                               reference.rms_norm_jvp(x, w, 1e-3, v, tw), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(adapter.hvp(x, w, 1e-3, g, v),
                               reference.rms_norm_hvp(x, w, 1e-3, g, v), rtol=1e-4, atol=1e-5)


# --- modules ---------------------------------------------------------------------------------------

@needs_torch
@clause("MOD-1")
def test_torch_module_info():
    """torch.nn.RMSNorm holds its eps as given: None by default (torch then uses
    finfo(dtype).eps), and eps <= 0 is accepted; one float32 parameter, "weight"."""
    impl = torch_rmsnorm.module_cpu
    info = impl.module_info(6)
    assert info.eps is None and set(info.parameters) == {"weight"}
    w = info.parameters["weight"]
    assert w.dtype == np.float32 and np.array_equal(w, np.ones(6))
    assert impl.module_info(6, 1e-3).eps == 1e-3 and impl.module_info(6, 0.0).eps == 0.0
    caps = impl.capabilities
    assert caps.module and not caps.mlx_module
    x = _x((2, 6), "float16")
    assert np.array_equal(impl.functional(x, w, 1e-5), impl.rms_norm(x, w, 1e-5))


@needs_flax
@clause("MOD-1")
def test_flax_module_info():
    """flax.nnx.RMSNorm: epsilon 1e-6 by default, its parameter is "scale" (float32 ones), and
    a default module promotes float16 input to float32."""
    impl = jax_rmsnorm.flax_cpu
    info = impl.module_info(6)
    assert info.eps == 1e-6 and set(info.parameters) == {"scale"}
    s = info.parameters["scale"]
    assert s.dtype == np.float32 and np.array_equal(s, np.ones(6))
    assert impl.module_info(6, 0.0).eps == 0.0
    assert impl.rms_norm(_x((2, 6), "float16"), s, 1e-6).dtype == np.float32


@needs_flax
@clause("MOD-3")
def test_flax_scale_replaced_and_linen_fallback(monkeypatch):
    """The given weight replaces the nnx layer's scale (the output scales with it); and where
    flax has no nnx the adapter runs flax.linen with the same results."""
    impl = jax_rmsnorm.flax_cpu
    x, w = _x((3, 8), "float32"), np.linspace(-2, 2, 8).astype(np.float32)
    y = impl.rms_norm(x, w, 1e-5)
    np.testing.assert_allclose(y, reference.rms_norm(x, w, 1e-5), rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(jax_rmsnorm, "_nnx", lambda: None)
    assert impl.environment()["framework"] == "flax.linen"
    assert np.array_equal(impl.rms_norm(x, w, 1e-5), y)
    info = impl.module_info(8)
    assert info.eps == 1e-6 and set(info.parameters) == {"scale"}


@needs_jax
def test_jax_computes_float64_without_enabling_it_globally():
    import jax

    x = _x((2, 3), "float64")
    dx, _ = jax_rmsnorm.numpy_cpu.vjp(x, None, 1e-5, x)
    assert dx.dtype == np.float64                  # float64 computed in float64 (DTY-4) ...
    assert not jax.config.jax_enable_x64           # ... without changing the caller's JAX


@needs_jax
def test_jax_programs_are_stored_once_and_loaded_bit_identical(tmp_path, monkeypatch):
    """``jax_rmsnorm.Programs`` (the compiled programs kept between runs): the first call of a
    signature compiles and stores one file; a later run (a new Programs) loads that file without
    tracing or compiling and gives the plain ``jax.jit`` result bit for bit; a damaged file is
    compiled again; without a cache directory nothing is stored."""
    import jax

    from rmsnorm_conformance.protocol import CACHE_ENV

    fn = jax_rmsnorm.jnp_rms_norm
    x = _x((3, 33), "float16")
    w = np.linspace(0.5, 1.5, 33).astype(np.float16)
    with jax_rmsnorm.x64():
        args = (jax_rmsnorm.to_jax(x), jax_rmsnorm.to_jax(w))
        expected = np.asarray(jax.jit(fn)(*args, eps=1e-5))

        def run(programs):
            with jax_rmsnorm.x64():
                return np.asarray(programs(*args, eps=1e-5))

        monkeypatch.delenv(CACHE_ENV, raising=False)
        plain = run(jax_rmsnorm.Programs(jax.jit(fn), fn, "forward"))
        assert plain.tobytes() == expected.tobytes()
        assert not any(tmp_path.iterdir())            # nothing stored without a directory
        monkeypatch.setenv(CACHE_ENV, str(tmp_path))
        first = run(jax_rmsnorm.Programs(jax.jit(fn), fn, "forward"))
        stored = sorted((tmp_path / "jax-programs").glob("*.program"))
        assert len(stored) == 1 and first.tobytes() == expected.tobytes()

        class NotTraced:
            def lower(self, *a, **k):
                raise AssertionError("a stored program was traced and compiled again")

        loaded = run(jax_rmsnorm.Programs(NotTraced(), fn, "forward"))
        assert loaded.tobytes() == expected.tobytes()
        stored[0].write_bytes(b"damaged")
        again = run(jax_rmsnorm.Programs(jax.jit(fn), fn, "forward"))
        assert again.tobytes() == expected.tobytes()
        assert run(jax_rmsnorm.Programs(NotTraced(), fn, "forward")).tobytes() == expected.tobytes()

        # a stored program that loads but does not run (a defect of the store) is compiled afresh
        # and stored again, not reported as the implementation's error
        from jax.experimental import serialize_executable

        def broken(*a, **k):
            def program(*args, **kwargs):
                raise RuntimeError("NOT_FOUND: Function fusion not found")
            return program

        load = serialize_executable.deserialize_and_load
        monkeypatch.setattr(serialize_executable, "deserialize_and_load", broken)
        healed = run(jax_rmsnorm.Programs(jax.jit(fn), fn, "forward"))
        assert healed.tobytes() == expected.tobytes()
        monkeypatch.setattr(serialize_executable, "deserialize_and_load", load)
        assert run(jax_rmsnorm.Programs(NotTraced(), fn, "forward")).tobytes() == expected.tobytes()


#: A child process computing one jax-numpy-cpu forward through the adapter's plumbing; prints its
#: bytes in hex.
_PROGRAM_RUN = """
import sys
import numpy as np
from rmsnorm_conformance.impl import jax_rmsnorm as J
x = np.linspace(-2, 3, 3 * 33).reshape(3, 33).astype(np.float16)
w = np.linspace(0.5, 1.5, 33).astype(np.float16)
if sys.argv[1:] == ["plain"]:             # jax.jit alone, as the adapter's forward jits it
    import jax
    with J.x64():
        y = jax.jit(J.jnp_rms_norm)(J.to_jax(x), J.to_jax(w), eps=1e-5)
    print(J.to_numpy(y).tobytes().hex())
else:
    print(J.forward(J.jnp_rms_norm, x, w, 1e-5).tobytes().hex())
"""


@needs_jax
@pytest.mark.slow_self_test
def test_jax_programs_stored_under_a_users_persistent_cache_still_run(tmp_path):
    """With JAX's persistent compilation cache turned on by the user (JAX_COMPILATION_CACHE_DIR)
    and already holding the program, the program ``Programs`` stores is still one that runs
    when a later process loads it (an executable JAX's cache loaded would serialize without its
    code) and gives the same bytes."""
    from rmsnorm_conformance.protocol import CACHE_ENV

    env = {**{k: v for k, v in os.environ.items() if k != CACHE_ENV},
           CACHE_ENV: str(tmp_path / "suite"),
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}

    def run(*how) -> str:
        done = subprocess.run([sys.executable, "-c", _PROGRAM_RUN, *how], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    first = run("plain")                      # fills JAX's persistent cache
    assert any((tmp_path / "jax").iterdir())
    assert run() == first                     # compiled with JAX's cache warm, and stored
    assert len(list((tmp_path / "suite" / "jax-programs").glob("*.program"))) == 1
    assert run() == first                     # loaded from the store: it runs


@needs_jax
def test_jax_program_key_changes_with_what_built_it(monkeypatch):
    """A stored program is found again only by the same frameworks' versions, sources, machine
    and XLA/JAX settings: another jaxlib or another XLA_FLAGS makes every program a miss."""
    import importlib.metadata

    key = jax_rmsnorm._build_key
    name = jax_rmsnorm.jnp_rms_norm.__module__
    key.cache_clear()
    try:
        base = key(name)
        assert key(name) == base
        real = importlib.metadata.version
        monkeypatch.setattr(importlib.metadata, "version",
                            lambda dist: "0.0.1" if dist == "jaxlib" else real(dist))
        key.cache_clear()
        assert key(name) != base
        monkeypatch.undo()
        monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
        key.cache_clear()
        assert key(name) != base
    finally:
        monkeypatch.undo()
        key.cache_clear()

# --- Hugging Face, Keras, ONNX Runtime, Equinox -----------------------------------------------------

HAVE_HF = hf_rmsnorm.unavailable() is None
HAVE_KERAS = keras_rmsnorm.unavailable() is None
HAVE_ONNX = onnx_rmsnorm.unavailable() is None
HAVE_EQX = equinox_rmsnorm.unavailable() is None
needs_hf = pytest.mark.skipif(not HAVE_HF, reason=str(hf_rmsnorm.unavailable()))
needs_keras = pytest.mark.skipif(not HAVE_KERAS, reason=str(keras_rmsnorm.unavailable()))
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason=str(onnx_rmsnorm.unavailable()))
needs_eqx = pytest.mark.skipif(not HAVE_EQX, reason=str(equinox_rmsnorm.unavailable()))
#: the opt-in adapters' self-tests are slow self-tests (conftest.py): the default run tests no
#: opt-in adapter, and importing transformers or keras costs a worker about 5 s
opt_in = pytest.mark.slow_self_test

HF = [pytest.param(a, id=a.id, marks=[needs_hf, opt_in])
      for a in (hf_rmsnorm.llama_cpu, hf_rmsnorm.gemma_cpu, hf_rmsnorm.t5_cpu)]
KERAS_OPS = pytest.param(keras_rmsnorm.ops_cpu, id="keras-ops-cpu", marks=[needs_keras, opt_in])
KERAS_LAYER = pytest.param(keras_rmsnorm.layer_cpu, id="keras-layer-cpu", marks=[needs_keras, opt_in])
ONNX = pytest.param(onnx_rmsnorm.cpu, id="onnxruntime-cpu", marks=needs_onnx)
EQX = pytest.param(equinox_rmsnorm.cpu, id="equinox-cpu", marks=[needs_eqx, opt_in])
NEW = HF + [KERAS_OPS, KERAS_LAYER, ONNX, EQX]
#: the new adapters with gradients (all but ONNX Runtime's)
NEW_GRAD = HF + [KERAS_OPS, KERAS_LAYER, EQX]


def _weight(adapter, d, dtype, lo=0.5, hi=1.5):
    """A weight of ``dtype`` as the adapter takes it; for Gemma the parameter p, applied as
    ``weight_offset + p``."""
    w = np.linspace(lo, hi, d)
    return (w - adapter.capabilities.weight_offset).astype(DTYPES[dtype])


def _applied(adapter, w):
    """The weight the module applies: ``weight_offset + p`` formed in float32."""
    if not adapter.capabilities.weight_offset:
        return w
    return np.float32(adapter.capabilities.weight_offset) + w.astype(np.float32)


@pytest.mark.parametrize("adapter", NEW)
def test_new_adapters_environment_and_contract(adapter):
    """environment() names the framework, its version and the CPU; the declaration is well
    formed, and a plain float32 case is RMSNorm (within ACC-1's bound, against the applied
    weight)."""
    env = adapter.environment()
    assert {"framework", "version", "device"} <= set(env) and env["device"] == "cpu", env
    assert all(isinstance(v, str) for v in env.values()), env
    assert not adapter.capabilities.problems(), adapter.capabilities.problems()
    x = _x((3, 40), "float32")
    w = _weight(adapter, 40, "float32", -2, 2)
    y = adapter.rms_norm(x, w, 1e-5)
    fb = forward_bound(x, _applied(adapter, w), 1e-5, y.dtype)
    assert y.dtype == np.float32 and np.all(np.abs(y - fb.ref) <= fb.bound)


#: the function each jitted adapter compiles, to ask JAX for its output type without compiling
#: (jax.eval_shape traces the same function the adapter runs)
TRACED = {"keras-ops-cpu": lambda x, w: keras_rmsnorm.ops_rms_norm(x, w, 1e-5),
          "equinox-cpu": lambda x, w: equinox_rmsnorm.eqx_rms_norm(x, w, 1e-5)}


@clause("DTY-2")
@pytest.mark.parametrize("adapter", [a for a in NEW
                                     if a.values[0].capabilities.mixed is not None])
def test_declared_mixed_convention_is_what_the_library_returns(adapter):
    """Every x/weight dtype pair: the output dtype is the declared convention's (Llama:
    "promote", Gemma, Keras' op and Equinox: "input", T5: "weight"). The jitted adapters are
    asked through jax.eval_shape of the function they compile (nine compilations saved)."""
    traced = TRACED.get(adapter.id)
    declared = adapter.capabilities.dtypes
    for x_dt, w_dt in [(a, b) for a in declared for b in declared]:
        x, w = _x((2, 8), x_dt), _weight(adapter, 8, w_dt)
        if traced is None:
            got = adapter.rms_norm(x, w, 1e-5).dtype
        else:
            import jax

            with jax_rmsnorm.x64():            # as the adapters call (float64 stays float64)
                got = np.dtype(jax.eval_shape(traced, x, w).dtype)
        assert got == adapter.capabilities.output_dtype(x.dtype, w.dtype), (x_dt, w_dt, got)
    if traced is not None:      # and the compiled program agrees on one mixed pair
        x, w = _x((2, 8), "bfloat16"), _weight(adapter, 8, "float32")
        assert adapter.rms_norm(x, w, 1e-5).dtype == np.dtype(jax.eval_shape(traced, x, w).dtype)


@opt_in
@needs_hf
@clause("ACC-1")
def test_llama_rounds_the_normalised_value_to_x_dtype():
    """normalised_in_input_dtype: with float16 x and a float32 weight of 0.5, Llama's float32
    output is 0.5 times a float16 number (``weight * h.to(input_dtype)``), float16 precision in
    a float32 result; T5 and Gemma are not declared so."""
    impl = hf_rmsnorm.llama_cpu
    assert impl.capabilities.normalised_in_input_dtype
    x = _x((4, 64), "float16")
    y = impl.rms_norm(x, np.full(64, 0.5, np.float32), 1e-6)
    assert y.dtype == np.float32
    h = y * 2
    assert np.array_equal(h.astype(np.float16).astype(np.float32), h)
    assert not np.array_equal(h, reference.rms_norm(x, None, 1e-6).astype(np.float32))
    assert not any(a.capabilities.normalised_in_input_dtype
                   for a in (hf_rmsnorm.gemma_cpu, hf_rmsnorm.t5_cpu))


@opt_in
@needs_hf
@clause("MOD-1")
def test_gemma_applies_one_plus_its_parameter():
    """weight_offset 1.0: Gemma's parameter is zeros by default and the module applies 1 + p in
    float32: p = 0 gives the unit-weight RMSNorm, p = -1 gives zeros, p = 1 doubles it."""
    impl = hf_rmsnorm.gemma_cpu
    assert impl.capabilities.weight_offset == 1.0
    info = impl.module_info(8)
    assert info.eps == 1e-6 and set(info.parameters) == {"weight"}
    p = info.parameters["weight"]
    assert p.dtype == np.float32 and np.array_equal(p, np.zeros(8))
    x = _x((3, 8), "float32")
    unit = impl.rms_norm(x, p, 1e-6)
    np.testing.assert_allclose(unit, reference.rms_norm(x, None, 1e-6), rtol=2e-7, atol=0)
    assert np.all(impl.rms_norm(x, p - 1, 1e-6) == 0)
    assert np.array_equal(impl.rms_norm(x, p + 1, 1e-6), 2 * unit)


@opt_in
@needs_hf
@clause("MOD-1")
@pytest.mark.parametrize("adapter", HF)
def test_hf_module_info(adapter):
    """One float32 parameter "weight" (Llama and T5: ones; Gemma: zeros, applied as 1 + p),
    default eps 1e-6, eps <= 0 accepted: a module, not MLX's."""
    info = adapter.module_info(6)
    assert info.eps == 1e-6 and set(info.parameters) == {"weight"}
    w = info.parameters["weight"]
    assert w.dtype == np.float32 and np.array_equal(_applied(adapter, w), np.ones(6))
    assert adapter.module_info(6, 0.0).eps == 0.0 and adapter.module_info(6, -1.0).eps == -1.0
    caps = adapter.capabilities
    assert caps.module and not caps.mlx_module and not caps.functional and not caps.weight_none
    with pytest.raises(ValueError, match="always holds a weight"):
        adapter.rms_norm(_x((2, 6), "float32"), None, 1e-6)


@opt_in
@needs_hf
@clause("MET-7")
@pytest.mark.parametrize("kind", torch_rmsnorm.TORCH_LAYOUTS)
def test_hf_layouts(kind):
    """The HF modules take torch's views (every layout but "reversed"), never reading the NaN
    gaps, with the contiguous result within a few float32 ulps."""
    x, w = _x((3, 4, 6), "float32"), np.linspace(0.5, 2, 6).astype(np.float32)
    case = layout_input(kind, Case(x, w, 1e-5, ""))
    layout = layout_for(kind, case, seed=4)
    for impl in (hf_rmsnorm.llama_cpu, hf_rmsnorm.t5_cpu):
        got = impl.rms_norm(case.x, case.weight, 1e-5, layout)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, impl.rms_norm(case.x, case.weight, 1e-5), rtol=4e-7)


@opt_in
@needs_keras
@clause("MOD-3")
def test_keras_layer_contract():
    """The layer: default epsilon 1e-6, one float32 parameter "scale" (ones); the op's default
    epsilon is keras.config.epsilon() (1e-7); the layer equals the op with its scale; and it
    casts x to its compute dtype first (a float16 layer on float32 input returns float16, NaN
    where x exceeds float16's range), which is why it declares no mixed convention."""
    keras = keras_rmsnorm._keras()     # KERAS_BACKEND=jax first, whatever ran before in this worker

    layer, ops = keras_rmsnorm.layer_cpu, keras_rmsnorm.ops_cpu
    assert keras.backend.backend() == "jax" and keras.config.epsilon() == 1e-7
    assert layer.capabilities.mixed is None and ops.capabilities.mixed == "input"
    info = layer.module_info(5)
    assert info.eps == 1e-6 and set(info.parameters) == {"scale"}
    s = info.parameters["scale"]
    assert s.dtype == np.float32 and np.array_equal(s, np.ones(5))
    assert layer.module_info(5, -1.0).eps == -1.0
    x = _x((3, 5), "bfloat16")
    w = np.linspace(-2, 2, 5).astype(ml_dtypes.bfloat16)
    assert np.array_equal(layer.rms_norm(x, w, 1e-6), layer.functional(x, w, 1e-6))
    assert np.array_equal(layer.rms_norm(x, w, 1e-6), ops.rms_norm(x, w, 1e-6))
    y = keras_rmsnorm.layer_rms_norm(np.array([[1e5, 1.0]], np.float32), np.ones(2, np.float16),
                                     1e-5)
    assert y.dtype == np.float16 and np.isnan(y[0, 0])


@needs_onnx
@clause("FWD-5")
def test_onnxruntime_contract():
    """float32 and float16 only, one type for X and scale, a scale required, eps not validated,
    an empty axis rejected: each refusal comes back as ValueError; one session per (dtypes,
    rank, eps), reused across shapes."""
    impl = onnx_rmsnorm.cpu
    assert tuple(impl.capabilities.dtypes) == ("float32", "float16")
    assert impl.capabilities.mixed is None and not impl.capabilities.gradients
    x = _x((3, 8), "float16")
    with pytest.raises(ValueError, match="onnxruntime rejected"):
        impl.rms_norm(x, np.ones(8, np.float32), 1e-5)                 # mixed types
    with pytest.raises(ValueError, match="onnxruntime rejected"):
        impl.rms_norm(x.astype(BF16), np.ones(8, BF16), 1e-5)          # no bfloat16 kernel
    with pytest.raises(ValueError, match="must be at least 1"):
        impl.rms_norm(np.zeros((3, 0), np.float32), np.ones(0, np.float32), 1e-5)
    with pytest.raises(ValueError, match="required input"):
        impl.rms_norm(x, None, 1e-5)
    z = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    y0 = impl.rms_norm(z, np.ones(2, np.float32), 0.0)
    assert np.allclose(y0[0], [0.8485281, 1.1313709]) and np.all(np.isnan(y0[1]))
    before = onnx_rmsnorm.session.cache_info().currsize
    impl.rms_norm(_x((5, 3), "float32"), np.ones(3, np.float32), 0.125)
    impl.rms_norm(_x((2, 17), "float32"), np.ones(17, np.float32), 0.125)
    assert onnx_rmsnorm.session.cache_info().currsize == before + 1


@opt_in
@needs_eqx
@clause("MOD-1")
def test_equinox_module_and_zero_bias():
    """A default eqx.nn.RMSNorm has eps 1e-5 and two float32 parameters, weight (ones) and bias
    (zeros): module_bias. The adapter's zero bias is a runtime array, really added, so a zero
    output is +0.0 whatever the sign of its x (which keeps MET-1 from holding bit for bit on
    zeros: docs/notes/frameworks.md, Equinox)."""
    impl = equinox_rmsnorm.cpu
    caps = impl.capabilities
    assert caps.module and caps.module_bias and not caps.mlx_module and caps.mixed == "input"
    info = impl.module_info(4)
    assert info.eps == 1e-5 and set(info.parameters) == {"weight", "bias"}
    assert all(p.dtype == np.float32 for p in info.parameters.values())
    assert np.array_equal(info.parameters["weight"], np.ones(4))
    assert np.array_equal(info.parameters["bias"], np.zeros(4))
    x = np.array([[0.0, 1.0, -2.0]], np.float32)
    y = impl.rms_norm(-x, np.ones(3, np.float32), 1e-5)
    assert not np.signbit(y[0, 0]) and np.signbit(impl.rms_norm(x, -np.ones(3, np.float32),
                                                                1e-5)[0, 1])
    assert impl.rms_norm(_x((2, 3, 5), "float16"), None, 1e-5).shape == (2, 3, 5)


@clause("VAL-5")
@pytest.mark.parametrize("adapter", NEW)
def test_new_adapters_accept_nonpositive_eps(adapter):
    """eps = 0, < 0 and inf are computed, not rejected (nonpositive_eps), with a weight."""
    assert adapter.capabilities.nonpositive_eps
    x = np.array([[3.0, 4.0]], np.float32)
    w = _weight(adapter, 2, "float32", 1, 1)
    for eps in (0.0, -1e-6, np.inf):
        np.testing.assert_allclose(adapter.rms_norm(x, w, eps), reference.rms_norm(x, None, eps),
                                   rtol=1e-6)


@clause("GRAD-3")
@pytest.mark.parametrize("adapter", NEW_GRAD)
def test_new_adapters_gradients(adapter):
    """dx like x, dweight like the weight, the tangent like the output, H v like x (the mixed
    pair where declared), and float32 values against the reference (with the applied
    weight)."""
    caps = adapter.capabilities
    w_dt = "float32" if caps.mixed else "bfloat16"
    for shape in ((3, 5),):         # zero-size arrays: the suite's GRAD-3
        x = _x(shape, "bfloat16", 1)
        w = _weight(adapter, 5, w_dt)
        out = caps.output_dtype(x.dtype, w.dtype)
        g, v, tw = _x(shape, out.name, 2), _x(shape, "bfloat16", 3), _x((5,), w_dt, 4)
        dx, dw = adapter.vjp(x, w, 1e-5, g)
        assert dx.shape == x.shape and dx.dtype == x.dtype
        assert dw.shape == w.shape and dw.dtype == w.dtype
        ty = adapter.jvp(x, w, 1e-5, v, tw)
        assert ty.shape == x.shape and ty.dtype == out
        hv = adapter.hvp(x, w, 1e-5, g, v)
        assert hv.shape == x.shape and hv.dtype == x.dtype
    x, g, v = _x((4, 16), "float32", 5), _x((4, 16), "float32", 6), _x((4, 16), "float32", 7)
    w, tw = _weight(adapter, 16, "float32"), _x((16,), "float32", 8)
    wa = _applied(adapter, w)
    dx, dw = adapter.vjp(x, w, 1e-3, g)
    rdx, rdw = reference.rms_norm_vjp(x, wa, 1e-3, g)
    np.testing.assert_allclose(dx, rdx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dw, rdw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(adapter.jvp(x, w, 1e-3, v, tw),
                               reference.rms_norm_jvp(x, wa, 1e-3, v, tw), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(adapter.hvp(x, w, 1e-3, g, v),
                               reference.rms_norm_hvp(x, wa, 1e-3, g, v), rtol=1e-4, atol=1e-5)


# --- benchmarks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("adapter", ALL_CPU + NEW_GRAD)
def test_benchmark_hooks(adapter):
    for op in ("forward", "backward", "copy"):
        run = adapter.benchmark(op, (4, 64), "bfloat16")
        assert callable(run), op
        run()
    assert adapter.benchmark("sideways", (4, 64), "float32") is None


@needs_onnx
def test_onnxruntime_benchmark_forward_only():
    run = onnx_rmsnorm.cpu.benchmark("forward", (4, 64), "float16")
    assert callable(run)
    run()
    assert onnx_rmsnorm.cpu.benchmark("backward", (4, 64), "float32") is None
    assert onnx_rmsnorm.cpu.benchmark("forward", (4, 64), "bfloat16") is None


# --- the example plug-in ---------------------------------------------------------------------------

EXAMPLE = ROOT / "examples" / "rmsnorm-example-plugin"


def test_example_plugin_imports_only_the_public_module():
    """The example adapter imports numpy and rmsnorm_conformance, never impl or conformance."""
    src = EXAMPLE / "rmsnorm_example_plugin" / "adapter.py"
    roots = set()
    for node in ast.walk(ast.parse(src.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0])
    assert roots == {"numpy", "rmsnorm_conformance"}, roots
    assert 'example-numpy = "rmsnorm_example_plugin.adapter:adapter"' in \
        (EXAMPLE / "pyproject.toml").read_text()


def test_example_plugin_adapter_works():
    spec = importlib.util.spec_from_file_location(
        "example_adapter", EXAMPLE / "rmsnorm_example_plugin" / "adapter.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    impl = mod.adapter
    assert not impl.capabilities.problems()
    x, w = _x((3, 8), "float32"), np.linspace(0.5, 2, 8).astype(np.float32)
    y = impl.rms_norm(x, w, 1e-5)
    fb = forward_bound(x, w, 1e-5, y.dtype)
    assert y.dtype == np.float32 and np.all(np.abs(y - fb.ref) <= fb.bound)
    src = np.ascontiguousarray(x[..., ::-1])
    assert np.array_equal(impl.rms_norm(x, w, 1e-5, Layout("reversed", src, x.shape)),
                          mod.rms_norm(x, w, 1e-5))
