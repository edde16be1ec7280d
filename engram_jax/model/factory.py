"""Build the GPT from a config, concretely or abstractly (no weights allocated)."""

import ml_collections
from flax import nnx

from engram_jax import hashing
from engram_jax.model.gpt import GPT


def hash_layout(cfg: ml_collections.ConfigDict, num_canonical: int | None = None):
  """Return the hash layout of `cfg`'s Engram layers, or None without Engram.

  Table shapes (primes, offsets, rows) do not depend on the canonical
  vocabulary; only the multipliers do. Without `num_canonical` the raw
  vocabulary size stands in, which gives the right table shapes for building
  or describing a model but multipliers that hashing must not use.
  """
  if not cfg.engram.enabled:
    return None
  return hashing.layout_from_config(cfg.engram, num_canonical or cfg.model.vocab_size)


def _table_rows(cfg, layout):
  if layout is None:
    return None
  return layout.table_rows


def create_model(cfg: ml_collections.ConfigDict, *, layout=None, seed: int | None = None) -> GPT:
  """Build a GPT with initialised fp32 parameters."""
  layout = layout if layout is not None else hash_layout(cfg)
  seed = cfg.train.seed if seed is None else seed
  return GPT(cfg, engram_table_rows=_table_rows(cfg, layout), rngs=nnx.Rngs(seed))


def abstract_model(cfg: ml_collections.ConfigDict, *, layout=None) -> GPT:
  """Build a GPT whose parameters are shape/dtype structs; allocates no weights."""
  layout = layout if layout is not None else hash_layout(cfg)
  rows = _table_rows(cfg, layout)
  return nnx.eval_shape(lambda: GPT(cfg, engram_table_rows=rows, rngs=nnx.Rngs(0)))
