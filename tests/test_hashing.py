"""Tests for the N-gram hash: golden vectors, parity, guards and layout."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from engram_jax import config as config_lib
from engram_jax.hashing import (
    HashLayout, build_layout, canonicalize_jax, canonicalize_np, check_jax_layout,
    hash_rows_jax, hash_rows_np, layout_from_config)

GOLDEN_IDS = [[5, 17, 123, 31999, 0, 42]]
INT64_MAX = 2**63 - 1


def golden_layout(**overrides) -> HashLayout:
  kwargs = dict(vocab_per_ngram=50_000, pad_id=0)
  kwargs.update(overrides)
  return build_layout([2, 7], 32_000, **kwargs)


# ---------------------------------------------------------------------------
# Independent scalar reference: Python ints and loops only.


def naive_primes(start: int, count: int) -> list[int]:
  found, n = [], start
  while len(found) < count:
    if n > 1 and all(n % d for d in range(2, int(n**0.5) + 1)):
      found.append(n)
    n += 1
  return found


def reference_rows(ids, layer_ids, num_canonical, vocab_per_ngram, *, max_ngram=3,
                   heads_per_ngram=8, seed=0, pad_id=None, salt=0, reset_id=None):
  """Return nested lists [L][B][T][G] of global rows, computed one scalar at a time."""
  pad_id = num_canonical if pad_id is None else pad_id
  id_bound = max(num_canonical, pad_id + 1)
  half = max(1, ((2**63 - 1) // id_bound) // 2)
  heads = (max_ngram - 1) * heads_per_ngram
  primes = naive_primes(vocab_per_ngram, len(layer_ids) * heads)
  out = []
  for layer_index, layer_id in enumerate(layer_ids):
    draws = np.random.default_rng(seed + 10007 * layer_id).integers(
        low=0, high=half, size=(max_ngram,), dtype=np.int64)
    multipliers = [2 * int(r) + 1 for r in draws]
    layer_primes = primes[layer_index * heads:(layer_index + 1) * heads]
    layer_out = []
    for row in ids:
      row_out = []
      for t in range(len(row)):
        last_reset = max([j for j in range(t + 1) if row[j] == reset_id], default=-1)

        def token(k):
          j = t - k
          if j < 0 or (reset_id is not None and j < last_reset):
            return pad_id
          return int(row[j])

        rows_g, offset, g = [], 0, 0
        for order in range(2, max_ngram + 1):
          mix = 0
          for k in range(order):
            mix ^= token(k) * multipliers[k]
          if salt:
            mix ^= salt
          for _ in range(heads_per_ngram):
            rows_g.append(mix % layer_primes[g] + offset)
            offset += layer_primes[g]
            g += 1
        row_out.append(rows_g)
      layer_out.append(row_out)
    out.append(layer_out)
  return out


def random_ids(layout: HashLayout, shape, seed: int) -> np.ndarray:
  """Random valid ids with the pad, id_bound - 1 and V' - 1 mixed in."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, layout.id_bound, size=shape)
  ids[:, 0] = layout.num_canonical - 1
  ids[:, 1] = layout.pad_id
  ids[:, 2] = layout.id_bound - 1
  ids[0, -4:] = layout.num_canonical - rng.integers(1, 4, size=4)
  return ids


# ---------------------------------------------------------------------------
# Golden vectors.


@pytest.mark.parametrize("layer_index, expected", [
    (0, [236914943454149, 114877991227409, 70130460280699]),
    (1, [255083121608143, 216069123034253, 231698980498867]),
])
def test_golden_multipliers(layer_index, expected):
  assert golden_layout().multipliers[layer_index].tolist() == expected


def test_golden_primes_layer7():
  expected = [50147, 50153, 50159, 50177, 50207, 50221, 50227, 50231,
              50261, 50263, 50273, 50287, 50291, 50311, 50321, 50329]
  assert golden_layout().primes[1].tolist() == expected


def test_golden_primes_layer2():
  primes = golden_layout().primes[0].tolist()
  assert primes == naive_primes(50_021, 16)
  assert primes[-1] == 50_131


