"""Locality of memory maps: validation bits per byte with and without a map.

Δbpb = bpb(with the map) - bpb(without), on the same validation rows. A row in
which no position looks up one of the map's rows in the memory layer computes
exactly what it computes without the map (the override replaces hit rows
only), so only rows with a hit are run again. The sum over the other rows is
identical by construction. The firing rate is the share of validation
positions that look up at least one of the map's rows.

Shape letters: B batch rows, T sequence, L Engram layers, G hash heads.
"""

import dataclasses
import math
import os
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from absl import logging

from engram_jax.data import pipeline
from engram_jax.memory.maps import OverrideMap
from engram_jax.train.pretrained import Pretrained

from evals.decode import ModelRunner, row_nats


@dataclasses.dataclass
class ValidationSet:
  """Validation rows held in memory, with the per-row loss of the bare model."""
  inputs_NT: np.ndarray
  targets_NT: np.ndarray
  rows_LNTG: np.ndarray
  batch_rows: int
  base_nats_N: np.ndarray | None = None
  bytes_N: np.ndarray | None = None

  @property
  def total_bytes(self) -> int:
    return int(self.bytes_N.sum())

  @property
  def tokens(self) -> int:
    return int(self.targets_NT.size)

  @property
  def base_bpb(self) -> float:
    return float(self.base_nats_N.sum()) / (math.log(2.0) * self.total_bytes)

  def batch(self, index: np.ndarray) -> dict:
    return {"inputs": self.inputs_NT[index], "targets": self.targets_NT[index],
            "engram_rows": self.rows_LNTG[:, index]}


def data_dir(pre: Pretrained) -> str:
  """Return the token shard directory of a pretraining workdir: cfg.data.dir, else <workdir>/data."""
  return pre.cfg.data.dir or os.path.join(pre.workdir, "data")


def load_validation(pre: Pretrained, *, eval_tokens: int | None, batch_rows: int) -> ValidationSet:
  """Read the first validation rows of the model's data directory, about `eval_tokens` targets.

  None reads every whole batch of the validation split.
  """
  batches, tokens = pipeline.val_batches(
      data_dir(pre), seq_len=pre.cfg.model.sequence_len, batch_rows=batch_rows,
      max_tokens=eval_tokens, canonical_map=pre.canonical_map.raw_to_canonical, layout=pre.layout)
  parts = [batches[i] for i in range(len(batches))]
  logging.info("[locality] %d validation tokens in %d rows", tokens, len(parts) * batch_rows)
  return ValidationSet(np.concatenate([b["inputs"] for b in parts]),
                       np.concatenate([b["targets"] for b in parts]),
                       np.concatenate([b["engram_rows"] for b in parts], axis=1), batch_rows)


def validation_from_arrays(pre: Pretrained, inputs_NT: np.ndarray, targets_NT: np.ndarray,
                           batch_rows: int) -> ValidationSet:
  """Build a ValidationSet from token arrays (hashing them), for self-made text."""
  if inputs_NT.shape[0] % batch_rows:
    raise ValueError(f"{inputs_NT.shape[0]} rows do not fill batches of {batch_rows}; "
                     "pass a multiple of batch_rows.")
  return ValidationSet(np.asarray(inputs_NT, np.int32), np.asarray(targets_NT, np.int32),
                       pre.hash_rows(inputs_NT), batch_rows)


def compute_base(runner: ModelRunner, val: ValidationSet, slots: int) -> None:
  """Fill val.base_nats_N and val.bytes_N with the bare model's per-row loss."""
  byte_lengths_V = jnp.asarray(runner.pre.byte_lengths)
  nats, nbytes = [], []
  for start in range(0, val.inputs_NT.shape[0], val.batch_rows):
    index = np.arange(start, start + val.batch_rows)
    n, b = row_nats(runner, val.batch(index), [None] * val.batch_rows, byte_lengths_V, slots)
    nats.append(n)
    nbytes.append(b)
  val.base_nats_N, val.bytes_N = np.concatenate(nats), np.concatenate(nbytes)
  if val.total_bytes <= 0:
    raise ValueError("No validation target has a positive byte length; bpb is undefined.")


def hit_positions(val: ValidationSet, layer_index: int, m: OverrideMap) -> np.ndarray:
  """Return bool [N, T]: positions whose memory-layer lookup reads at least one of the map's rows."""
  return np.isin(val.rows_LNTG[layer_index], m.rows).any(axis=-1)


def map_locality(runner: ModelRunner, val: ValidationSet, maps: Mapping[str, OverrideMap],
                 slots: int) -> dict[str, dict]:
  """Δbpb and firing rate of each map; returns {name: {"delta_bpb", "firing_rate", "rows_rerun"}}."""
  if val.base_nats_N is None:
    compute_base(runner, val, slots)
  layer_index = runner.pre.layout.layer_ids.index(runner.layer)
  work, out = [], {}
  for name, m in maps.items():
    hits_NT = hit_positions(val, layer_index, m)
    rerun = np.flatnonzero(hits_NT.any(axis=1))
    work.extend((name, int(row)) for row in rerun)
    out[name] = {"firing_rate": float(hits_NT.mean()), "rows_rerun": int(rerun.size),
                 "delta_nats": 0.0}
  byte_lengths_V = jnp.asarray(runner.pre.byte_lengths)
  for start in range(0, len(work), val.batch_rows):
    chunk = work[start:start + val.batch_rows]
    padded = chunk + [(None, chunk[0][1])] * (val.batch_rows - len(chunk))
    index = np.array([row for _, row in padded])
    per_row = [None if name is None else maps[name] for name, _ in padded]
    nats_B, _ = row_nats(runner, val.batch(index), per_row, byte_lengths_V, slots)
    for (name, row), nats in zip(chunk, nats_B):
      out[name]["delta_nats"] += float(nats) - float(val.base_nats_N[row])
  for values in out.values():
    values["delta_bpb"] = values.pop("delta_nats") / (math.log(2.0) * val.total_bytes)
  return out

