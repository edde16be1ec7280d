"""Everything a run reads before training: tokenizer files, token shards, hash layout."""

import dataclasses
import os

import numpy as np
from absl import logging
import jax
from jax.experimental import multihost_utils

from engram_jax import hashing
from engram_jax import tokenizer as tokenizer_lib


@dataclasses.dataclass
class RunInputs:
  tokenizer: tokenizer_lib.Tokenizer
  canonical_map: tokenizer_lib.CanonicalMap
  byte_lengths: np.ndarray  # int32 [V], raw byte count per token, 0 for specials
  layout: hashing.HashLayout | None
  data_dir: str


def tokenizer_dir(cfg, workdir: str) -> str:
  return cfg.tokenizer.path or os.path.join(workdir, "tokenizer")


def prepare_inputs(cfg, workdir: str) -> RunInputs:
  """Prepare (on process 0, once) and load the tokenizer, data and hash layout."""
  from engram_jax.data import prepare as prepare_lib  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    data_dir = prepare_lib.prepare(cfg, workdir)
  multihost_utils.sync_global_devices("engram_jax_prepare_data")
  if jax.process_index() != 0:
    data_dir = prepare_lib.prepare(cfg, workdir)
  tok_dir = tokenizer_dir(cfg, workdir)
  tok, cmap = tokenizer_lib.load_tokenizer_bundle(tok_dir)
  if tok.vocab_size != cfg.model.vocab_size:
    raise ValueError(
        f"The tokenizer in {tok_dir} has {tok.vocab_size} tokens but model.vocab_size is "
        f"{cfg.model.vocab_size}; set --config.model.vocab_size={tok.vocab_size} or point "
        "tokenizer.path at a matching tokenizer.")
  byte_lengths = tokenizer_lib.load_byte_lengths(tok_dir, tok, "raw")
  layout = None
  if cfg.engram.enabled:
    layout = hashing.layout_from_config(cfg.engram, cmap.num_canonical)
  logging.info("[data] tokenizer %s (V=%d, V'=%d), data %s", tok.fingerprint[:12], tok.vocab_size,
               cmap.num_canonical, data_dir)
  return RunInputs(tok, cmap, np.asarray(byte_lengths, np.int32), layout, data_dir)
