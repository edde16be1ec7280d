"""Training and validation batches from packed token shards, built with grain.

Glossary: A micro-steps per optimiser step, B rows of a global micro-batch,
b = B / process_count rows fed by this process, T sequence length, R = T + 1
packed row length, L Engram layers, G hash heads per layer.

Each split's shards are packed once (engram_jax.data.packing) and their rows
numbered in manifest order. Training shuffles all rows of the train split,
with a new order every epoch, and repeats them forever. Step k takes the next
A * B rows of that stream, and micro-batch a contains rows [a * B, (a + 1) * B)
of the step. Process p feeds the contiguous slice [p * b, (p + 1) * b) of each
micro-batch. The global batches therefore do not depend on the process count,
and an iterator state can be restored with another process count. Engram rows are hashed on the host from canonical ids, so the model
receives them as plain int32 inputs.
"""

import collections.abc
import dataclasses
import math
import os
from typing import Any, Sequence

from absl import logging
import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from engram_jax import hashing
from engram_jax.data import packing
from engram_jax.data import shards


@dataclasses.dataclass(frozen=True)
class _Shard:
  name: str
  tokens: np.ndarray  # read-only memmap [N]
  packed: packing.PackedShard


class PackedSplit:
  """Every packed row of one split; global row ids run over the shards in manifest order."""

  def __init__(self, data_dir: str | os.PathLike, split: str, seq_len: int, *,
               synthetic_bos: bool = True):
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
      raise ValueError(f"seq_len={seq_len!r} must be a positive int (tokens per row T).")
    manifest = shards.load_manifest(data_dir)
    if split not in manifest["splits"] or not manifest["splits"][split]["shards"]:
      raise ValueError(f"{data_dir} has no shards for split {split!r}; rerun `python -m launch.prepare_data`.")
    self.split, self.seq_len = split, seq_len
    self.bos_id, self.vocab_size = int(manifest["bos_id"]), int(manifest["vocab_size"])
    if self.vocab_size > np.iinfo(np.int32).max:
      raise ValueError(f"vocab_size={self.vocab_size} does not fit the int32 token ids of a batch.")
    self._shards = []
    for name in manifest["splits"][split]["shards"]:
      tokens_N, offsets = shards.open_shard(data_dir, name)
      packed = packing.pack_shard(offsets, seq_len + 1, synthetic_bos=synthetic_bos)
      self._shards.append(_Shard(name, tokens_N, packed))
    rows = [shard.packed.num_rows for shard in self._shards]
    self._first_row = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    if self.num_rows == 0:
      raise ValueError(
          f"split {split!r} of {data_dir} has {self.total_tokens} tokens, fewer than one row of "
          f"{seq_len + 1}; lower model.sequence_len or add data.")
    self._log_summary()

  @property
  def num_rows(self) -> int:
    return int(self._first_row[-1])

  @property
  def total_tokens(self) -> int:
    return sum(int(shard.tokens.shape[0]) for shard in self._shards)

  def _log_summary(self) -> None:
    dropped = sum(shard.packed.dropped_tokens for shard in self._shards)
    orphans = sum(shard.packed.orphan_tokens for shard in self._shards)
    synthetic = sum(shard.packed.synthetic_bos_rows for shard in self._shards)
    logging.info(
        "[data] %s: %d shards, %d tokens -> %d rows of %d; %d tokens dropped at shard ends, "
        "%d rows opened by a synthetic BOS", self.split, len(self._shards), self.total_tokens,
        self.num_rows, self.seq_len + 1, dropped, synthetic)
    if orphans:
      logging.warning(
          "[data] %s: %d continuation tokens dropped because no document was left to open a "
          "row (synthetic_bos=False)", self.split, orphans)

  def read_rows(self, row_ids: Sequence[int]) -> np.ndarray:
    """Return the packed rows with the given global ids as int32 [N, R]."""
    row_ids = np.asarray(row_ids, dtype=np.int64)
    if row_ids.size and (row_ids.min() < 0 or row_ids.max() >= self.num_rows):
      raise IndexError(f"row ids must lie in [0, {self.num_rows}); got {row_ids.min()}..{row_ids.max()}.")
    shard_ids = np.searchsorted(self._first_row, row_ids, side="right") - 1
    # int64 first: copying uint32 ids straight into int32 would wrap silently.
    rows_NR = np.empty((row_ids.size, self.seq_len + 1), dtype=np.int64)
    for n, (shard_id, row_id) in enumerate(zip(shard_ids.tolist(), row_ids.tolist())):
      shard = self._shards[shard_id]
      packing.copy_row(shard.tokens, shard.packed, row_id - int(self._first_row[shard_id]),
                       self.bos_id, rows_NR[n])
    if rows_NR.size and rows_NR.max() >= self.vocab_size:
      raise ValueError(
          f"split {self.split!r} contains token id {rows_NR.max()} >= vocab_size={self.vocab_size}, "
          "so the shards do not match the manifest; rerun `python -m launch.prepare_data`.")
    return rows_NR.astype(np.int32)


