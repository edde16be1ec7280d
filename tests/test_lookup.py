"""Tests for the Engram table lookup and gate, single-device and row-sharded.

The sharded tests need 8 devices, so tests/conftest.py sets
jax_num_cpu_devices=8 before any JAX backend starts.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from engram_jax.model import lookup

# Small shapes: 61 logical rows padded to 64 physical rows (8 shards of 8 or 4
# shards of 16), G=4 heads of width W=4, so E=16, and model width D=8.
LOGICAL_ROWS, PHYS_ROWS, W, G, B, T, D = 61, 64, 4, 4, 8, 3, 8
E = G * W

needs_8_devices = pytest.mark.skipif(
    jax.device_count() < 8,
    reason="needs 8 devices; tests/conftest.py sets jax_num_cpu_devices=8 "
    "unless a JAX backend started before it")

# (mesh shape over ("data", "table"), batch_axes)
SHARDED_CASES = [
    ((1, 8), None),
    ((2, 4), None),
    ((2, 4), "data"),
    ((2, 4), ("data", "table")),
]


def _inputs(seed: int = 0):
  rng = np.random.default_rng(seed)
  table = rng.normal(size=(PHYS_ROWS, W)).astype(np.float32)
  # Every row id below LOGICAL_ROWS is addressable. Fix the first positions so
  # the batch reads the last logical row, the first row and one row per shard
  # of 8.
  rows = rng.integers(0, LOGICAL_ROWS, size=(B, T, G)).astype(np.int32)
  rows[0, 0] = [LOGICAL_ROWS - 1, 0, 8, 16]
  rows[0, 1] = [24, 32, 40, 48]
  rows[0, 2] = [56, 7, 15, 23]
  h = rng.normal(size=(B, T, D)).astype(np.float32)
  bound = 1.0 / np.sqrt(E)
  w_k = rng.uniform(-bound, bound, size=(E, D)).astype(np.float32)
  w_v = rng.uniform(-bound, bound, size=(E, D)).astype(np.float32)
  return table, rows, h, w_k, w_v


def _mesh(shape, axis_types=None):
  return jax.make_mesh(shape, ("data", "table"), axis_types=axis_types,
                       devices=jax.devices()[:8])


def _place(mesh, table, rows, batch_axes):
  """Put the table and ids on the mesh as a training step would."""
  batch_spec = P(batch_axes, None, None)
  return (jax.device_put(table, NamedSharding(mesh, P("table", None))),
          jax.device_put(rows, NamedSharding(mesh, batch_spec)))


def _table_all_gathers(hlo: str) -> list[str]:
  """HLO lines that all-gather table rows: a rank-2 float result of width W.

  Activations are rank 3 or more and the weights are D wide, so only a (full
  or partial) gather of the table matches.
  """
  found = []
  for line in hlo.splitlines():
    match = re.search(r"=\s*(.+?)\s+all-gather(-start)?\(", line)
    if match and re.search(rf"\b(f16|bf16|f32|f64)\[\d+,{W}\]",
                           match.group(1)):
      found.append(line.strip())
  return found


def _loss_fn(mesh, batch_axes, compute_dtype=jnp.float32):
  def loss(table, h, w_k, w_v, rows):
    vg = lookup.lookup_and_gate(h, rows, table, w_k, w_v,
                                compute_dtype=compute_dtype, mesh=mesh,
                                batch_axes=batch_axes)
    return jnp.sum(jnp.sin(vg.astype(jnp.float32)))
  return loss


# --- single-device gather ---------------------------------------------------


def test_plain_gather_matches_numpy():
  table, rows, *_ = _inputs()
  out = lookup.gather_rows(jnp.asarray(table), jnp.asarray(rows))
  expected = table[rows].reshape(B, T, E)
  np.testing.assert_array_equal(np.asarray(out), expected)


def test_plain_gather_head_order():
  table = np.arange(PHYS_ROWS * W, dtype=np.float32).reshape(PHYS_ROWS, W)
  rows = np.array([[[3, 10, 20, 60]]], np.int32)
  out = np.asarray(lookup.gather_rows(jnp.asarray(table), jnp.asarray(rows)))
  np.testing.assert_array_equal(out[0, 0, W:2 * W], table[10])


def test_plain_gather_dtype_cast():
  table, rows, *_ = _inputs()
  out = lookup.gather_rows(jnp.asarray(table), jnp.asarray(rows),
                           dtype=jnp.bfloat16)
  assert out.dtype == jnp.bfloat16


def test_mesh_with_one_table_shard_uses_plain_path():
  table, rows, *_ = _inputs()
  mesh = _mesh((8, 1))
  out = lookup.gather_rows(jnp.asarray(table), jnp.asarray(rows), mesh=mesh)
  np.testing.assert_array_equal(np.asarray(out), table[rows].reshape(B, T, E))


# --- sharded gather -----------------------------------------------------------


@needs_8_devices
@pytest.mark.parametrize("mesh_shape,batch_axes", SHARDED_CASES)
def test_sharded_gather_matches_plain(mesh_shape, batch_axes):
  table, rows, *_ = _inputs()
  mesh = _mesh(mesh_shape)
  with jax.set_mesh(mesh):
    table_s, rows_s = _place(mesh, table, rows, batch_axes)
    gather = jax.jit(lambda t, r: lookup.gather_rows(
        t, r, mesh=mesh, batch_axes=batch_axes))
    out = gather(table_s, rows_s)
  np.testing.assert_array_equal(np.asarray(out), table[rows].reshape(B, T, E))


@needs_8_devices
@pytest.mark.parametrize("mesh_shape,batch_axes", SHARDED_CASES)
def test_sharded_gather_output_sharding(mesh_shape, batch_axes):
  table, rows, *_ = _inputs()
  mesh = _mesh(mesh_shape)
  with jax.set_mesh(mesh):
    table_s, rows_s = _place(mesh, table, rows, batch_axes)
    out = jax.jit(lambda t, r: lookup.gather_rows(
        t, r, mesh=mesh, batch_axes=batch_axes))(table_s, rows_s)
  expected = NamedSharding(mesh, P(batch_axes, None, None))
  assert out.sharding.is_equivalent_to(expected, 3)


@needs_8_devices
def test_sharded_gather_auto_mesh():
  table, rows, *_ = _inputs()
  mesh = _mesh((2, 4), axis_types=(AxisType.Auto, AxisType.Auto))
  gather = jax.jit(lambda t, r: lookup.gather_rows(
      t, r, mesh=mesh, batch_axes="data"))
  out = gather(jnp.asarray(table), jnp.asarray(rows))
  np.testing.assert_array_equal(np.asarray(out), table[rows].reshape(B, T, E))


@needs_8_devices
def test_sharded_gather_bf16_output():
  table, rows, *_ = _inputs()
  mesh = _mesh((1, 8))
  with jax.set_mesh(mesh):
    table_s, rows_s = _place(mesh, table, rows, None)
    out = jax.jit(lambda t, r: lookup.gather_rows(
        t, r, mesh=mesh, dtype=jnp.bfloat16))(table_s, rows_s)
  assert out.dtype == jnp.bfloat16
  expected = table[rows].reshape(B, T, E).astype(jnp.bfloat16)
  np.testing.assert_array_equal(np.asarray(out), expected)


# --- lookup_and_gate: plain versus sharded ----------------------------------


@needs_8_devices
@pytest.mark.parametrize("mesh_shape,batch_axes", [
    ((1, 8), None), ((2, 4), "data"), ((2, 4), ("data", "table"))])
def test_sharded_lookup_values_and_grads(mesh_shape, batch_axes):
  table, rows, h, w_k, w_v = _inputs()
  args = tuple(jnp.asarray(a) for a in (table, h, w_k, w_v))
  plain = jax.value_and_grad(_loss_fn(None, None), argnums=(0, 1, 2, 3))
  want_loss, want_grads = plain(*args, jnp.asarray(rows))

  mesh = _mesh(mesh_shape)
  with jax.set_mesh(mesh):
    table_s, rows_s = _place(mesh, table, rows, batch_axes)
    sharded = jax.jit(jax.value_and_grad(_loss_fn(mesh, batch_axes),
                                         argnums=(0, 1, 2, 3)))
    got_loss, got_grads = sharded(table_s, *args[1:], rows_s)

  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
  for name, got, want in zip(("table", "h", "w_k", "w_v"), got_grads,
                             want_grads):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5,
                               atol=1e-6, err_msg=f"gradient of {name}")


def test_table_grad_hits_only_read_rows():
  table, rows, h, w_k, w_v = _inputs()
  grad = jax.grad(_loss_fn(None, None))(
      *(jnp.asarray(a) for a in (table, h, w_k, w_v)), jnp.asarray(rows))
  unread = np.setdiff1d(np.arange(PHYS_ROWS), rows)
  assert unread.size > 0
  np.testing.assert_array_equal(np.asarray(grad)[unread], 0.0)


# --- compiled HLO: the table is never all-gathered --------------------------


@needs_8_devices
@pytest.mark.parametrize("mesh_shape,batch_axes", [
    ((1, 8), None), ((2, 4), ("data", "table"))])
def test_hlo_has_no_table_all_gather(mesh_shape, batch_axes):
  table, rows, h, w_k, w_v = _inputs()
  mesh = _mesh(mesh_shape)
  with jax.set_mesh(mesh):
    table_s, rows_s = _place(mesh, table, rows, batch_axes)
    step = jax.jit(jax.value_and_grad(_loss_fn(mesh, batch_axes),
                                      argnums=(0, 1, 2, 3)))
    hlo = step.lower(table_s, h, w_k, w_v, rows_s).compile().as_text()
  assert _table_all_gathers(hlo) == []


@needs_8_devices
def test_hlo_sums_rows_over_table_axis():
  table, rows, *_ = _inputs()
  mesh = _mesh((1, 8))
  with jax.set_mesh(mesh):
    table_s, rows_s = _place(mesh, table, rows, None)
    gather = jax.jit(lambda t, r: lookup.gather_rows(t, r, mesh=mesh))
    hlo = gather.lower(table_s, rows_s).compile().as_text()
  # Each device contributes its [B, T, G, W] block to one all-reduce.
  assert re.search(rf"f32\[{B},{T},{G},{W}\][^ ]* all-reduce\(", hlo)


@needs_8_devices
def test_hlo_check_detects_table_all_gather():
  # Control for the check above: replicating the table first must show up.
  table, rows, *_ = _inputs()
  mesh = _mesh((1, 8))
  with jax.set_mesh(mesh):
    table_s, rows_s = _place(mesh, table, rows, None)
    naive = jax.jit(lambda t, r: lookup.gather_rows(jax.reshard(t, P()), r))
    hlo = naive.lower(table_s, rows_s).compile().as_text()
  assert any(f"f32[{PHYS_ROWS},{W}]" in line
             for line in _table_all_gathers(hlo))


# --- out-of-range ids ---------------------------------------------------------


def test_concrete_out_of_range_rows_raise():
  table, rows, *_ = _inputs()
  rows[1, 1, 1] = PHYS_ROWS
  with pytest.raises(ValueError, match=r"\[0, 64\)"):
    lookup.gather_rows(jnp.asarray(table), jnp.asarray(rows))


def test_concrete_negative_rows_raise():
  table, rows, *_ = _inputs()
  rows[1, 1, 1] = -1
  with pytest.raises(ValueError, match="min -1"):
    lookup.gather_rows(jnp.asarray(table), jnp.asarray(rows))


@needs_8_devices
@pytest.mark.parametrize("mesh_shape", [None, (1, 8)])
def test_traced_out_of_range_rows_read_nan(mesh_shape):
  table, rows, *_ = _inputs()
  rows[1, 1, 1] = PHYS_ROWS
  rows[1, 1, 2] = -1
  mesh = _mesh(mesh_shape or (8, 1))
  use_mesh = None if mesh_shape is None else mesh
  with jax.set_mesh(mesh):
    gather = jax.jit(lambda t, r: lookup.gather_rows(t, r, mesh=use_mesh))
    out = np.asarray(gather(jnp.asarray(table), jnp.asarray(rows)))
  expected_nan = np.zeros((B, T, E), bool)
  expected_nan[1, 1, W:3 * W] = True
  np.testing.assert_array_equal(np.isnan(out), expected_nan)


# --- gate ---------------------------------------------------------------------


def _gate_of(h_rows, k_rows, norm_eps=0.0):
  """Alpha for hand-built h and k, with W_K = W_V = identity so k = v = e."""
  h = jnp.asarray(np.asarray(h_rows, np.float32)[None])
  e = jnp.asarray(np.asarray(k_rows, np.float32)[None])
  eye = jnp.eye(e.shape[-1], dtype=jnp.float32)
  vg = lookup.engram_gate(h, e, eye, eye, compute_dtype=jnp.float32,
                          norm_eps=norm_eps)
  return np.asarray(vg[0] / e[0])  # alpha broadcast over channels


def _alpha_for_score(signed_sqrt: float) -> np.ndarray:
  # The gate's own fp32 sigmoid, so a correct score gives a bit-equal alpha.
  return np.asarray(jax.nn.sigmoid(jnp.float32(signed_sqrt)))


def test_gate_aligned_score():
  # h = k: score = D / sqrt(D) = 4 for D = 16, signed square root 2.
  ones = np.ones((1, 16))
  np.testing.assert_array_equal(_gate_of(ones, ones), _alpha_for_score(2.0))


def test_gate_opposed_score():
  ones = np.ones((1, 16))
  np.testing.assert_array_equal(_gate_of(ones, -ones), _alpha_for_score(-2.0))


def test_gate_sigmoid_value():
  ones = np.ones((1, 16))
  np.testing.assert_allclose(_gate_of(ones, ones), 1 / (1 + np.exp(-2.0)),
                             rtol=3e-7)


def test_gate_zero_score_is_half():
  ones = np.ones((1, 16))
  alternating = np.tile([1.0, -1.0], 8)[None]
  assert (_gate_of(ones, alternating) == 0.5).all()


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gate_tiny_score_floor(sign):
  # |score| about 5e-7 is raised to 1e-6 before the square root: alpha is
  # sigmoid(+-1e-3), not sigmoid(+-7e-4).
  ones = np.ones((1, 16))
  k = np.tile([1.0, -1.0], 8)[None]
  k[0, 0] += sign * 2e-6
  floor_root = jnp.sqrt(jnp.float32(1e-6))
  np.testing.assert_array_equal(_gate_of(ones, k),
                                _alpha_for_score(sign * floor_root))


def test_gate_matches_numpy_reference():
  _, _, h, w_k, _ = _inputs()
  rng = np.random.default_rng(1)
  e = rng.normal(size=(B, T, E)).astype(np.float32)
  w_v = rng.normal(size=(E, D)).astype(np.float32)
  got = lookup.engram_gate(jnp.asarray(h), jnp.asarray(e), jnp.asarray(w_k),
                           jnp.asarray(w_v), compute_dtype=jnp.float32)

  eps = np.finfo(np.float32).eps
  h64, e64 = h.astype(np.float64), e.astype(np.float64)
  k = e64 @ w_k.astype(np.float64)
  v = e64 @ w_v.astype(np.float64)
  rms = lambda x: x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)
  score = np.sum(rms(h64) * rms(k), -1) / np.sqrt(D)
  score = np.sign(score) * np.sqrt(np.maximum(np.abs(score), 1e-6))
  want = v / (1.0 + np.exp(-score))[..., None]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_gate_grad_finite_at_zero_score():
  h = jnp.ones((1, 1, 16), jnp.float32)
  e = jnp.asarray(np.tile([1.0, -1.0], 8)[None, None], jnp.float32)
  eye = jnp.eye(16, dtype=jnp.float32)
  grad = jax.grad(lambda h: jnp.sum(lookup.engram_gate(
      h, e, eye, eye, compute_dtype=jnp.float32)))(h)
  assert np.isfinite(np.asarray(grad)).all()


# --- bf16 compute -------------------------------------------------------------


def test_bf16_lookup_returns_bf16():
  table, rows, h, w_k, w_v = _inputs()
  out = lookup.lookup_and_gate(
      jnp.asarray(h, jnp.bfloat16), jnp.asarray(rows), jnp.asarray(table),
      jnp.asarray(w_k), jnp.asarray(w_v), compute_dtype=jnp.bfloat16)
  assert out.dtype == jnp.bfloat16


def test_bf16_lookup_close_to_fp32():
  table, rows, h, w_k, w_v = _inputs()
  args = (jnp.asarray(h), jnp.asarray(rows), jnp.asarray(table),
          jnp.asarray(w_k), jnp.asarray(w_v))
  low = lookup.lookup_and_gate(*args, compute_dtype=jnp.bfloat16)
  high = lookup.lookup_and_gate(*args, compute_dtype=jnp.float32)
  np.testing.assert_allclose(np.asarray(low, np.float32), np.asarray(high),
                             rtol=5e-2, atol=2e-2)


@needs_8_devices
def test_bf16_sharded_table_grad_is_fp32():
  table, rows, h, w_k, w_v = _inputs()
  mesh = _mesh((2, 4))
  with jax.set_mesh(mesh):
    table_s, rows_s = _place(mesh, table, rows, "data")
    grad = jax.jit(jax.grad(_loss_fn(mesh, "data", jnp.bfloat16)))(
        table_s, h, w_k, w_v, rows_s)
  assert grad.dtype == jnp.float32


# --- input validation -------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int64, np.float32, np.uint32])
def test_rows_dtype_rejected(dtype):
  table, rows, *_ = _inputs()
  with pytest.raises(TypeError, match="rows must be int32"):
    lookup.gather_rows(jnp.asarray(table), rows.astype(dtype))


def test_rows_rank_rejected():
  table, rows, *_ = _inputs()
  with pytest.raises(ValueError, match="rank 3"):
    lookup.gather_rows(jnp.asarray(table), jnp.asarray(rows[0]))


def test_table_rank_rejected():
  table, rows, *_ = _inputs()
  with pytest.raises(ValueError, match="rank 2"):
    lookup.gather_rows(jnp.asarray(table.reshape(-1)), jnp.asarray(rows))


@needs_8_devices
def test_table_rows_not_divisible_rejected():
  table, rows, *_ = _inputs()
  with pytest.raises(ValueError, match="Pad the table .* to 64"):
    lookup.gather_rows(jnp.asarray(table[:LOGICAL_ROWS]), jnp.asarray(rows),
                       mesh=_mesh((1, 8)))


@needs_8_devices
def test_missing_table_axis_rejected():
  table, rows, *_ = _inputs()
  with pytest.raises(ValueError, match="'rows' is not an axis"):
    lookup.gather_rows(jnp.asarray(table), jnp.asarray(rows),
                       mesh=_mesh((1, 8)), table_axis="rows")


@needs_8_devices
def test_batch_not_divisible_rejected():
  table, rows, *_ = _inputs()
  with pytest.raises(ValueError, match="batch size 3"):
    lookup.gather_rows(jnp.asarray(table), jnp.asarray(rows[:3]),
                       mesh=_mesh((2, 4)), batch_axes=("data", "table"))


def test_batch_axes_without_mesh_rejected():
  table, rows, *_ = _inputs()
  with pytest.raises(ValueError, match="needs a mesh"):
    lookup.gather_rows(jnp.asarray(table), jnp.asarray(rows),
                       batch_axes="data")


@pytest.mark.parametrize("which", ["w_k", "w_v"])
def test_weight_shape_rejected(which):
  table, rows, h, w_k, w_v = _inputs()
  weights = {"w_k": w_k, "w_v": w_v}
  weights[which] = weights[which][:-1]
  with pytest.raises(ValueError, match=f"{which} has shape"):
    lookup.lookup_and_gate(jnp.asarray(h), jnp.asarray(rows),
                           jnp.asarray(table), jnp.asarray(weights["w_k"]),
                           jnp.asarray(weights["w_v"]),
                           compute_dtype=jnp.float32)


def test_h_shape_mismatch_rejected():
  table, rows, h, w_k, w_v = _inputs()
  with pytest.raises(ValueError, match=r"\[batch, seq\]"):
    lookup.lookup_and_gate(jnp.asarray(h[:, :2]), jnp.asarray(rows),
                           jnp.asarray(table), jnp.asarray(w_k),
                           jnp.asarray(w_v), compute_dtype=jnp.float32)


def test_integer_compute_dtype_rejected():
  table, rows, h, w_k, w_v = _inputs()
  with pytest.raises(TypeError, match="compute_dtype"):
    lookup.lookup_and_gate(jnp.asarray(h), jnp.asarray(rows),
                           jnp.asarray(table), jnp.asarray(w_k),
                           jnp.asarray(w_v), compute_dtype=jnp.int32)
