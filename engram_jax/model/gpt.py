"""nanochat-style GPT with Engram memory layers, in Flax NNX.

The forward pass is split into `embed`, `run_blocks` and `logits` so callers
can reuse activations below an Engram layer (per-user memory training does).

Shape letters: B batch, T sequence, D width, H heads, V vocabulary,
L Engram layers, G hash heads.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from engram_jax import config as config_lib
from engram_jax.model.engram import EngramLayer
from engram_jax.model.layers import MLP, CausalSelfAttention, normal_init, rotary_tables, uniform_init
from engram_jax.model.norms import rms_norm
from engram_jax.model.overrides import check_overrides


def has_value_embed(layer: int, depth: int) -> bool:
  """Value embeddings sit on every other block, always including the last."""
  return layer % 2 == (depth - 1) % 2


@dataclasses.dataclass(frozen=True)
class ShardingContext:
  """Placement of the Engram tables: the mesh and its axis names (mesh None = one device)."""
  mesh: jax.sharding.Mesh | None = None
  table_axis: str = "table"
  batch_axes: tuple[str, ...] | None = None


class Block(nnx.Module):
  """Pre-norm transformer block with an optional Engram layer and value embedding."""

  def __init__(self, cfg: ml_collections.ConfigDict, layer: int, engram_rows: int | None,
               compute_dtype, rngs: nnx.Rngs):
    m, e = cfg.model, cfg.engram
    width = config_lib.model_width(m)
    heads = config_lib.num_heads(m)
    self.has_ve = has_value_embed(layer, m.depth)
    self.attn = CausalSelfAttention(
        width, heads, has_value_embed=self.has_ve, ve_gate_channels=m.ve_gate_channels,
        qk_scale=m.qk_scale, compute_dtype=compute_dtype, rngs=rngs)
    self.mlp = MLP(width, compute_dtype=compute_dtype, rngs=rngs)
    self.value_embed = nnx.data(None)
    if self.has_ve:
      s = 3.0 ** 0.5 / width ** 0.5
      self.value_embed = nnx.Embed(
          config_lib.padded_vocab_size(m), width, embedding_init=uniform_init(-s, s), rngs=rngs)
    self.engram = nnx.data(None)
    if engram_rows is not None:
      self.engram = EngramLayer(
          width, engram_rows, config_lib.hash_heads(e), config_lib.row_width(e),
          table_shards=e.table_shards,
          kernel_size=e.kernel_size, dilation=e.max_ngram, compute_dtype=compute_dtype, rngs=rngs)

  def __call__(self, x_BTD, ids_BT, rows_BTG, cos, sin, *, sharding: ShardingContext,
               use_engram: bool, overrides=None) -> jax.Array:
    # 1. Engram memory reads the lambda-mixed stream before any norm.
    if self.engram is not None and use_engram:
      x_BTD = x_BTD + self.engram(
          x_BTD, rows_BTG, mesh=sharding.mesh, table_axis=sharding.table_axis,
          batch_axes=sharding.batch_axes, overrides=overrides)
    # 2. Attention, with this block's value embedding of the raw ids.
    ve_BTD = None
    if self.value_embed is not None:
      ve_BTD = self.value_embed.embedding[...][ids_BT].astype(x_BTD.dtype)
    x_BTD = x_BTD + self.attn(rms_norm(x_BTD), ve_BTD, cos, sin)
    # 3. MLP.
    return x_BTD + self.mlp(rms_norm(x_BTD))


class GPT(nnx.Module):
  """The backbone GPT. Call it with raw ids and, if Engram is on, hash rows.

  Attributes:
    wte: token embedding [V_pad, D].
    blocks: the transformer blocks; blocks in `engram_layer_ids` own an Engram.
    lm_head: untied output projection D -> V_pad.
    resid_lambdas, x0_lambdas: per-block residual scalars [depth].
    smear_gate, smear_lambda: the gated mix of the previous token's embedding.
    backout_lambda: weight of the stream kept after block depth // 2, removed at the end.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, *, engram_table_rows=None, rngs: nnx.Rngs):
    """Build the model.

    Args:
      cfg: a full config (see engram_jax.config).
      engram_table_rows: logical table rows per Engram layer, in layer_ids
        order (`HashLayout.table_rows`). Each table is padded to a multiple of
        cfg.engram.table_shards. Required when cfg.engram.enabled.
      rngs: parameter random streams.
    """
    config_lib.validate(cfg)
    m, e = cfg.model, cfg.engram
    self.vocab_size = m.vocab_size
    self.depth = m.depth
    self.softcap = m.logit_softcap
    self.compute_dtype = jnp.dtype(m.compute_dtype)
    self.engram_layer_ids = tuple(e.layer_ids) if e.enabled else ()
    self.smear_channels = m.smear_channels
    self.backout_layer = m.depth // 2
    self.max_positions = m.sequence_len * m.rope_len_factor
    self.rope_base = m.rope_base
    self.head_dim = m.head_dim
    rows_by_layer = _engram_rows_by_layer(self.engram_layer_ids, engram_table_rows)

    width = config_lib.model_width(m)
    vocab = config_lib.padded_vocab_size(m)
    self.wte = nnx.Embed(vocab, width, embedding_init=normal_init(0.8), rngs=rngs)
    self.blocks = nnx.List([
        Block(cfg, i, rows_by_layer.get(i), self.compute_dtype, rngs) for i in range(m.depth)])
    self.lm_head = nnx.Linear(
        width, vocab, use_bias=False, kernel_init=normal_init(0.001), dtype=self.compute_dtype,
        rngs=rngs)
    denom = max(m.depth - 1, 1)
    steps = jnp.arange(m.depth, dtype=jnp.float32) / denom
    self.resid_lambdas = nnx.Param(1.15 - 0.10 * steps)
    self.x0_lambdas = nnx.Param(0.20 - 0.15 * steps)
    self.smear_gate = nnx.Linear(
        m.smear_channels, 1, use_bias=False, kernel_init=uniform_init(0.0, 0.02),
        dtype=self.compute_dtype, rngs=rngs)
    self.smear_lambda = nnx.Param(jnp.zeros((1,), jnp.float32))
    self.backout_lambda = nnx.Param(jnp.full((1,), 0.2, jnp.float32))

  def embed(self, ids_BT: jax.Array) -> jax.Array:
    """Return x0 [B,T,D]: normalised token embeddings with the smear applied."""
    x_BTD = rms_norm(self.wte.embedding[...][ids_BT].astype(self.compute_dtype))
    # Smear: x_t += lambda * sigmoid(gate(x_t[:C])) * x_{t-1}; position 0 unchanged.
    gate_BT1 = jax.nn.sigmoid(self.smear_gate(x_BTD[:, 1:, :self.smear_channels]))
    gate_BT1 = self.smear_lambda[...].astype(x_BTD.dtype) * gate_BT1
    smeared_BTD = x_BTD[:, 1:] + gate_BT1 * x_BTD[:, :-1]
    return jnp.concatenate([x_BTD[:, :1], smeared_BTD], axis=1)

  def run_blocks(self, x_BTD, x0_BTD, ids_BT, engram_rows_LBTG, *, start: int = 0,
                 stop: int | None = None, kept_BTD=None, use_engram: bool = True,
                 sharding: ShardingContext = ShardingContext(), overrides=None):
    """Run blocks [start, stop) and return (x, kept) where kept is the backout stream.

    `overrides` maps an Engram block index to its RowOverrides.
    """
    stop = self.depth if stop is None else stop
    T = ids_BT.shape[1]
    cos, sin = rotary_tables(T, self.head_dim, self.rope_base, self.compute_dtype)
    for i in range(start, stop):
      mix_dtype = x_BTD.dtype
      x_BTD = (self.resid_lambdas[...][i].astype(mix_dtype) * x_BTD
               + self.x0_lambdas[...][i].astype(mix_dtype) * x0_BTD)
      rows_BTG = None
      if i in self.engram_layer_ids and use_engram:
        rows_BTG = engram_rows_LBTG[self.engram_layer_ids.index(i)]
      x_BTD = self.blocks[i](
          x_BTD, ids_BT, rows_BTG, cos, sin, sharding=sharding, use_engram=use_engram,
          overrides=(overrides or {}).get(i))
      if i == self.backout_layer:
        kept_BTD = x_BTD
    return x_BTD, kept_BTD

  def logits(self, x_BTD: jax.Array, kept_BTD: jax.Array) -> jax.Array:
    """Apply backout, final norm and lm_head; return soft-capped fp32 logits [B,T,V]."""
    x_BTD = x_BTD - self.backout_lambda[...].astype(x_BTD.dtype) * kept_BTD
    z_BTV = self.lm_head(rms_norm(x_BTD))[..., :self.vocab_size].astype(jnp.float32)
    return self.softcap * jnp.tanh(z_BTV / self.softcap)

  def __call__(self, ids_BT: jax.Array, engram_rows_LBTG: jax.Array | None = None, *,
               suppress_engram: bool = False,
               sharding: ShardingContext = ShardingContext(),
               overrides: dict | None = None) -> jax.Array:
    """Return fp32 logits [B,T,V].

    Args:
      ids_BT: raw token ids, int32.
      engram_rows_LBTG: int32 global table rows, one slab per Engram layer in
        layer_ids order; required unless the model has no Engram or
        `suppress_engram` is set.
      suppress_engram: skip every Engram layer (the evaluation ablation).
      sharding: mesh and axis names for the row-sharded table lookup.
      overrides: {Engram block index: RowOverrides}, per-sequence memory rows
        that replace table rows at lookup time (engram_jax.model.overrides).
    """
    self._check_inputs(ids_BT, engram_rows_LBTG, suppress_engram)
    self._check_overrides(overrides, ids_BT.shape[0])
    x0_BTD = self.embed(ids_BT)
    x_BTD, kept_BTD = self.run_blocks(
        x0_BTD, x0_BTD, ids_BT, engram_rows_LBTG, use_engram=not suppress_engram,
        sharding=sharding, overrides=overrides)
    return self.logits(x_BTD, kept_BTD)

  def _check_overrides(self, overrides, batch: int) -> None:
    for layer, layer_overrides in (overrides or {}).items():
      if layer not in self.engram_layer_ids:
        raise ValueError(
            f"Overrides target block {layer}, which has no Engram layer; Engram blocks are "
            f"{self.engram_layer_ids}.")
      check_overrides(layer_overrides, batch, self.blocks[layer].engram.row_width)

  def _check_inputs(self, ids_BT, engram_rows_LBTG, suppress_engram: bool) -> None:
    if ids_BT.ndim != 2:
      raise ValueError(f"ids must have shape [batch, time]; got shape {ids_BT.shape}.")
    if not jnp.issubdtype(ids_BT.dtype, jnp.integer):
      raise TypeError(f"ids must be integers; got dtype {ids_BT.dtype}.")
    if ids_BT.shape[1] < 2:
      raise ValueError(f"Sequences need at least 2 tokens for the smear; got length {ids_BT.shape[1]}.")
    if ids_BT.shape[1] > self.max_positions:
      raise ValueError(
          f"Sequence length {ids_BT.shape[1]} exceeds the rotary range of {self.max_positions} "
          "positions; raise model.sequence_len or model.rope_len_factor.")
    if not self.engram_layer_ids or suppress_engram:
      return
    expected = (len(self.engram_layer_ids), *ids_BT.shape)
    if engram_rows_LBTG is None:
      raise ValueError(
          "This model has Engram layers; pass engram_rows [num_engram_layers, batch, time, heads] "
          "from engram_jax.hashing, or set suppress_engram=True.")
    if engram_rows_LBTG.ndim != 4 or tuple(engram_rows_LBTG.shape[:3]) != expected:
      raise ValueError(
          f"engram_rows must have shape {expected + ('heads',)}; got {engram_rows_LBTG.shape}.")
    if engram_rows_LBTG.dtype != jnp.int32:
      raise TypeError(f"engram_rows must be int32; got {engram_rows_LBTG.dtype}.")


def _engram_rows_by_layer(layer_ids: tuple[int, ...], table_rows) -> dict[int, int]:
  if not layer_ids:
    return {}
  if table_rows is None or len(table_rows) != len(layer_ids):
    raise ValueError(
        f"engram_table_rows must list one row count per Engram layer {layer_ids}; got {table_rows}. "
        "Build it with engram_jax.hashing.layout_from_config(...).table_rows.")
  return {layer: int(rows) for layer, rows in zip(layer_ids, table_rows)}


def token_nll(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
  """Per-token negative log-likelihood in fp32; 0 where the target is -1."""
  valid_BT = targets_BT != -1
  safe_BT = jnp.where(valid_BT, targets_BT, 0)
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  nll_BT = -jnp.take_along_axis(logp_BTV, safe_BT[..., None], axis=-1)[..., 0]
  return jnp.where(valid_BT, nll_BT, 0.0)


def cross_entropy_loss(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
  """Mean token cross-entropy in fp32, skipping targets equal to -1."""
  count = jnp.maximum(jnp.sum(targets_BT != -1), 1)
  return jnp.sum(token_nll(logits_BTV, targets_BT)) / count
