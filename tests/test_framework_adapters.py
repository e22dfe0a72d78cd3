"""Self-tests of the adapters for other frameworks (impl/torch_rmsnorm.py, impl/jax_rmsnorm.py)
and of the example plug-in (examples/rmsnorm-example-plugin).

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
import pathlib
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from rmsnorm_conformance import reference
from rmsnorm_conformance.conformance.cases import Case
from rmsnorm_conformance.conformance.registry import discover
from rmsnorm_conformance.conformance.test_met import layout_for, layout_input
from rmsnorm_conformance.conformance.tolerance import forward_bound
from rmsnorm_conformance.impl import jax_rmsnorm, torch_rmsnorm
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
       "jax-numpy-cpu", "flax-nnx-cpu"}


def _x(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(DTYPES[dtype])


def _all_bf16():
    """Every bfloat16 bit pattern: zeros, subnormals, normals, infinities, NaN payloads."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(BF16)


def _bits(a):
    return a.view(f"u{a.dtype.itemsize}")


# --- loading ------------------------------------------------------------------------------------

def test_entry_points_registered_and_load():
    """Every framework id is registered; each loads, and is usable or says why not."""
    entries = {e.id: e for e in discover()}
    missing = IDS - set(entries)
    assert not missing, f"not registered (reinstall the package: pip install -e .): {missing}"
    for i in IDS:
        e = entries[i].load(isolation="none")
        assert e.error is None, f"{i}: {e.error}"
        assert not e.impl.capabilities.problems(), (i, e.impl.capabilities.problems())
        assert e.unavailable is None or e.unavailable.strip(), i


@pytest.mark.parametrize("blocked, module, attrs, extra", [
    (("torch",), "rmsnorm_conformance.impl.torch_rmsnorm", ("functional_cpu", "module_cuda"), "[torch]"),
    (("jax", "flax"), "rmsnorm_conformance.impl.jax_rmsnorm", ("numpy_cpu", "flax_cpu"), "[jax]"),
    (("flax",), "rmsnorm_conformance.impl.jax_rmsnorm", ("flax_cpu",), "[jax]"),
])
def test_imports_without_framework_and_names_the_extra(blocked, module, attrs, extra):
    """With the framework absent the adapter module still imports, and unavailable_reason()
    names the extra to install."""
    code = (f"import sys\nfor m in {blocked!r}: sys.modules[m] = None\n"
            f"import {module} as a\n"
            f"for name in {attrs!r}: print(getattr(a, name).unavailable_reason())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.strip().splitlines()
    assert len(out) == len(attrs) and all("is not installed" in line and extra in line
                                          for line in out), out


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

MIXED = [("float16", "float32"), ("bfloat16", "float32"), ("float32", "float16"),
         ("float16", "bfloat16")]


@clause("DTY-2")
@pytest.mark.parametrize("adapter", ALL_CPU)
@pytest.mark.parametrize("x_dt, w_dt", MIXED[:2])
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


# --- benchmarks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("adapter", ALL_CPU)
def test_benchmark_hooks(adapter):
    for op in ("forward", "backward", "copy"):
        run = adapter.benchmark(op, (4, 64), "bfloat16")
        assert callable(run), op
        run()
    assert adapter.benchmark("sideways", (4, 64), "float32") is None


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
