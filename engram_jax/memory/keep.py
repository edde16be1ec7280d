"""Keep text: natural-text windows that hold a user's map to the bare model's behaviour.

A user's managed rows are also read wherever other n-grams hash to them
(collisions) and wherever the trigger n-gram appears in someone else's text.
The override replaces the row there too, so the map changes the model's
predictions on text that has nothing to do with the user. Joint OPT can
counter this with a keep term. It takes windows of natural text in which a
managed row is read and, from the hit position to the window end, compares
the edited model with the bare model's top-k next-token distribution.

NOTE: on the tiny model the keep term did not lower Δbpb on natural
validation text: with 256 windows per user most managed rows get no window,
and the rows fit the drawn windows instead. It lowered Δbpb on persona text
by about a sixth and makes writing about 2.5 times slower, so it is off by
default (JointOptSettings.keep_weight = 0); the anchor term does the work.

The windows come from text the caller passes, normally the pretraining
train split (`train_text`), never the validation split on which locality is
measured. Each window is one BOS token followed by `before - 1` tokens
before a hit position and `after` tokens from it, so the hit sits at index
`before`. The window is hashed on its own, so it reads the rows that the
served model reads for that text.

Shape letters: P text tokens, M windows, T window length, K top-k, L Engram
layers, G hash heads, D width, V vocabulary.
"""

import dataclasses
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from engram_jax import hashing
from engram_jax.data import shards
from engram_jax.hashing import HashLayout
from engram_jax.memory import facts as facts_lib
from engram_jax.memory import forward
from engram_jax.model.gpt import GPT


@dataclasses.dataclass(frozen=True)
class KeepSettings:
  """Settings that draw and score keep windows."""
  windows: int = 256  # windows per user, drawn uniformly among hit positions (with repeats when fewer)
  before: int = 24  # window tokens before the hit, the leading BOS included
  after: int = 8  # window tokens from the hit on; the loss covers these positions
  top_k: int = 16  # bare-model next-token candidates kept as the target distribution
  seed: int = 0

  def __post_init__(self):
    bad = {k: v for k, v in dataclasses.asdict(self).items() if k != "seed" and v < 1}
    if bad or self.before < 1:
      raise ValueError(f"KeepSettings fields {bad} must be positive integers.")

  @property
  def length(self) -> int:
    return self.before + self.after


class KeepText(NamedTuple):
  """A token stream with the memory-layer rows it reads, to find hit positions in."""
  ids_P: np.ndarray  # int32 raw ids
  rows_PG: np.ndarray  # int32 global rows of the memory layer, hashed on the stream


class KeepCache(NamedTuple):
  """One user's keep windows on device: the stream entering the target block and the targets."""
  x_MTD: jax.Array
  x0_MTD: jax.Array
  kept_MTD: jax.Array | None
  ids_MT: jax.Array
  rows_LMTG: jax.Array
  top_ids_MAK: jax.Array  # int32 bare-model top-k ids at the `after` loss positions
  top_p_MAK: jax.Array  # float32 their probabilities, renormalised over the k
  valid_M: jax.Array  # bool, False for windows of a user whose rows are never read


def train_text(data_dir: str | os.PathLike, tokens: int) -> np.ndarray:
  """Return the first `tokens` tokens of the train split of a token-shard directory (int32)."""
  if tokens < 1:
    raise ValueError(f"tokens={tokens} must be positive.")
  manifest = shards.load_manifest(data_dir)
  parts, have = [], 0
  for name in manifest["splits"]["train"]["shards"]:
    tokens_N, _ = shards.open_shard(data_dir, name)
    parts.append(np.asarray(tokens_N[:tokens - have], np.int32))
    have += parts[-1].size
    if have >= tokens:
      break
  logging.info("[memory] keep text: %d train tokens from %s", have, data_dir)
  return np.concatenate(parts)


def keep_text(ids_P: np.ndarray, layout: HashLayout, canonical_map: Any, layer: int) -> KeepText:
  """Hash a token stream for the memory layer `layer`."""
  ids_P = np.asarray(ids_P)
  if ids_P.ndim != 1 or ids_P.size == 0 or not np.issubdtype(ids_P.dtype, np.integer):
    raise ValueError(f"Keep text must be a non-empty 1-D integer array, got {ids_P.dtype} {ids_P.shape}.")
  canonical_P = facts_lib.canonical_ids(ids_P, canonical_map, layout)
  rows_PG = hashing.hash_rows_np(canonical_P[None], layout)[facts_lib.layer_index(layout, layer), 0]
  return KeepText(ids_P.astype(np.int32), rows_PG.astype(np.int32))


def row_reads(text: KeepText, rows_R: np.ndarray) -> np.ndarray:
  """Return float64 [R]: how often each of the sorted rows `rows_R` is read in the text."""
  flat = text.rows_PG.ravel()
  index = np.minimum(np.searchsorted(rows_R, flat), rows_R.size - 1)
  found = rows_R[index] == flat
  return np.bincount(index[found], minlength=rows_R.size).astype(np.float64)