class _EngramHasher:
  """Raw input ids [B, T] -> Engram rows int32 [L, B, T, G] through the canonical map."""

  def __init__(self, canonical_map: Any, layout: hashing.HashLayout, split: PackedSplit,
               reset_at_bos: bool):
    # A tokenizer CanonicalMap carries its table in `raw_to_canonical`; a bare array is the table.
    table_V = np.asarray(getattr(canonical_map, "raw_to_canonical", canonical_map))
    if table_V.ndim != 1 or table_V.shape[0] < split.vocab_size:
      raise ValueError(
          f"canonical_map has shape {table_V.shape} but the shards use vocab_size={split.vocab_size}; "
          "pass the canonical map of the tokenizer that wrote the shards.")
    # Check the map's values against the layout's canonical vocabulary once, up front.
    hashing.canonicalize_np(np.zeros(1, dtype=np.int64), table_V, num_canonical=layout.num_canonical)
    self.table_V, self.layout = table_V, layout
    self.reset_id = int(table_V[split.bos_id]) if reset_at_bos else None

  def __call__(self, inputs_BT: np.ndarray) -> np.ndarray:
    canonical_BT = hashing.canonicalize_np(inputs_BT, self.table_V)
    return hashing.hash_rows_np(canonical_BT, self.layout, reset_id=self.reset_id)


def _make_hasher(canonical_map, layout, split: PackedSplit, reset_at_bos: bool) -> _EngramHasher | None:
  if layout is None:
    return None
  if canonical_map is None:
    raise ValueError("layout is set but canonical_map is None; pass the tokenizer's canonical map.")
  return _EngramHasher(canonical_map, layout, split, reset_at_bos)


class _StepBatch:
  """Global row ids of one optimiser step [A * B] -> this process's batch dict."""

  def __init__(self, split: PackedSplit, hasher, micro_steps: int, micro_batch_rows: int,
               process_index: int, process_count: int):
    self.split, self.hasher, self.micro_steps = split, hasher, micro_steps
    self.micro_batch_rows = micro_batch_rows
    self.local_rows = micro_batch_rows // process_count
    self.first_local = process_index * self.local_rows

  def __call__(self, step_rows: np.ndarray) -> dict[str, np.ndarray]:
    rows_AB = np.asarray(step_rows).reshape(self.micro_steps, self.micro_batch_rows)
    local_Ab = rows_AB[:, self.first_local:self.first_local + self.local_rows]
    rows_AbR = self.split.read_rows(local_Ab.reshape(-1)).reshape(*local_Ab.shape, -1)
    batch = {"inputs": np.ascontiguousarray(rows_AbR[..., :-1]),
             "targets": np.ascontiguousarray(rows_AbR[..., 1:])}
    if self.hasher is not None:
      batch["engram_rows"] = np.stack([self.hasher(inputs_bT) for inputs_bT in batch["inputs"]])
    return batch


def _check_positive(**values: Any) -> None:
  for name, value in values.items():
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name}={value!r} must be a positive int.")


def _process_slot(micro_batch_rows: int, process_index, process_count) -> tuple[int, int]:
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  _check_positive(process_count=process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count}).")
  if micro_batch_rows % process_count:
    raise ValueError(
        f"micro_batch_rows={micro_batch_rows} does not divide over process_count={process_count}; "
        f"use a multiple of {process_count} rows per micro-batch.")
  return process_index, process_count