@pytest.mark.parametrize("position, expected", [
    (0, [19395, 79424, 136275, 156738, 209715, 285030, 328001, 372072,
         434295, 491261, 529191, 557204, 615029, 679838, 746473, 769459]),
    (5, [12477, 65370, 101536, 163061, 236734, 296953, 306336, 355066,
         424567, 468897, 546564, 593161, 606619, 675653, 728074, 761745]),
])
@pytest.mark.parametrize("hash_fn", [hash_rows_np, hash_rows_jax])
def test_golden_rows_layer7(hash_fn, position, expected):
  rows_LBTG = np.asarray(hash_fn(np.array(GOLDEN_IDS), golden_layout()))
  assert rows_LBTG[1, 0, position].tolist() == expected


def test_golden_output_shape_dtype():
  rows_LBTG = hash_rows_np(np.array(GOLDEN_IDS), golden_layout())
  assert rows_LBTG.shape == (2, 1, 6, 16)
  assert rows_LBTG.dtype == np.int32


def test_primes_vocab_20000():
  layout = build_layout([2, 5], 32_000, vocab_per_ngram=20_000)
  assert layout.primes[0, :8].tolist() == [20011, 20021, 20023, 20029, 20047, 20051, 20063, 20071]
  assert layout.primes[0, 8:].tolist() == [20089, 20101, 20107, 20113, 20117, 20123, 20129, 20143]
  assert layout.table_rows == (321_238, 323_560)


def test_table_rows_vocab_50000():
  assert golden_layout().table_rows == (801_268, 803_858)


@pytest.mark.parametrize("preset, slots", [
    ("tiny", 164_434), ("small", 644_798), ("medium", 1_605_126),
    ("large", 1_605_126), ("xlarge", 3_206_914),
])
def test_preset_slots(preset, slots):
  vocab_per_ngram, _ = config_lib.ENGRAM_PRESETS[preset]
  layout = build_layout([2, 7], 32_000, vocab_per_ngram=vocab_per_ngram)
  assert sum(layout.table_rows) == slots
  assert np.all(np.diff(layout.primes.ravel()) > 0)
  assert layout.primes.ravel().tolist() == naive_primes(vocab_per_ngram, 32)


@pytest.mark.parametrize("preset", sorted(config_lib.ENGRAM_PRESETS))
def test_preset_offsets_are_slabs(preset):
  vocab_per_ngram, _ = config_lib.ENGRAM_PRESETS[preset]
  layout = build_layout([2, 7], 32_000, vocab_per_ngram=vocab_per_ngram)
  for primes_G, offsets_G, rows in zip(layout.primes, layout.offsets, layout.table_rows):
    assert offsets_G[0] == 0
    assert np.array_equal(offsets_G[1:], np.cumsum(primes_G)[:-1])
    assert offsets_G[-1] + primes_G[-1] == rows


def test_xlarge_largest_table():
  layout = build_layout([2, 7], 32_000, vocab_per_ngram=100_000)
  assert layout.table_rows[1] == 1_605_088


# ---------------------------------------------------------------------------
# Parity: numpy against the scalar reference, JAX against numpy.


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(pad_id=0),
    dict(salt=2**62 + 12345),
    dict(salt=INT64_MAX, reset_id=7),
    dict(reset_id=7, pad_id=0),
    dict(max_ngram=4, heads_per_ngram=3, seed=11),
])
def test_numpy_matches_scalar_reference(kwargs):
  hash_kwargs = {k: kwargs.pop(k) for k in ("salt", "reset_id") if k in kwargs}
  layout = build_layout([1, 4], 3_000, vocab_per_ngram=5_000, **kwargs)
  ids = random_ids(layout, (3, 24), seed=1)
  ids[:, 5::6] = 7  # reset_id occurrences
  expected = reference_rows(ids.tolist(), [1, 4], 3_000, 5_000, **kwargs, **hash_kwargs)
  assert hash_rows_np(ids, layout, **hash_kwargs).tolist() == expected