def draw_windows(text: KeepText, rows_R: np.ndarray, settings: KeepSettings,
                 bos_id: int) -> tuple[np.ndarray, int]:
  """Return window ids [M, T] around hit positions of `rows_R`, and the number of hit positions.

  With no hit position every window is BOS only and the caller masks them.
  """
  hit_P = np.isin(text.rows_PG, rows_R).any(axis=-1)
  hit_P[:settings.before - 1] = False
  hit_P[text.ids_P.size - settings.after + 1:] = False
  positions = np.flatnonzero(hit_P)
  ids_MT = np.full((settings.windows, settings.length), bos_id, np.int32)
  if positions.size == 0:
    return ids_MT, 0
  rng = np.random.default_rng(settings.seed)
  chosen = rng.choice(positions, settings.windows, replace=positions.size < settings.windows)
  offsets_T = np.arange(-(settings.before - 1), settings.after)
  ids_MT[:, 1:] = text.ids_P[chosen[:, None] + offsets_T]
  return ids_MT, int(positions.size)


def _prefix_and_targets(graphdef, state, ids_MT, rows_LMTG, *, layer: int, before: int,
                        top_k: int):
  model = nnx.merge(graphdef, state)
  x_MTD, x0_MTD, kept_MTD = forward.prefix_activations(model, ids_MT, rows_LMTG, layer)
  full_MTD, full_kept_MTD = model.run_blocks(x_MTD, x0_MTD, ids_MT, rows_LMTG, start=layer,
                                             kept_BTD=kept_MTD)
  logits_MAV = model.logits(full_MTD[:, before:], full_kept_MTD[:, before:])
  top_logits_MAK, top_ids_MAK = jax.lax.top_k(logits_MAV, top_k)
  return x_MTD, x0_MTD, kept_MTD, top_ids_MAK, jax.nn.softmax(top_logits_MAK, axis=-1)


_prefix_and_targets_jit = jax.jit(_prefix_and_targets,
                                  static_argnames=("graphdef", "layer", "before", "top_k"))


def build_cache(model: GPT, text: KeepText, rows_R: np.ndarray, layout: HashLayout,
                canonical_map: Any, layer: int, settings: KeepSettings, bos_id: int, *,
                chunk: int = 64) -> tuple[KeepCache, int]:
  """Draw one user's windows and run the bare model on them; return the cache and the hit count."""
  ids_MT, hits = draw_windows(text, rows_R, settings, bos_id)
  rows_LMTG = hashing.hash_rows_np(facts_lib.canonical_ids(ids_MT, canonical_map, layout), layout)
  graphdef, state = nnx.split(model)
  parts = [_prefix_and_targets_jit(graphdef, state, jnp.asarray(ids_MT[s:s + chunk]),
                                   jnp.asarray(rows_LMTG[:, s:s + chunk]), layer=layer,
                                   before=settings.before, top_k=settings.top_k)
           for s in range(0, settings.windows, chunk)]
  x, x0, kept, top_ids, top_p = (
      None if parts[0][i] is None else jnp.concatenate([p[i] for p in parts]) for i in range(5))
  valid_M = jnp.full((settings.windows,), hits > 0)
  return KeepCache(x, x0, kept, jnp.asarray(ids_MT), jnp.asarray(rows_LMTG), top_ids, top_p,
                   valid_M), hits


def keep_loss(model: GPT, cache: KeepCache, index_B: jax.Array, overrides, layer: int,
              before: int) -> jax.Array:
  """Mean over windows and loss positions of sum_k p_k (log p_k - log q_k).

  p is the bare model's distribution renormalised over its top k tokens and q
  the edited model's full softmax, so mass the map moves to any other token
  raises the term. For the bare model it equals -log of the top-k mass, a
  small constant; it is never negative.
  """
  take = lambda a: None if a is None else a[index_B]
  x_BTD, kept_BTD = model.run_blocks(
      take(cache.x_MTD), take(cache.x0_MTD), take(cache.ids_MT), cache.rows_LMTG[:, index_B],
      start=layer, kept_BTD=take(cache.kept_MTD), overrides={layer: overrides})
  logits_BAV = model.logits(x_BTD[:, before:], kept_BTD[:, before:])
  logq_BAK = jnp.take_along_axis(jax.nn.log_softmax(logits_BAV, axis=-1),
                                 cache.top_ids_MAK[index_B], axis=-1)
  p_BAK = cache.top_p_MAK[index_B]
  kl_BA = jnp.sum(p_BAK * (jnp.log(jnp.maximum(p_BAK, 1e-30)) - logq_BAK), axis=-1)
  weight_B = cache.valid_M[index_B].astype(jnp.float32)
  return jnp.sum(kl_BA.mean(axis=-1) * weight_B) / jnp.maximum(jnp.sum(weight_B), 1.0)