def shuffle_seed(seed: int) -> int:
  """Mix `seed` into the 32-bit grain shuffle seed.

  grain shuffles epoch e with seed + e, so unmixed seeds s and s + 1 would share
  all but one epoch order.
  """
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed={seed!r} must be a non-negative int.")
  return int(np.random.SeedSequence(int(seed)).generate_state(1, dtype=np.uint32)[0])


def train_dataset(data_dir: str | os.PathLike, *, seq_len: int, micro_batch_rows: int,
                  micro_steps: int, canonical_map: Any, layout: hashing.HashLayout | None,
                  seed: int, process_index: int | None = None, process_count: int | None = None,
                  num_threads: int = 2, prefetch: int = 4, synthetic_bos: bool = True,
                  reset_at_bos: bool = False) -> grain.IterDataset:
  """Return the endless training stream of optimiser steps for this process.

  Each element is a dict of fresh numpy arrays: `inputs` and `targets` int32
  [A, b, T] (targets are inputs shifted by one) and, unless `layout` is None,
  `engram_rows` int32 [A, L, b, T, G]. `canonical_map` is an int array [V] or
  a tokenizer CanonicalMap. Iterators of the result are checkpointable with
  `get_state()` / `set_state()`. `num_threads` threads prepare up to
  `prefetch` steps ahead. `reset_at_bos` stops n-grams at BOS (off by default).
  """
  _check_positive(micro_batch_rows=micro_batch_rows, micro_steps=micro_steps)
  process_index, process_count = _process_slot(micro_batch_rows, process_index, process_count)
  mixed_seed = shuffle_seed(seed)
  split = PackedSplit(data_dir, "train", seq_len, synthetic_bos=synthetic_bos)
  hasher = _make_hasher(canonical_map, layout, split, reset_at_bos)
  step_rows = micro_steps * micro_batch_rows
  logging.info("[data] train: %d rows per epoch, %.1f optimiser steps of %d rows each",
               split.num_rows, split.num_rows / step_rows, step_rows)
  steps = (grain.MapDataset.range(split.num_rows)
           .shuffle(seed=mixed_seed)
           .repeat(None)
           .batch(step_rows, drop_remainder=True)
           .map(_StepBatch(split, hasher, micro_steps, micro_batch_rows, process_index, process_count)))
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  return steps.to_iter_dataset(options)


class ValBatches(collections.abc.Sequence):
  """Fixed validation batches, the first `len(self) * batch_rows` packed val rows in order.

  Batch i is a dict: `inputs`, `targets` int32 [B, T] and, with Engram,
  `engram_rows` int32 [L, B, T, G]. Every process gets the same global batches.
  """

  def __init__(self, split: PackedSplit, hasher, batch_rows: int, num_batches: int):
    self.split, self.hasher = split, hasher
    self.batch_rows, self.num_batches = batch_rows, num_batches

  def __len__(self) -> int:
    return self.num_batches

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    if not -len(self) <= index < len(self):
      raise IndexError(f"validation batch {index} is out of range for {len(self)} batches.")
    first = (index % len(self)) * self.batch_rows
    rows_BR = self.split.read_rows(np.arange(first, first + self.batch_rows))
    batch = {"inputs": np.ascontiguousarray(rows_BR[:, :-1]),
             "targets": np.ascontiguousarray(rows_BR[:, 1:])}
    if self.hasher is not None:
      batch["engram_rows"] = self.hasher(batch["inputs"])
    return batch