@pytest.mark.parametrize("pad_id", [None, 0])
@pytest.mark.parametrize("salt", [0, 1, 2**62, INT64_MAX])
def test_jax_jit_matches_numpy(pad_id, salt):
  layout = build_layout([2, 7], 32_000, vocab_per_ngram=100_000, pad_id=pad_id)
  ids = random_ids(layout, (4, 96), seed=salt % 1000)
  hash_jit = jax.jit(hash_rows_jax, static_argnames=("layout", "salt", "reset_id"))
  rows_jax = hash_jit(jnp.asarray(ids, dtype=jnp.int32), layout, salt=salt)
  assert rows_jax.dtype == jnp.int32
  assert np.array_equal(np.asarray(rows_jax), hash_rows_np(ids, layout, salt=salt))


def test_jax_reset_matches_numpy():
  layout = build_layout([2, 7], 32_000, vocab_per_ngram=20_000)
  ids = random_ids(layout, (3, 64), seed=5)
  ids[:, 9::13] = 31_999
  rows_jax = jax.jit(lambda x: hash_rows_jax(x, layout, salt=99, reset_id=31_999))(ids)
  assert np.array_equal(np.asarray(rows_jax), hash_rows_np(ids, layout, salt=99, reset_id=31_999))


def test_jax_higher_order_matches_numpy():
  layout = build_layout([0, 3, 9], 50_000, vocab_per_ngram=7_000, max_ngram=5, heads_per_ngram=2)
  ids = random_ids(layout, (2, 40), seed=3)
  rows_jax = jax.jit(lambda x: hash_rows_jax(x, layout, salt=INT64_MAX))(ids)
  assert np.array_equal(np.asarray(rows_jax), hash_rows_np(ids, layout, salt=INT64_MAX))


def test_jax_small_dtype_accepted():
  layout = build_layout([2, 5], 32_000, vocab_per_ngram=20_000)
  ids = random_ids(layout, (2, 16), seed=4).astype(np.uint16)
  rows_jax = hash_rows_jax(jnp.asarray(ids), layout)
  assert np.array_equal(np.asarray(rows_jax), hash_rows_np(ids, layout))


def test_jax_runs_with_x64_disabled():
  assert not jax.config.jax_enable_x64


def test_rows_inside_head_slabs():
  layout = build_layout([2, 7], 32_000, vocab_per_ngram=5_000)
  rows_LBTG = hash_rows_np(random_ids(layout, (4, 128), seed=6), layout, salt=2**61)
  for layer in range(layout.num_layers):
    local_BTG = rows_LBTG[layer] - layout.offsets[layer]
    assert local_BTG.min() >= 0
    assert np.all(local_BTG < layout.primes[layer])


# ---------------------------------------------------------------------------
# Input guards.


@pytest.mark.parametrize("hash_fn", [hash_rows_np, hash_rows_jax])
@pytest.mark.parametrize("bad_id", [-1, 32_001, 2**32 + 5])
def test_out_of_range_id_rejected(hash_fn, bad_id):
  ids = np.array([[1, 2, bad_id, 4]], dtype=np.int64)
  with pytest.raises(ValueError, match=rf"{bad_id} at position \(0, 2\)"):
    hash_fn(ids, build_layout([2, 5], 32_000, vocab_per_ngram=5_000))


def test_reference_pad_bound_rejects_v_prime():
  with pytest.raises(ValueError, match="outside"):
    hash_rows_np(np.array([[32_000]]), golden_layout())


def test_concrete_jax_ids_checked_eagerly():
  with pytest.raises(ValueError, match="-3 at position"):
    hash_rows_jax(jnp.array([[1, -3]]), golden_layout())


def test_traced_ids_checked_under_checkify():
  checked = checkify.checkify(jax.jit(lambda x: hash_rows_jax(x, golden_layout())))
  error, _ = checked(jnp.array([[1, 32_000]]))
  with pytest.raises(checkify.JaxRuntimeError, match="max 32000"):
    error.throw()


