"""Tests for best-fit packing, the grain training stream, validation batches and global arrays."""

import json
import pathlib
import time
import types

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P

from engram_jax.data import packing, pipeline
from engram_jax.hashing import build_layout, canonicalize_np, hash_rows_np

VOCAB = 300
BOS = VOCAB - 1
NUM_CANONICAL = 200
T = 16
ROW = T + 1
MICRO_ROWS = 4
MICRO_STEPS = 2
CANONICAL_MAP = np.arange(VOCAB) % NUM_CANONICAL
LAYOUT = build_layout((1, 3), NUM_CANONICAL, vocab_per_ngram=101)


def random_documents(rng: np.random.Generator, num_docs: int, max_len: int) -> list[np.ndarray]:
  """Documents of 1..max_len tokens, each starting with BOS."""
  docs = []
  for length in rng.integers(1, max_len + 1, size=num_docs):
    body = rng.integers(0, BOS, size=length - 1)
    docs.append(np.concatenate([[BOS], body]).astype(np.uint16))
  return docs


def write_split_shards(data_dir: pathlib.Path, split: str, shard_docs: list[list[np.ndarray]]) -> dict:
  names = []
  for i, docs in enumerate(shard_docs):
    name = f"{split}_{i:05d}"
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    np.save(data_dir / f"{name}.tokens.npy", np.concatenate(docs).astype(np.uint16))
    np.save(data_dir / f"{name}.offsets.npy", offsets)
    names.append(name)
  tokens = sum(len(d) for docs in shard_docs for d in docs)
  return {"shards": names, "documents": sum(map(len, shard_docs)), "tokens": tokens}


def write_data_dir(data_dir: pathlib.Path, train: list[list[np.ndarray]],
                   val: list[list[np.ndarray]]) -> pathlib.Path:
  """Write shards and a manifest in the token-shard format."""
  data_dir.mkdir(parents=True, exist_ok=True)
  manifest = {
      "format": "engram-token-shards/1", "tokenizer_fingerprint": "test", "vocab_size": VOCAB,
      "bos_id": BOS, "dtype": "uint16",
      "splits": {"train": write_split_shards(data_dir, "train", train),
                 "val": write_split_shards(data_dir, "val", val)},
  }
  (data_dir / "manifest.json").write_text(json.dumps(manifest))
  return data_dir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
  rng = np.random.default_rng(0)
  train = [random_documents(rng, 120, 3 * ROW), random_documents(rng, 80, 2 * ROW)]
  val = [random_documents(rng, 60, 2 * ROW)]
  return write_data_dir(tmp_path_factory.mktemp("shards"), train, val)


def make_train(data_dir, **overrides) -> grain.IterDataset:
  kwargs = dict(seq_len=T, micro_batch_rows=MICRO_ROWS, micro_steps=MICRO_STEPS,
                canonical_map=CANONICAL_MAP, layout=LAYOUT, seed=1234)
  kwargs.update(overrides)
  return pipeline.train_dataset(data_dir, **kwargs)


def take(iterator, count: int) -> list[dict]:
  return [next(iterator) for _ in range(count)]


def offsets_of(lengths) -> np.ndarray:
  return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def mixed_offsets(seed: int = 0, num_docs: int = 400) -> np.ndarray:
  """Document lengths from 1 to 4 rows, so some documents must be cropped."""
  return offsets_of(np.random.default_rng(seed).integers(1, 4 * ROW, size=num_docs))


def row_lengths(packed: packing.PackedShard) -> np.ndarray:
  return np.add.reduceat(packed.seg_len, packed.row_ptr[:-1])


def coverage_is_exact(packed: packing.PackedShard, num_tokens: int) -> bool:
  """True when real segments and dropped pieces tile [0, num_tokens) exactly once."""
  real = packed.seg_start != packing.SYNTHETIC_BOS_START
  starts = np.concatenate([packed.seg_start[real], packed.dropped_start])
  lengths = np.concatenate([packed.seg_len[real], packed.dropped_len])
  order = np.argsort(starts)
  ends = starts[order] + lengths[order]
  return starts[order][0] == 0 and ends[-1] == num_tokens and np.array_equal(starts[order][1:], ends[:-1])


