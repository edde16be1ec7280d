"""Load a pretrained model from a pretraining workdir, for memory writing and evaluation.

A workdir written by `launch.pretrain` holds `checkpoints/` (orbax) and the
tokenizer files. The checkpoint's metadata carries the config, so the model
is rebuilt without the config file that trained it.
"""

import dataclasses
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from engram_jax import hashing
from engram_jax import tokenizer as tokenizer_lib
from engram_jax.model.gpt import GPT
from engram_jax.train import checkpoint as ckpt_lib
from engram_jax.train import mesh as mesh_lib, optimizer, state as state_lib


@dataclasses.dataclass
class Pretrained:
  """A restored model with everything needed to tokenize, hash and score text."""
  cfg: ml_collections.ConfigDict
  model: GPT
  tokenizer: tokenizer_lib.Tokenizer
  canonical_map: tokenizer_lib.CanonicalMap
  layout: hashing.HashLayout | None
  byte_lengths: np.ndarray
  step: int
  workdir: str

  @property
  def memory_layer(self) -> int:
    """The last Engram block, where per-user memory is written."""
    if self.layout is None:
      raise ValueError(f"The model in {self.workdir} has no Engram layer, so it cannot hold memory.")
    return int(self.layout.layer_ids[-1])

  def hash_rows(self, ids_BT: np.ndarray) -> np.ndarray | None:
    """Engram rows [L, B, T, G] of raw token ids, or None without Engram."""
    if self.layout is None:
      return None
    canonical = hashing.canonicalize_np(np.asarray(ids_BT), self.canonical_map.raw_to_canonical)
    return hashing.hash_rows_np(canonical, self.layout)


def _latest_step(manager: ocp.CheckpointManager, workdir: str) -> int:
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(
        f"No committed checkpoint in {workdir}/checkpoints; train one with "
        f"`python -m launch.pretrain --config=... --workdir={workdir}`.")
  return step


def load_pretrained(workdir: str, *, step: int | None = None) -> Pretrained:
  """Restore the newest (or the given) checkpoint of `workdir` onto one device."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"{directory} does not exist; `workdir` must be a directory written by launch.pretrain.")
  manager = ckpt_lib.make_manager(directory, save_every=1, max_to_keep=None, async_save=False)
  step = _latest_step(manager, workdir) if step is None else step
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  cfg = ml_collections.ConfigDict(meta["config"])
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.table = 1, 1, 1

  tok_dir = cfg.tokenizer.path or os.path.join(workdir, "tokenizer")
  tok, cmap = tokenizer_lib.load_tokenizer_bundle(tok_dir)
  if tok.fingerprint != meta["tokenizer_fingerprint"]:
    raise ckpt_lib.IncompatibleCheckpointError(
        f"The tokenizer in {tok_dir} ({tok.fingerprint[:12]}) is not the one the checkpoint was "
        f"trained with ({meta['tokenizer_fingerprint'][:12]}).")
  layout = hashing.layout_from_config(cfg.engram, cmap.num_canonical) if cfg.engram.enabled else None
  table_rows = layout.table_rows if layout is not None else None

  mesh = mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:1])
  tx = optimizer.build_optimizer(cfg, state_lib.abstract_params(cfg, table_rows))
  abstract_state = jax.eval_shape(lambda: state_lib.init_state(cfg, table_rows, tx, 0))
  target = ckpt_lib.sharded_target(abstract_state, state_lib.state_shardings(abstract_state, mesh))
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  model = nnx.merge(state_lib.model_graphdef(cfg, table_rows), restored["state"]["params"])
  byte_lengths = np.asarray(tokenizer_lib.load_byte_lengths(tok_dir, tok, "raw"), np.int32)
  logging.info("[load] %s step %d from %s", cfg.name, step, workdir)
  return Pretrained(cfg, model, tok, cmap, layout, byte_lengths, step, workdir)

