"""Per-fact memory writers: RANDOM (control), UNEMBED_P and OPT.

Every writer locates each example's rows in the target Engram layer with
`facts.locate_rows` (the last Engram layer by default). It computes one [W]
value per (position, head) and returns an `OverrideMap`. Position p of an
example predicts answer token p: the trigger position predicts the first
answer token, and each continuation position the token after it.

* RANDOM: head g of position p gets slice g of N(0, 1) [G, W] drawn from
  numpy `default_rng(42 + token)`, times `scale`; `token` is the answer token
  that position predicts.
* UNEMBED_P: e = pinv(W_V^T) u_token * scale in float32, reshaped [G, W], head
  g gets slice g. W_V^T is the [D, E] matrix with v = W_V^T e (the model
  stores w_v as [E, D], v = e @ w_v) and u_token is the token's lm_head
  column. With E < D this is the least-squares solution.
* OPT: per example, one trainable value per distinct row, initialised to
  UNEMBED_P (mean over the positions of the example that read that row). Adam
  minimises the cross-entropy of the answer tokens under teacher forcing plus
  l2 * mean((leaf - init)^2), with the model frozen. Every example trains
  independently. One forward pass per step serves a whole chunk of examples:
  the loss is a sum of per-example terms, and Adam updates each coordinate on
  its own gradient, so this equals training each example alone.

Rows written by several positions, examples or facts are merged by the mean
of their values (DUPLICATE_RULE), never by overwriting.

Shape letters: N examples, B batch, P answer positions, G hash heads,
W row width, E memory width G * W, D model width, K override slots.
"""

import dataclasses
import hashlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from engram_jax.hashing import HashLayout
from engram_jax.memory import facts as facts_lib
from engram_jax.memory import forward
from engram_jax.memory import maps
from engram_jax.model.gpt import GPT
from engram_jax.model.overrides import UNUSED_ROW, RowOverrides

# Merge rule of `maps.make_map` for rows written more than once.
DUPLICATE_RULE = "mean"
# RANDOM seeds numpy's generator with this plus the predicted token id.
RANDOM_SEED_BASE = 42
_PINV_CACHE: dict[str, np.ndarray] = {}


@dataclasses.dataclass(frozen=True)
class OptSettings:
  """OPT hyperparameters. `reference()` gives the reference's OPT-15 exactly."""
  learning_rate: float = 0.5  # Adam, betas (0.9, 0.999), eps 1e-8
  steps: int = 15
  scale: float = 20.0  # UNEMBED_P scale of the initial values
  l2: float = 0.001  # weight of mean((leaf - init)^2)
  loss_tokens: str = "all"  # "all" answer tokens, or "first" (reference)
  batch_size: int = 32  # examples per compiled chunk; does not change the result

  def __post_init__(self):
    if self.steps < 0 or self.batch_size < 1 or self.learning_rate <= 0:
      raise ValueError(f"Invalid OptSettings {self}: need steps >= 0, batch_size >= 1, lr > 0.")
    if self.loss_tokens not in ("all", "first"):
      raise ValueError(f"loss_tokens={self.loss_tokens!r} is not supported; use 'all' or 'first'.")

  @classmethod
  def reference(cls) -> "OptSettings":
    """OPT-15 of the reference: first-token loss, lr 0.5, 15 steps, scale 20."""
    return cls(loss_tokens="first")


def target_layer(model: GPT, layer: int | None) -> int:
  """Return `layer`, or the model's last Engram block when it is None."""
  if not model.engram_layer_ids:
    raise ValueError("The model has no Engram layer, so there is no table to write memory into.")
  layer = model.engram_layer_ids[-1] if layer is None else layer
  forward.check_target_layer(model, layer)
  return layer


def map_owner(examples: Sequence[facts_lib.FactExample]) -> str:
  """Return the one owner of `examples`; a map stores one user's facts."""
  owners = sorted({e.owner for e in examples})
  if len(owners) != 1:
    raise ValueError(f"A map stores one owner's facts, but the examples belong to {owners or 'nobody'}; "
                     "write one map per user.")
  return owners[0]