def test_traced_valid_ids_pass_checkify():
  checked = checkify.checkify(jax.jit(lambda x: hash_rows_jax(x, golden_layout())))
  error, _ = checked(jnp.array(GOLDEN_IDS))
  assert error.get() is None


def test_x64_int64_ids_not_truncated():
  layout = build_layout([2, 5], 32_000, vocab_per_ngram=5_000)
  with jax.enable_x64(True):
    ids = jnp.array([[3, 2**32 + 3]], dtype=jnp.int64)
    with pytest.raises(ValueError, match=str(2**32 + 3)):
      hash_rows_jax(ids, layout)


@pytest.mark.parametrize("hash_fn", [hash_rows_np, hash_rows_jax])
@pytest.mark.parametrize("ids", [
    np.array([[1.0, 2.0]]), np.array([[True, False]]), jnp.array([[1.0, 2.0]]),
])
def test_non_integer_dtype_rejected(hash_fn, ids):
  with pytest.raises(TypeError, match="dtype"):
    hash_fn(ids, golden_layout())


@pytest.mark.parametrize("hash_fn", [hash_rows_np, hash_rows_jax])
@pytest.mark.parametrize("ids", [np.arange(4), np.zeros((1, 2, 3), dtype=np.int32)])
def test_non_2d_ids_rejected(hash_fn, ids):
  with pytest.raises(ValueError, match=r"expected 2-D \[B, T\]"):
    hash_fn(ids, golden_layout())


@pytest.mark.parametrize("hash_fn", [hash_rows_np, hash_rows_jax])
@pytest.mark.parametrize("salt, error", [
    (-1, ValueError), (2**63, ValueError), (1.5, TypeError), (True, TypeError),
])
def test_bad_salt_rejected(hash_fn, salt, error):
  with pytest.raises(error, match="salt"):
    hash_fn(np.array(GOLDEN_IDS), golden_layout(), salt=salt)


@pytest.mark.parametrize("reset_id", [-1, 32_000, 2.0])
def test_bad_reset_id_rejected(reset_id):
  with pytest.raises((ValueError, TypeError), match="reset_id"):
    hash_rows_np(np.array(GOLDEN_IDS), golden_layout(), reset_id=reset_id)


def test_jax_rejects_primes_above_2_24():
  layout = build_layout([0], 100, vocab_per_ngram=2**24, heads_per_ngram=2)
  with pytest.raises(ValueError, match="below 2\\^24"):
    check_jax_layout(layout)


def test_jax_primes_just_below_2_24():
  layout = build_layout([0], 32_000, vocab_per_ngram=2**24 - 300, heads_per_ngram=4)
  assert layout.primes.max() == 16_776_973
  ids = random_ids(layout, (2, 64), seed=8)
  rows_jax = hash_rows_jax(ids, layout, salt=INT64_MAX)
  assert np.array_equal(np.asarray(rows_jax), hash_rows_np(ids, layout, salt=INT64_MAX))


# ---------------------------------------------------------------------------
# Pad, reset at BOS and buffer reuse.


def test_reserved_pad_is_not_a_token():
  layout = build_layout([2, 5], 32_000, vocab_per_ngram=5_000)
  assert layout.pad_id == 32_000
  assert layout.id_bound == 32_001


def test_reserved_pad_rows_differ_from_every_id():
  layout = build_layout([2, 5], 32_000, vocab_per_ngram=5_000)
  first_BT = np.array([[42]])
  pairs_BT = np.stack([np.arange(32_000), np.full(32_000, 42)], axis=1)
  row_start_G = hash_rows_np(first_BT, layout)[1, 0, 0]
  after_id_BG = hash_rows_np(pairs_BT, layout)[1, :, 1]
  assert not np.any(np.all(after_id_BG == row_start_G, axis=-1))


def test_reference_pad_collides_with_id_zero():
  layout = golden_layout()
  row_start_G = hash_rows_np(np.array([[42]]), layout)[1, 0, 0]
  after_zero_G = hash_rows_np(np.array([[0, 42]]), layout)[1, 0, 1]
  assert np.array_equal(row_start_G, after_zero_G)


