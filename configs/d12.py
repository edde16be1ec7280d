"""Reference d12 runs: depth 12, large Engram at blocks (2, 7).

Variants (`--config=configs/d12.py:<variant>`):
  v1 (default)  width 768, 6,000 steps (engram_d12)
  v2            width 768, 10,081 steps (engram_d12_v2, 12 tokens per scaling param)
  w1280         width 1280 (aspect 106, 20 heads), 25,441 steps (engram_d12_w1280_optimal)
  base          width 768 without Engram, 6,000 steps
  tiny | small | medium | large | xlarge   width-768 capacity-grid cells, 3,815 steps
"""

from engram_jax import config as config_lib


def get_config(variant: str = "v1"):
  cfg = config_lib.base_config()
  cfg.model.depth = 12  # blocks
  cfg.model.aspect_ratio = 64  # width 768, 12 heads
  cfg.engram.layer_ids = (2, 7)  # blocks with an Engram layer; memory writes into block 7
  config_lib.apply_preset(cfg, "large")  # 50,000 primes per head, 32 floats per row
  cfg.train.total_batch_tokens = 131_072  # tokens per optimiser step
  cfg.train.device_batch_size = 8  # rows per micro-step, so 16 micro-steps per step
  cfg.train.num_iterations = 6_000  # optimiser steps
  if variant == "v1":
    cfg.name = "engram_d12"
  elif variant == "v2":
    cfg.name = "engram_d12_v2"
    cfg.train.num_iterations = 10_081  # 12 tokens per scaling param
  elif variant == "w1280":
    cfg.name = "engram_d12_w1280_optimal"
    cfg.model.aspect_ratio = 106  # ceil(12 * 106 / 64) * 64 = 1280, 20 heads
    cfg.train.num_iterations = 25_441  # 12 tokens per scaling param
  elif variant == "base":
    cfg.name = "base_d12"
    cfg.engram.enabled = False  # the no-Engram control
  elif variant in config_lib.ENGRAM_PRESETS:
    cfg.name = f"engram_d12_{variant}"
    config_lib.apply_preset(cfg, variant)
    cfg.train.num_iterations = 3_815  # 0.5 B tokens, the smallest capacity-grid budget
  else:
    raise ValueError(
        f"Unknown d12 variant {variant!r}; use v1, v2, w1280, base or a preset "
        f"{sorted(config_lib.ENGRAM_PRESETS)}.")
  return cfg
