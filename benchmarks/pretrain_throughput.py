"""Train-step throughput with the Engram on, off, and with 10x larger tables.

  python -m benchmarks.pretrain_throughput [--config=configs/tiny.py] [--steps=20]

Runs the compiled train step (optimiser included) on random token batches
hashed on the host, times `--steps` steps after `--warmup` untimed ones, and
prints tokens/s per variant and the ratios to the Engram-on run. Nothing is
asserted: the numbers go into the issue notes with the machine they ran on.
"""

import json
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from engram_jax import config as config_lib
from engram_jax import hashing
from engram_jax.train import mesh as mesh_lib, optimizer, state as state_lib, step as step_lib

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Base config.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed optimiser steps per variant.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps (compilation) per variant.")
_TABLE_FACTOR = flags.DEFINE_integer("table_factor", 10, "Row multiplier of the large-table variant.")


def _variants(cfg) -> dict:
  off = cfg.copy_and_resolve_references()
  off.engram.enabled = False
  large = cfg.copy_and_resolve_references()
  large.engram.preset = "custom"
  large.engram.vocab_per_ngram = cfg.engram.vocab_per_ngram * _TABLE_FACTOR.value
  return {"engram_on": cfg, "engram_off": off, f"tables_x{_TABLE_FACTOR.value}": large}


def _batch(cfg, layout, rng, micro_steps: int) -> dict:
  T, rows = cfg.model.sequence_len, cfg.train.device_batch_size
  tokens = rng.integers(0, cfg.model.vocab_size - 16, size=(micro_steps, rows, T + 1)).astype(np.int32)
  batch = {"inputs": tokens[..., :-1], "targets": tokens[..., 1:]}
  if layout is not None:
    # Identity canonical map: the benchmark measures the step, not the tokenizer.
    batch["engram_rows"] = np.stack([hashing.hash_rows_np(batch["inputs"][a], layout)
                                     for a in range(micro_steps)])
  return batch


def measure(cfg) -> dict:
  """Return tokens/s of the compiled train step for `cfg` on all local devices."""
  mesh = mesh_lib.make_mesh(cfg.mesh)
  layout = hashing.layout_from_config(cfg.engram, cfg.model.vocab_size) if cfg.engram.enabled else None
  table_rows = layout.table_rows if layout is not None else None
  tx = optimizer.build_optimizer(cfg, state_lib.abstract_params(cfg, table_rows))
  state, setup = state_lib.create_train_state(cfg, table_rows, tx, mesh, seed=0)
  shardings = mesh_lib.batch_shardings(mesh, layout is not None)
  step_fn = step_lib.compile_train_step(setup, shardings)
  micro_steps = cfg.train.total_batch_tokens // (cfg.train.device_batch_size * cfg.model.sequence_len)
  rng = np.random.default_rng(0)
  batches = [{k: jax.device_put(v, shardings[k]) for k, v in _batch(cfg, layout, rng, micro_steps).items()}
             for _ in range(4)]
  with jax.set_mesh(mesh):
    for i in range(_WARMUP.value):
      state, metrics = step_fn(state, batches[i % 4])
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for i in range(_STEPS.value):
      state, metrics = step_fn(state, batches[i % 4])
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
  tokens = _STEPS.value * cfg.train.total_batch_tokens
  return {"tokens_per_s": tokens / seconds, "seconds_per_step": seconds / _STEPS.value,
          "params": state_lib.count_params(state["params"])}


def main(argv):
  del argv
  cfg = _CONFIG.value
  config_lib.validate(cfg)
  results = {name: measure(variant) for name, variant in _variants(cfg).items()}
  base = results["engram_on"]["tokens_per_s"]
  for name, result in results.items():
    result["ratio_to_engram_on"] = result["tokens_per_s"] / base
    print(f"{name:>14}: {result['tokens_per_s']:10.0f} tokens/s  {result['seconds_per_step']:.3f} s/step  "
          f"{result['params']:>12,} params  x{result['ratio_to_engram_on']:.3f}")
  print(json.dumps({"config": cfg.name, "devices": [d.device_kind for d in jax.devices()],
                    "steps": _STEPS.value, "results": results}))


if __name__ == "__main__":
  app.run(main)