def test_reset_matches_row_start():
  layout = build_layout([2, 5], 32_000, vocab_per_ngram=5_000)
  bos = 31_999
  packed = hash_rows_np(np.array([[11, 12, bos, 13, 14]]), layout, reset_id=bos)
  alone = hash_rows_np(np.array([[bos, 13, 14]]), layout, reset_id=bos)
  assert np.array_equal(packed[:, :, 2:], alone)


def test_reset_keeps_rows_before_bos():
  layout = build_layout([2, 5], 32_000, vocab_per_ngram=5_000)
  ids = np.array([[11, 12, 31_999, 13, 14]])
  with_reset = hash_rows_np(ids, layout, reset_id=31_999)
  assert np.array_equal(with_reset[:, :, :2], hash_rows_np(ids, layout)[:, :, :2])


def test_reset_off_crosses_bos():
  layout = build_layout([2, 5], 32_000, vocab_per_ngram=5_000)
  packed = hash_rows_np(np.array([[11, 12, 31_999, 13, 14]]), layout)
  alone = hash_rows_np(np.array([[31_999, 13, 14]]), layout)
  assert not np.array_equal(packed[:, :, 2:], alone)


def test_reused_buffer_gives_new_rows():
  layout = build_layout([2, 5], 32_000, vocab_per_ngram=5_000)
  buffer_BT = np.zeros((2, 32), dtype=np.int32)
  batch_a = random_ids(layout, (2, 32), seed=10)
  batch_b = random_ids(layout, (2, 32), seed=11)
  buffer_BT[:] = batch_a
  rows_a = hash_rows_np(buffer_BT, layout)
  buffer_BT[:] = batch_b
  rows_b = hash_rows_np(buffer_BT, layout)
  assert not np.array_equal(rows_a, rows_b)
  assert np.array_equal(rows_a, hash_rows_np(batch_a.copy(), layout))
  assert np.array_equal(rows_b, hash_rows_np(batch_b.copy(), layout))


def test_jit_reused_input_gives_new_rows():
  layout = build_layout([2, 5], 32_000, vocab_per_ngram=5_000)
  hash_jit = jax.jit(lambda x: hash_rows_jax(x, layout))
  rows_a = hash_jit(jnp.asarray(random_ids(layout, (2, 32), seed=10)))
  rows_b = hash_jit(jnp.asarray(random_ids(layout, (2, 32), seed=11)))
  assert not np.array_equal(np.asarray(rows_a), np.asarray(rows_b))


# ---------------------------------------------------------------------------
# Canonical map.


def test_canonicalize_np_maps_ids():
  canonical_map = np.array([0, 1, 1, 2, 0])
  assert canonicalize_np(np.array([[4, 3, 2]]), canonical_map).tolist() == [[0, 2, 1]]


@pytest.mark.parametrize("canonicalize", [canonicalize_np, canonicalize_jax])
@pytest.mark.parametrize("raw_id", [-1, 5])
def test_canonicalize_rejects_raw_id(canonicalize, raw_id):
  with pytest.raises(ValueError, match=f"raw token id {raw_id}"):
    canonicalize(np.array([0, raw_id]), np.array([0, 1, 1, 2, 0]))


@pytest.mark.parametrize("canonicalize", [canonicalize_np, canonicalize_jax])
def test_canonicalize_rejects_map_value(canonicalize):
  with pytest.raises(ValueError, match="canonical_map value 3"):
    canonicalize(np.array([0]), np.array([0, 1, 3]), num_canonical=3)


def test_canonicalize_jax_jit_matches_numpy():
  canonical_map = np.random.default_rng(0).integers(0, 900, size=1_000)
  raw = np.random.default_rng(1).integers(0, 1_000, size=(3, 50))
  mapped = jax.jit(lambda x: canonicalize_jax(x, canonical_map))(jnp.asarray(raw))
  assert np.array_equal(np.asarray(mapped), canonicalize_np(raw, canonical_map))