# ---------------------------------------------------------------------------
# Packing.


@pytest.mark.parametrize("synthetic_bos", [True, False])
def test_rows_have_row_length(synthetic_bos):
  packed = packing.pack_shard(mixed_offsets(), ROW, synthetic_bos=synthetic_bos)
  assert np.all(row_lengths(packed) == ROW)


@pytest.mark.parametrize("synthetic_bos", [True, False])
def test_rows_open_with_document(synthetic_bos):
  offsets = mixed_offsets()
  packed = packing.pack_shard(offsets, ROW, synthetic_bos=synthetic_bos)
  openers = packed.seg_start[packed.row_ptr[:-1]]
  allowed = np.append(offsets[:-1], packing.SYNTHETIC_BOS_START)
  assert np.all(np.isin(openers, allowed))


@pytest.mark.parametrize("synthetic_bos", [True, False])
def test_tokens_covered_once(synthetic_bos):
  offsets = mixed_offsets()
  packed = packing.pack_shard(offsets, ROW, synthetic_bos=synthetic_bos)
  assert coverage_is_exact(packed, int(offsets[-1]))


def test_synthetic_bos_drops_only_tail():
  packed = packing.pack_shard(mixed_offsets(), ROW, synthetic_bos=True)
  assert packed.dropped_tokens < ROW


def test_orphans_counted_without_synthetic_bos():
  # Documents of 3 rows each leave more continuation text than rows to open.
  packed = packing.pack_shard(offsets_of([3 * ROW] * 10), ROW, synthetic_bos=False)
  assert packed.orphan_tokens == packed.dropped_tokens > ROW


def test_synthetic_bos_rows_open_orphans():
  packed = packing.pack_shard(offsets_of([3 * ROW] * 10), ROW, synthetic_bos=True)
  assert packed.synthetic_bos_rows > 0


