"""Per-sequence row overrides in the forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from engram_jax import hashing
from engram_jax.model import factory
from engram_jax.model.overrides import UNUSED_ROW, RowOverrides

LENGTH = 12


@pytest.fixture(scope="module")
def setup():
  cfg = tiny.get_config()
  cfg.model.sequence_len = 32
  layout = factory.hash_layout(cfg)
  model = factory.create_model(cfg, layout=layout, seed=0)
  ids = jax.random.randint(jax.random.key(0), (3, LENGTH), 0, 500)
  rows = jnp.asarray(hashing.hash_rows_np(np.asarray(ids), layout))
  return cfg, layout, model, ids, rows


def _user_map(rows, sequence: int, position: int, seed: int, width: int):
  """Override the 16 rows of the last Engram layer at one position with random values."""
  target = np.sort(np.asarray(rows[-1, sequence, position]))
  values = np.random.default_rng(seed).normal(size=(target.size, width)).astype(np.float32) * 5
  return target.astype(np.int32), values


def _batch_overrides(maps, slots: int, width: int) -> RowOverrides:
  rows = np.full((len(maps), slots), UNUSED_ROW, np.int32)
  values = np.zeros((len(maps), slots, width), np.float32)
  for b, (r, v) in enumerate(maps):
    rows[b, :len(r)] = r
    values[b, :len(r)] = v
  return RowOverrides(jnp.asarray(rows), jnp.asarray(values))


def _write_in_place(model, layer: int, rows, values):
  table = model.blocks[layer].engram.table
  original = table[...]
  table[...] = original.at[rows].set(values)
  return original


def test_override_equals_in_place_write(setup):
  cfg, layout, model, ids, rows = setup
  layer = cfg.engram.layer_ids[-1]
  width = model.blocks[layer].engram.row_width
  r, v = _user_map(rows, 0, 5, seed=1, width=width)
  functional = model(ids[:1], rows[:, :1], overrides={layer: _batch_overrides([(r, v)], 20, width)})
  original = _write_in_place(model, layer, r, v)
  try:
    in_place = model(ids[:1], rows[:, :1])
  finally:
    model.blocks[layer].engram.table[...] = original
  np.testing.assert_allclose(np.asarray(functional), np.asarray(in_place), atol=1e-5)


def test_mixed_batch_equals_each_alone(setup):
  cfg, layout, model, ids, rows = setup
  layer = cfg.engram.layer_ids[-1]
  width = model.blocks[layer].engram.row_width
  maps = [_user_map(rows, b, 4 + b, seed=b, width=width) for b in range(3)]
  mixed = model(ids, rows, overrides={layer: _batch_overrides(maps, 16, width)})
  for b in range(3):
    alone = model(ids[b:b + 1], rows[:, b:b + 1], overrides={layer: _batch_overrides([maps[b]], 16, width)})
    np.testing.assert_allclose(np.asarray(mixed[b]), np.asarray(alone[0]), atol=1e-5)


def test_other_users_rows_have_no_influence(setup):
  cfg, layout, model, ids, rows = setup
  layer = cfg.engram.layer_ids[-1]
  width = model.blocks[layer].engram.row_width
  # Sequence 1 carries a map written at sequence 0's addresses: sequence 0 must not see it.
  foreign = _user_map(rows, 0, 5, seed=7, width=width)
  empty = (np.zeros((0,), np.int32), np.zeros((0, width), np.float32))
  with_foreign = model(ids[:2], rows[:, :2], overrides={layer: _batch_overrides([empty, foreign], 16, width)})
  without = model(ids[:2], rows[:, :2], overrides={layer: _batch_overrides([empty, empty], 16, width)})
  np.testing.assert_array_equal(np.asarray(with_foreign[0]), np.asarray(without[0]))


def test_override_changes_only_later_positions(setup):
  cfg, layout, model, ids, rows = setup
  layer = cfg.engram.layer_ids[-1]
  width = model.blocks[layer].engram.row_width
  r, v = _user_map(rows, 0, 6, seed=3, width=width)
  plain = model(ids[:1], rows[:, :1])
  written = model(ids[:1], rows[:, :1], overrides={layer: _batch_overrides([(r, v)], 16, width)})
  np.testing.assert_array_equal(np.asarray(plain[0, :6]), np.asarray(written[0, :6]))
  assert not np.allclose(np.asarray(plain[0, 6]), np.asarray(written[0, 6]))


def test_gradient_reaches_override_values(setup):
  cfg, layout, model, ids, rows = setup
  layer = cfg.engram.layer_ids[-1]
  width = model.blocks[layer].engram.row_width
  r, v = _user_map(rows, 0, 5, seed=1, width=width)

  def loss(values):
    overrides = {layer: RowOverrides(jnp.asarray(r)[None], values)}
    return model(ids[:1], rows[:, :1], overrides=overrides)[0, 5, 7]

  grad = jax.grad(loss)(jnp.asarray(v)[None])
  assert float(jnp.abs(grad).sum()) > 0


def test_override_on_block_without_engram_rejected(setup):
  cfg, layout, model, ids, rows = setup
  with pytest.raises(ValueError, match="no Engram layer"):
    model(ids[:1], rows[:, :1], overrides={0: _batch_overrides([], 4, 8)})


def test_override_shape_mismatch_rejected(setup):
  cfg, layout, model, ids, rows = setup
  layer = cfg.engram.layer_ids[-1]
  bad = RowOverrides(jnp.zeros((2, 4), jnp.int32), jnp.zeros((2, 4, 8)))
  with pytest.raises(ValueError, match="batch"):
    model(ids[:1], rows[:, :1], overrides={layer: bad})