def fact_keys(examples: Sequence[facts_lib.FactExample]) -> tuple[str, ...]:
  return tuple(dict.fromkeys(e.key for e in examples))


def _value_map_pinv(w_v_ED: np.ndarray) -> np.ndarray:
  """Return pinv of the [D, E] map e -> v, float32 [E, D], cached by the bytes of w_v."""
  digest = hashlib.sha1(w_v_ED.tobytes()).hexdigest() + str(w_v_ED.shape)
  if digest not in _PINV_CACHE:
    if len(_PINV_CACHE) >= 4:
      _PINV_CACHE.pop(next(iter(_PINV_CACHE)))
    _PINV_CACHE[digest] = np.linalg.pinv(w_v_ED.T)
  return _PINV_CACHE[digest]


def unembed_vectors(w_v_ED: Any, lm_head_DV: Any, token_ids: Any, *, scale: float) -> np.ndarray:
  """Compute UNEMBED_P memory vectors, float32 [k, E], with e @ w_v ~ scale * lm_head[:, token]."""
  w_v_ED = np.asarray(w_v_ED, np.float32)
  lm_head_DV = np.asarray(lm_head_DV, np.float32)
  token_ids = np.asarray(token_ids, np.int64)
  if token_ids.size and (token_ids.min() < 0 or token_ids.max() >= lm_head_DV.shape[1]):
    raise ValueError(f"Token ids {token_ids} lie outside the lm_head columns [0, {lm_head_DV.shape[1]}).")
  pinv_ED = _value_map_pinv(w_v_ED)
  return (scale * (lm_head_DV[:, token_ids].T @ pinv_ED.T)).astype(np.float32)


def unembed_p_slices(model: GPT, layer: int, token_ids: Any, *, scale: float) -> np.ndarray:
  """Compute the UNEMBED_P values of each token, split per head: float32 [k, G, W]."""
  engram = model.blocks[layer].engram
  e_kE = unembed_vectors(engram.w_v[...], model.lm_head.kernel[...], token_ids, scale=scale)
  return e_kE.reshape(len(e_kE), engram.hash_heads, engram.row_width)


def random_slices(token_ids: Any, num_heads: int, row_width: int, *, scale: float) -> np.ndarray:
  """Draw the RANDOM control values, float32 [k, G, W], deterministic in each token id."""
  return np.stack([
      np.random.default_rng(RANDOM_SEED_BASE + int(t)).standard_normal((num_heads, row_width))
      for t in np.asarray(token_ids).reshape(-1)]).astype(np.float32) * np.float32(scale)


def slices_by_token(examples, slices_fn) -> dict[int, np.ndarray]:
  tokens = sorted({t for e in examples for t in e.answer_ids})
  return dict(zip(tokens, slices_fn(np.asarray(tokens))))


def _example_values(example, located_PG, by_token) -> tuple[np.ndarray, np.ndarray]:
  """Return (rows [M], values [M, W]) for every written (position, head) of one example."""
  p_M, g_M = np.nonzero(located_PG != facts_lib.NO_ROW)
  slices_PGW = np.stack([by_token[t] for t in example.answer_ids])
  return located_PG[p_M, g_M], slices_PGW[p_M, g_M]


def locate_all(examples, layout, canonical_map, layer, continuation_heads) -> list[np.ndarray]:
  """Locate the rows [P, G] of every example in block `layer` (see facts.locate_rows)."""
  return [facts_lib.locate_rows(e, layout, canonical_map, layer,
                                continuation_heads=continuation_heads) for e in examples]


def _write_fixed(model, examples, layout, canonical_map, *, model_fingerprint, layer,
                 continuation_heads, strategy, slices_fn, settings) -> maps.OverrideMap:
  layer = target_layer(model, layer)
  located = locate_all(examples, layout, canonical_map, layer, continuation_heads)
  rows_M, values_MW = located_values(examples, located, slices_by_token(examples, slices_fn))
  return _map(examples, layer, rows_M, values_MW, strategy=strategy, settings=settings,
              continuation_heads=continuation_heads, model_fingerprint=model_fingerprint)