def test_canonicalize_jax_checkify_catches_raw_id():
  checked = checkify.checkify(jax.jit(lambda x: canonicalize_jax(x, np.arange(10))))
  error, mapped = checked(jnp.array([3, 10]))
  assert np.asarray(mapped).tolist() == [3, -1]
  with pytest.raises(checkify.JaxRuntimeError, match="raw token ids"):
    error.throw()


# ---------------------------------------------------------------------------
# Layout object.


def test_physical_rows_padded_to_shards():
  layout = build_layout([2, 7], 32_000, vocab_per_ngram=20_000, table_shards=8)
  assert layout.table_rows == (321_238, 323_560)
  assert layout.physical_rows == (321_240, 323_560)


def test_sharding_keeps_addresses():
  sharded = build_layout([2, 7], 32_000, vocab_per_ngram=20_000, table_shards=8)
  plain = build_layout([2, 7], 32_000, vocab_per_ngram=20_000)
  ids = random_ids(plain, (2, 16), seed=2)
  assert np.array_equal(hash_rows_np(ids, sharded), hash_rows_np(ids, plain))


BASE_LAYOUT_ARGS = dict(layer_ids=(2, 7), num_canonical=32_000, vocab_per_ngram=20_000)


@pytest.mark.parametrize("change", [
    dict(layer_ids=(2, 5)), dict(num_canonical=31_999), dict(vocab_per_ngram=20_001),
    dict(max_ngram=4), dict(heads_per_ngram=7), dict(seed=1), dict(pad_id=0),
    dict(table_shards=8),
])
def test_fingerprint_changes_with_field(change):
  base = build_layout(**BASE_LAYOUT_ARGS)
  changed = build_layout(**{**BASE_LAYOUT_ARGS, **change})
  assert changed.fingerprint != base.fingerprint
  assert changed != base


def test_fingerprint_is_stable():
  first, second = build_layout(**BASE_LAYOUT_ARGS), build_layout(**BASE_LAYOUT_ARGS)
  assert first.fingerprint == second.fingerprint
  assert first == second
  assert hash(first) == hash(second)


def test_to_dict_round_trip():
  layout = build_layout(**BASE_LAYOUT_ARGS, table_shards=4)
  restored = HashLayout.from_dict(json.loads(json.dumps(layout.to_dict())))
  assert restored == layout
  assert restored.physical_rows == layout.physical_rows


def test_layout_arrays_read_only():
  layout = golden_layout()
  with pytest.raises(ValueError):
    layout.primes[0, 0] = 2


def test_tampered_offsets_rejected():
  layout = golden_layout()
  offsets = layout.offsets.copy()
  offsets[0, 3] += 1
  with pytest.raises(ValueError, match="offsets"):
    dataclasses.replace(layout, offsets=offsets)


@pytest.mark.parametrize("kwargs, error", [
    (dict(layer_ids=(2, 2)), ValueError), (dict(layer_ids=()), ValueError),
    (dict(pad_id=32_001), ValueError), (dict(max_ngram=1), ValueError),
    (dict(seed=-1), ValueError), (dict(table_shards=0), ValueError),
    (dict(vocab_per_ngram=2.5), TypeError),
])
def test_bad_layout_args_rejected(kwargs, error):
  with pytest.raises(error):
    build_layout(**{**BASE_LAYOUT_ARGS, **kwargs})


def test_layout_from_config_default_pad():
  cfg = config_lib.base_config()
  layout = layout_from_config(cfg.engram, 32_000)
  assert layout.pad_id == 32_000
  assert layout.layer_ids == (2, 5)
  assert layout.table_rows == (321_238, 323_560)


def test_layout_from_config_reference_pad():
  cfg = config_lib.base_config()
  cfg.engram.reference_pad = True
  assert layout_from_config(cfg.engram, 32_000).pad_id == 0


def test_layout_from_config_pad_conflict():
  cfg = config_lib.base_config()
  cfg.engram.reference_pad = True
  with pytest.raises(ValueError, match="reference_pad"):
    layout_from_config(cfg.engram, 32_000, pad_id=5)
