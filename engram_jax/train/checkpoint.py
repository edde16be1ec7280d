"""Orbax checkpoints of the full train state, data position and run metadata.

Each checkpoint step contains three items:
  state  params, optimiser state and step (sharded arrays, restorable onto any mesh)
  data   the training iterator's state (JSON; identical on every process,
         because every process walks the same global row order)
  meta   the config, tokenizer fingerprint and hash layout needed to rebuild
         the model and to refuse an incompatible workdir

Orbax writes each step into a temporary directory and renames it when the
save commits, so a run killed mid-save restarts from the last committed step.
"""

import json
import os

import jax
import orbax.checkpoint as ocp
from absl import logging

# Config sections whose change makes a checkpoint unusable for this run.
COMPATIBILITY_SECTIONS = ("model", "engram")
FORMAT = "engram-jax-checkpoint/1"


class IncompatibleCheckpointError(ValueError):
  """The workdir contains a checkpoint from another model or tokenizer."""


def make_manager(directory: str, *, save_every: int, max_to_keep: int,
                 async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=max(1, save_every), max_to_keep=max_to_keep,
      enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "data", "meta"))


def build_meta(cfg, *, tokenizer_fingerprint: str, layout) -> dict:
  return {
      "format": FORMAT,
      "config": json.loads(cfg.to_json_best_effort()),
      "tokenizer_fingerprint": tokenizer_fingerprint,
      "hash_layout": layout.to_dict() if layout is not None else None,
  }


def save(manager: ocp.CheckpointManager, step: int, state: dict, data_state: dict, meta: dict,
         *, force: bool = False) -> bool:
  """Start an (async) save of `step`; returns whether a save was started."""
  saved = manager.save(
      step,
      args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(data_state),
          meta=ocp.args.JsonSave(meta)),
      force=force)
  if saved:
    logging.info("[ckpt] saving step %d to %s", step, manager.directory)
  return saved


def check_compatible(saved_meta: dict, meta: dict, directory) -> None:
  """Raise IncompatibleCheckpointError naming the first differing field."""
  if saved_meta.get("format") != FORMAT:
    raise IncompatibleCheckpointError(
        f"{directory} contains a checkpoint of format {saved_meta.get('format')!r}, expected "
        f"{FORMAT!r}; use a new --workdir.")
  if saved_meta.get("tokenizer_fingerprint") != meta["tokenizer_fingerprint"]:
    raise IncompatibleCheckpointError(
        f"{directory} was trained with tokenizer {saved_meta.get('tokenizer_fingerprint')}, but this "
        f"run uses {meta['tokenizer_fingerprint']}; use a new --workdir or the original tokenizer.")
  for section in COMPATIBILITY_SECTIONS:
    saved, current = saved_meta["config"].get(section, {}), meta["config"].get(section, {})
    for key in sorted(set(saved) | set(current)):
      if saved.get(key) != current.get(key):
        raise IncompatibleCheckpointError(
            f"{directory} contains a checkpoint with {section}.{key}={saved.get(key)!r}, but the config "
            f"sets {current.get(key)!r}; use a new --workdir, or restore the original config.")


def _warn_schedule_change(saved_meta: dict, meta: dict) -> None:
  saved = saved_meta["config"].get("train", {}).get("num_iterations")
  current = meta["config"].get("train", {}).get("num_iterations")
  if saved is not None and saved != current:
    logging.warning(
        "[ckpt] the checkpoint was trained for train.num_iterations=%s and this run sets %s; the "
        "learning-rate schedule (warmup, warmdown) is recomputed for %s steps, so the rate jumps "
        "at the resumed step.", saved, current, current)


def sharded_target(abstract_state, shardings):
  """Shape structs that tell orbax where each restored array goes."""
  return jax.tree.map(
      lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
      abstract_state, shardings)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: dict, state_shardings: dict,
                   meta: dict):
  """Restore the newest committed step onto the given shardings.

  Returns (step, state, data_state), or None when the directory contains no
  committed checkpoint.
  """
  step = manager.latest_step()
  if step is None:
    return None
  saved_meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  check_compatible(saved_meta, meta, manager.directory)
  _warn_schedule_change(saved_meta, meta)
  target = sharded_target(abstract_state, state_shardings)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
  except (ValueError, FileNotFoundError, KeyError) as error:
    raise IncompatibleCheckpointError(
        f"Checkpoint step {step} in {manager.directory} could not be restored ({error}). It may be "
        "corrupt; move that step directory away to resume from an earlier one, or use a new "
        "--workdir.") from error
  logging.info("[ckpt] restored step %d from %s", step, manager.directory)
  return step, restored["state"], restored["data"]