def _map(examples, layer, rows, values, *, strategy, settings, continuation_heads,
         model_fingerprint) -> maps.OverrideMap:
  heads = None if continuation_heads is None else list(continuation_heads)
  record = dict(settings, continuation_heads=heads, duplicate_rule=DUPLICATE_RULE,
                num_examples=len(examples))
  return maps.make_map(
      layer, rows, values, owner=map_owner(examples), fact_keys=fact_keys(examples),
      strategy=strategy, settings=record, model_fingerprint=model_fingerprint,
      duplicate_rule=DUPLICATE_RULE)


def write_random(model: GPT, examples: Sequence[facts_lib.FactExample], layout: HashLayout,
                 canonical_map: Any, *, model_fingerprint: str, scale: float = 20.0,
                 layer: int | None = None,
                 continuation_heads: Sequence[int] | None = None) -> maps.OverrideMap:
  """Write the RANDOM control: seeded Gaussian values, unrelated to the model."""
  layer = target_layer(model, layer)
  engram = model.blocks[layer].engram
  slices_fn = lambda t: random_slices(t, engram.hash_heads, engram.row_width, scale=scale)
  return _write_fixed(model, examples, layout, canonical_map, model_fingerprint=model_fingerprint,
                      layer=layer, continuation_heads=continuation_heads, strategy="random",
                      slices_fn=slices_fn, settings={"scale": scale, "seed_base": RANDOM_SEED_BASE})


def write_unembed_p(model: GPT, examples: Sequence[facts_lib.FactExample], layout: HashLayout,
                    canonical_map: Any, *, model_fingerprint: str, scale: float = 20.0,
                    layer: int | None = None,
                    continuation_heads: Sequence[int] | None = None) -> maps.OverrideMap:
  """Write UNEMBED_P: the values whose W_V projection is scale * the token's unembedding."""
  layer = target_layer(model, layer)
  slices_fn = lambda t: unembed_p_slices(model, layer, t, scale=scale)
  return _write_fixed(model, examples, layout, canonical_map, model_fingerprint=model_fingerprint,
                      layer=layer, continuation_heads=continuation_heads, strategy="unembed_p",
                      slices_fn=slices_fn, settings={"scale": scale})