def val_batches(data_dir: str | os.PathLike, *, seq_len: int, batch_rows: int,
                max_tokens: int | None, canonical_map: Any, layout: hashing.HashLayout | None,
                synthetic_bos: bool = True, reset_at_bos: bool = False) -> tuple[ValBatches, int]:
  """Return (fixed validation batches, target tokens they cover).

  The batches cover at most `max_tokens` target tokens in whole batches
  (None: the whole split). With fewer rows in the val split than that, all
  its whole batches are used and the real count is logged.
  """
  _check_positive(batch_rows=batch_rows, max_tokens=1 if max_tokens is None else max_tokens)
  split = PackedSplit(data_dir, "val", seq_len, synthetic_bos=synthetic_bos)
  hasher = _make_hasher(canonical_map, layout, split, reset_at_bos)
  if max_tokens is None:
    max_tokens = split.num_rows * seq_len
  rows = min(split.num_rows, max_tokens // seq_len)
  num_batches = rows // batch_rows
  if num_batches == 0:
    raise ValueError(
        f"validation needs {batch_rows} rows of {seq_len} tokens per batch, but max_tokens="
        f"{max_tokens} and the val split ({split.num_rows} rows) allow only {rows}; raise "
        "max_tokens, lower batch_rows or add validation data.")
  tokens = num_batches * batch_rows * seq_len
  if split.num_rows * seq_len < max_tokens:
    logging.warning("[data] val: the split has only %d target tokens in %d rows, fewer than the "
                    "%d requested; evaluating on %d", split.num_rows * seq_len, split.num_rows,
                    max_tokens, tokens)
  logging.info("[data] val: %d batches of %d rows, %d target tokens", num_batches, batch_rows, tokens)
  return ValBatches(split, hasher, batch_rows, num_batches), tokens


def _axes_tuple(batch_axes: str | Sequence[str]) -> tuple[str, ...]:
  return (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)


def _batch_scale(mesh: Mesh, batch_axes: tuple[str, ...]) -> int:
  """Return the ratio of global to process-local batch rows.

  It is the number of batch shards divided by the number of distinct batch
  shards on this process's devices (1 on a single process).
  """
  missing = [axis for axis in batch_axes if axis not in mesh.axis_names]
  if missing:
    raise ValueError(f"batch axes {missing} are not axes of the mesh {mesh.axis_names}.")
  positions = [mesh.axis_names.index(axis) for axis in batch_axes]
  local = {tuple(index[i] for i in positions) for index, device in np.ndenumerate(mesh.devices)
           if device.process_index == jax.process_index()}
  shards = math.prod(mesh.shape[axis] for axis in batch_axes)
  if not local or shards % len(local):
    raise ValueError(
        f"process {jax.process_index()} has {len(local)} of the {shards} batch shards of mesh "
        f"{dict(mesh.shape)}; each process needs the same number (at least one).")
  return shards // len(local)


def _put(batch: dict[str, np.ndarray], mesh: Mesh, specs: dict[str, P], batch_dims: dict[str, int],
         scale: int) -> dict[str, jax.Array]:
  out = {}
  for key, local in batch.items():
    if key not in specs:
      raise ValueError(f"batch key {key!r} is unknown; expected some of {sorted(specs)}.")
    global_shape = list(local.shape)
    global_shape[batch_dims[key]] *= scale
    out[key] = jax.make_array_from_process_local_data(
        NamedSharding(mesh, specs[key]), local, tuple(global_shape))
  return out


def to_global(batch: dict[str, np.ndarray], mesh: Mesh,
              batch_axes: str | Sequence[str]) -> dict[str, jax.Array]:
  """Assemble one training step's process-local arrays into global jax.Arrays.

  inputs/targets [A, b, T] -> [A, B, T] sharded P(None, batch_axes, None);
  engram_rows [A, L, b, T, G] -> [A, L, B, T, G] sharded P(None, None, batch_axes, None, None).
  """
  axes = _axes_tuple(batch_axes)
  specs = {"inputs": P(None, axes, None), "targets": P(None, axes, None),
           "engram_rows": P(None, None, axes, None, None)}
  return _put(batch, mesh, specs, {"inputs": 1, "targets": 1, "engram_rows": 2},
              _batch_scale(mesh, axes))


def to_global_eval(batch: dict[str, np.ndarray], mesh: Mesh,
                   batch_axes: str | Sequence[str]) -> dict[str, jax.Array]:
  """Shard one validation batch, which every process has in full, over `batch_axes`.

  inputs/targets [B, T] get P(batch_axes, None); engram_rows [L, B, T, G] gets
  P(None, batch_axes, None, None).
  """
  axes = _axes_tuple(batch_axes)
  specs = {"inputs": P(axes, None), "targets": P(axes, None), "engram_rows": P(None, axes, None, None)}
  return _put(batch, mesh, specs, {"inputs": 0, "targets": 0, "engram_rows": 1}, scale=1)