def test_short_documents_need_no_synthetic_bos():
  offsets = offsets_of(np.random.default_rng(1).integers(1, ROW // 2, size=500))
  packed = packing.pack_shard(offsets, ROW)
  assert packed.synthetic_bos_rows == 0


def test_packing_deterministic():
  first = packing.pack_shard(mixed_offsets(), ROW)
  second = packing.pack_shard(mixed_offsets(), ROW)
  assert np.array_equal(first.seg_start, second.seg_start)


def test_packing_rejects_decreasing_offsets():
  with pytest.raises(ValueError, match="strictly increase"):
    packing.pack_shard(np.array([0, 5, 5, 9]), ROW)


def test_packing_rejects_short_rows():
  with pytest.raises(ValueError, match="row_length=1"):
    packing.pack_shard(offsets_of([3, 4]), 1)


def test_packing_million_tokens_fast():
  lengths = np.maximum(1, np.random.default_rng(2).lognormal(np.log(300), 1.0, size=4000)).astype(np.int64)
  offsets = offsets_of(lengths[np.cumsum(lengths) <= 1_000_000])
  start = time.perf_counter()
  packing.pack_shard(offsets, 1025)
  assert time.perf_counter() - start < 1.0


def test_copy_row_writes_synthetic_bos(tmp_path):
  doc = np.concatenate([[BOS], np.arange(1, 3 * ROW) % BOS]).astype(np.uint16)
  data_dir = write_data_dir(tmp_path, train=[[doc]], val=[[doc]])
  split = pipeline.PackedSplit(data_dir, "train", T)
  rows_NR = split.read_rows(np.arange(split.num_rows))
  text = np.concatenate([rows_NR[0]] + [row[1:] for row in rows_NR[1:]])
  assert np.array_equal(text, doc[:text.size])


def test_split_rows_start_with_bos(data_dir):
  split = pipeline.PackedSplit(data_dir, "train", T)
  assert np.all(split.read_rows(np.arange(split.num_rows))[:, 0] == BOS)


def test_token_above_vocab_raises(tmp_path):
  bad = np.array([BOS, VOCAB + 5] + [1] * ROW, dtype=np.uint16)
  data_dir = write_data_dir(tmp_path, train=[[bad]], val=[[bad]])
  split = pipeline.PackedSplit(data_dir, "train", T)
  with pytest.raises(ValueError, match="vocab_size=300"):
    split.read_rows([0])


def test_missing_manifest_raises(tmp_path):
  with pytest.raises(FileNotFoundError):
    pipeline.PackedSplit(tmp_path, "train", T)


# ---------------------------------------------------------------------------
# Training stream.


def test_train_shapes(data_dir):
  batch = next(iter(make_train(data_dir)))
  expected = {"inputs": (MICRO_STEPS, MICRO_ROWS, T), "targets": (MICRO_STEPS, MICRO_ROWS, T),
              "engram_rows": (MICRO_STEPS, LAYOUT.num_layers, MICRO_ROWS, T, LAYOUT.heads)}
  assert {key: value.shape for key, value in batch.items()} == expected


def test_train_dtypes_int32(data_dir):
  batch = next(iter(make_train(data_dir)))
  assert {value.dtype for value in batch.values()} == {np.dtype(np.int32)}


def test_targets_shift_inputs(data_dir):
  batch = next(iter(make_train(data_dir)))
  assert np.array_equal(batch["inputs"][..., 1:], batch["targets"][..., :-1])


def test_train_rows_start_with_bos(data_dir):
  batch = next(iter(make_train(data_dir)))
  assert np.all(batch["inputs"][..., 0] == BOS)


def test_no_engram_omits_rows(data_dir):
  batch = next(iter(make_train(data_dir, layout=None, canonical_map=None)))
  assert sorted(batch) == ["inputs", "targets"]


def test_layout_without_map_raises(data_dir):
  with pytest.raises(ValueError, match="canonical_map is None"):
    make_train(data_dir, canonical_map=None)


def test_short_canonical_map_raises(data_dir):
  with pytest.raises(ValueError, match="vocab_size=300"):
    make_train(data_dir, canonical_map=CANONICAL_MAP[:100])


def test_canonical_map_out_of_layout_raises(data_dir):
  with pytest.raises(ValueError, match="canonical_map value"):
    make_train(data_dir, canonical_map=np.arange(VOCAB))


def test_canonical_map_object_accepted(data_dir):
  cmap = types.SimpleNamespace(raw_to_canonical=CANONICAL_MAP.astype(np.int32))
  first = next(iter(make_train(data_dir, canonical_map=cmap)))
  expected = next(iter(make_train(data_dir)))
  assert np.array_equal(first["engram_rows"], expected["engram_rows"])


def test_engram_rows_match_hash(data_dir):
  batch = next(iter(make_train(data_dir)))
  for a in range(MICRO_STEPS):
    canonical = canonicalize_np(batch["inputs"][a], CANONICAL_MAP)
    assert np.array_equal(batch["engram_rows"][a], hash_rows_np(canonical, LAYOUT))


def test_reset_at_bos_matches_hash(tmp_path):
  # Documents shorter than half a row, so documents start inside rows.
  rng = np.random.default_rng(3)
  docs = random_documents(rng, 100, ROW // 2)
  batch = next(iter(make_train(write_data_dir(tmp_path, [docs], [docs]), reset_at_bos=True)))
  assert np.any(batch["inputs"][..., 1:] == BOS)
  for a in range(MICRO_STEPS):
    canonical = canonicalize_np(batch["inputs"][a], CANONICAL_MAP)
    expected = hash_rows_np(canonical, LAYOUT, reset_id=int(CANONICAL_MAP[BOS]))
    assert np.array_equal(batch["engram_rows"][a], expected)


def test_same_seed_same_batches(data_dir):
  first = take(iter(make_train(data_dir)), 3)
  second = take(iter(make_train(data_dir)), 3)
  assert all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(first, second))


def test_different_seed_different_batches(data_dir):
  first = next(iter(make_train(data_dir)))
  second = next(iter(make_train(data_dir, seed=1235)))
  assert not np.array_equal(first["inputs"], second["inputs"])


def one_row_epochs(data_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Return (epoch 1 rows, epoch 2 rows, packed rows) with one row per step."""
  split = pipeline.PackedSplit(data_dir, "train", T)
  stream = iter(make_train(data_dir, micro_batch_rows=1, micro_steps=1, layout=None))
  rows = [np.concatenate([b["inputs"][0, 0], b["targets"][0, 0, -1:]]) for b in take(stream, 2 * split.num_rows)]
  return np.stack(rows[:split.num_rows]), np.stack(rows[split.num_rows:]), split.read_rows(np.arange(split.num_rows))


def sorted_rows(rows_NR: np.ndarray) -> np.ndarray:
  return rows_NR[np.lexsort(rows_NR.T[::-1])]


def test_epoch_holds_every_row_once(data_dir):
  epoch1, _, packed = one_row_epochs(data_dir)
  assert np.array_equal(sorted_rows(epoch1), sorted_rows(packed))


def test_epochs_differ_in_order(data_dir):
  epoch1, epoch2, _ = one_row_epochs(data_dir)
  assert np.array_equal(sorted_rows(epoch1), sorted_rows(epoch2))
  assert not np.array_equal(epoch1, epoch2)


def test_resume_continues_stream(data_dir):
  stream = iter(make_train(data_dir))
  take(stream, 3)
  state = json.loads(json.dumps(stream.get_state()))
  expected = take(stream, 3)
  resumed = iter(make_train(data_dir))
  resumed.set_state(state)
  for want, got in zip(expected, take(resumed, 3)):
    for key in want:
      assert np.array_equal(want[key], got[key]), key


def test_orbax_restores_grain_iterator(data_dir, tmp_path):
  stream = iter(make_train(data_dir))
  take(stream, 2)
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(stream)))
  manager.wait_until_finished()
  expected = next(stream)
  resumed = iter(make_train(data_dir))
  manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  assert np.array_equal(next(resumed)["inputs"], expected["inputs"])
  manager.close()


def test_process_slices_form_global_batch(data_dir):
  whole = take(iter(make_train(data_dir, process_count=1, process_index=0)), 2)
  parts = [take(iter(make_train(data_dir, process_count=2, process_index=p)), 2) for p in range(2)]
  for step in range(2):
    for key, axis in (("inputs", 1), ("targets", 1), ("engram_rows", 2)):
      joined = np.concatenate([parts[0][step][key], parts[1][step][key]], axis=axis)
      assert np.array_equal(joined, whole[step][key]), key


def test_resume_with_more_processes(data_dir):
  single = iter(make_train(data_dir, process_count=1, process_index=0))
  take(single, 2)
  state = single.get_state()
  expected = next(single)["inputs"]
  second = iter(make_train(data_dir, process_count=2, process_index=1))
  second.set_state(state)
  assert np.array_equal(next(second)["inputs"], expected[:, MICRO_ROWS // 2:])


def test_indivisible_process_count_raises(data_dir):
  with pytest.raises(ValueError, match="micro_batch_rows=3 does not divide over process_count=2"):
    make_train(data_dir, micro_batch_rows=3, process_count=2, process_index=0)


def test_process_index_out_of_range_raises(data_dir):
  with pytest.raises(ValueError, match="process_index=2"):
    make_train(data_dir, process_count=2, process_index=2)


def test_batches_do_not_share_buffers(data_dir):
  stream = iter(make_train(data_dir))
  first = next(stream)
  kept = {key: value.copy() for key, value in first.items()}
  second = next(stream)
  assert all(np.array_equal(first[key], kept[key]) for key in kept)
  assert not np.array_equal(first["engram_rows"], second["engram_rows"])
  canonical = canonicalize_np(second["inputs"][0], CANONICAL_MAP)
  assert np.array_equal(second["engram_rows"][0], hash_rows_np(canonical, LAYOUT))


# ---------------------------------------------------------------------------
# Validation batches.


def make_val(data_dir, **overrides):
  kwargs = dict(seq_len=T, batch_rows=4, max_tokens=10 * 4 * T, canonical_map=CANONICAL_MAP,
                layout=LAYOUT)
  kwargs.update(overrides)
  return pipeline.val_batches(data_dir, **kwargs)


def test_val_deterministic(data_dir):
  first, _ = make_val(data_dir)
  second, _ = make_val(data_dir)
  assert all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(first, second))


def test_val_respects_max_tokens(data_dir):
  batches, tokens = make_val(data_dir, max_tokens=5 * 4 * T + 7)
  assert (len(batches), tokens) == (5, 5 * 4 * T)


def test_val_uses_all_when_split_short(data_dir):
  split = pipeline.PackedSplit(data_dir, "val", T)
  batches, tokens = make_val(data_dir, max_tokens=10**9)
  assert tokens == (split.num_rows // 4) * 4 * T


def test_val_rows_in_packed_order(data_dir):
  split = pipeline.PackedSplit(data_dir, "val", T)
  batches, _ = make_val(data_dir)
  assert np.array_equal(batches[1]["inputs"], split.read_rows(np.arange(4, 8))[:, :-1])


def test_val_engram_shape(data_dir):
  batches, _ = make_val(data_dir)
  assert batches[0]["engram_rows"].shape == (LAYOUT.num_layers, 4, T, LAYOUT.heads)


def test_val_too_few_tokens_raises(data_dir):
  with pytest.raises(ValueError, match="max_tokens=16"):
    make_val(data_dir, max_tokens=T)


# ---------------------------------------------------------------------------
# Global arrays.


@pytest.fixture(scope="module")
def mesh():
  return jax.make_mesh((4, 2), ("data", "table"))


def test_to_global_shapes(data_dir, mesh):
  batch = pipeline.to_global(next(iter(make_train(data_dir, micro_batch_rows=8))), mesh, ("data", "table"))
  shapes = {key: value.shape for key, value in batch.items()}
  assert shapes == {"inputs": (MICRO_STEPS, 8, T), "targets": (MICRO_STEPS, 8, T),
                    "engram_rows": (MICRO_STEPS, LAYOUT.num_layers, 8, T, LAYOUT.heads)}


def test_to_global_sharding(data_dir, mesh):
  batch = pipeline.to_global(next(iter(make_train(data_dir, micro_batch_rows=8))), mesh, ("data", "table"))
  assert batch["inputs"].sharding.spec == P(None, ("data", "table"), None)
  assert batch["engram_rows"].sharding.spec == P(None, None, ("data", "table"), None, None)
  assert batch["inputs"].addressable_shards[0].data.shape == (MICRO_STEPS, 1, T)


def test_to_global_keeps_values(data_dir, mesh):
  local = next(iter(make_train(data_dir, micro_batch_rows=8)))
  batch = pipeline.to_global(local, mesh, ("data", "table"))
  assert np.array_equal(np.asarray(batch["engram_rows"]), local["engram_rows"])


def test_to_global_eval(data_dir, mesh):
  batches, _ = make_val(data_dir, batch_rows=8)
  batch = pipeline.to_global_eval(batches[0], mesh, "data")
  assert batch["engram_rows"].sharding.spec == P(None, ("data",), None, None)
  assert np.array_equal(np.asarray(batch["inputs"]), batches[0]["inputs"])


def test_to_global_unknown_axis_raises(data_dir, mesh):
  with pytest.raises(ValueError, match="fsdp"):
    pipeline.to_global(next(iter(make_train(data_dir))), mesh, ("fsdp",))