def merge_mean(rows_M: np.ndarray, values_MW: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Sort rows and average the values of equal rows: sorted distinct rows [R], values [R, W]."""
  order = np.argsort(rows_M, kind="stable")
  return maps.merge_sorted_rows(rows_M[order].astype(np.int32), values_MW[order], DUPLICATE_RULE)


def located_values(examples, located, by_token) -> tuple[np.ndarray, np.ndarray]:
  """Concatenate every example's (row, value) pairs: rows [M], values [M, W], duplicates kept."""
  pairs = [_example_values(e, located_PG, by_token) for e, located_PG in zip(examples, located)]
  return np.concatenate([r for r, _ in pairs]), np.concatenate([v for _, v in pairs])


def _opt_slots(examples, located, by_token) -> tuple[np.ndarray, np.ndarray]:
  """Return each example's sorted distinct rows [N, K] (UNUSED_ROW padding) and mean init [N, K, W]."""
  per_example = [merge_mean(*_example_values(e, located_PG, by_token))
                 for e, located_PG in zip(examples, located)]
  K = forward.round_up(max(r.size for r, _ in per_example), 8)
  W = per_example[0][1].shape[1]
  rows_NK = np.full((len(examples), K), UNUSED_ROW, np.int32)
  init_NKW = np.zeros((len(examples), K, W), np.float32)
  for n, (rows, values) in enumerate(per_example):
    rows_NK[n, :rows.size] = rows
    init_NKW[n, :rows.size] = values
  return rows_NK, init_NKW


def _opt_chunk(graphdef, state, cache_B, rows_BK, init_BKW, example_mask_B, settings, layer):
  """Run OPT on one chunk of examples and return the trained values [B, K, W]."""
  model = nnx.merge(graphdef, state)
  slot_mask_BK1 = (rows_BK != UNUSED_ROW)[..., None]
  token_mask_BA = forward.loss_mask(cache_B.answer_mask_NA, settings.loss_tokens)
  tx = optax.adam(settings.learning_rate)

  def loss_fn(values_BKW):
    logits_BAV = forward.answer_logits(model, cache_B, RowOverrides(rows_BK, values_BKW), layer)
    nll_BA = forward.answer_nll(logits_BAV, cache_B.answer_ids_NA)
    ce_B = jnp.sum(nll_BA * token_mask_BA, -1) / jnp.maximum(jnp.sum(token_mask_BA, -1), 1)
    drift_BKW = jnp.where(slot_mask_BK1, (values_BKW - init_BKW) ** 2, 0.0)
    count_B = jnp.maximum(jnp.sum(slot_mask_BK1, (1, 2)) * values_BKW.shape[-1], 1)
    per_example_B = ce_B + settings.l2 * jnp.sum(drift_BKW, (1, 2)) / count_B
    return jnp.sum(jnp.where(example_mask_B, per_example_B, 0.0))

  def step(carry, _):
    values_BKW, opt_state = carry
    grads = jax.grad(loss_fn)(values_BKW)
    updates, opt_state = tx.update(grads, opt_state, values_BKW)
    return (optax.apply_updates(values_BKW, updates), opt_state), None

  (values_BKW, _), _ = jax.lax.scan(step, (init_BKW, tx.init(init_BKW)), length=settings.steps)
  return values_BKW


_opt_chunk_jit = jax.jit(_opt_chunk, static_argnums=(0, 6, 7))


def _run_opt(model, cache, rows_NK, init_NKW, example_mask_N, settings, layer) -> np.ndarray:
  graphdef, state = nnx.split(model)
  B = min(settings.batch_size, rows_NK.shape[0])
  results = []
  for start in range(0, rows_NK.shape[0], B):
    index_B = np.arange(start, start + B) % rows_NK.shape[0]  # the last chunk wraps around
    cache_B = forward.take_examples(cache, jnp.asarray(index_B))
    mask_B = example_mask_N[index_B] & (np.arange(start, start + B) < rows_NK.shape[0])
    results.append(np.asarray(_opt_chunk_jit(
        graphdef, state, cache_B, jnp.asarray(rows_NK[index_B]), jnp.asarray(init_NKW[index_B]),
        jnp.asarray(mask_B), settings, layer)))
  return np.concatenate(results)[:rows_NK.shape[0]]


def write_opt(model: GPT, examples: Sequence[facts_lib.FactExample], layout: HashLayout,
              canonical_map: Any, *, model_fingerprint: str, settings: OptSettings = OptSettings(),
              layer: int | None = None,
              continuation_heads: Sequence[int] | None = None) -> maps.OverrideMap:
  """Write OPT: each example's rows optimised on its own answer, the model frozen."""
  start = time.perf_counter()
  layer = target_layer(model, layer)
  by_token = slices_by_token(
      examples, lambda t: unembed_p_slices(model, layer, t, scale=settings.scale))
  located = locate_all(examples, layout, canonical_map, layer, continuation_heads)
  rows_NK, init_NKW = _opt_slots(examples, located, by_token)
  batch = forward.build_fact_batch(examples, layout, canonical_map)
  cache = forward.compute_prefix(model, batch, layer)
  values_NKW = _run_opt(model, cache, rows_NK, init_NKW, batch.example_mask_N, settings, layer)
  used_NK = rows_NK != UNUSED_ROW
  result = _map(examples, layer, rows_NK[used_NK], values_NKW[used_NK], strategy="opt",
                settings=dataclasses.asdict(settings), continuation_heads=continuation_heads,
                model_fingerprint=model_fingerprint)
  logging.info("[memory] OPT wrote %d rows for %d examples in %.2fs", result.num_rows,
               len(examples), time.perf_counter() - start)
  return result
