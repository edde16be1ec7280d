"""Reference d8 runs: depth 8, width 512, 8 heads, vocab 32,768.

Variants (`--config=configs/d8.py:<variant>`):
  v1 (default)  small Engram at blocks (2, 5), 4,000 steps (engram_d8)
  v2            large Engram, 3,841 steps (engram_d8_v2, 12 tokens per scaling param)
  base          no Engram, 4,000 steps (base_d8, the control)
  tiny | small | medium | large | xlarge   capacity-grid cells, 3,815 steps
"""

from engram_jax import config as config_lib


def get_config(variant: str = "v1"):
  cfg = config_lib.base_config()
  cfg.model.depth = 8  # blocks; width = 8 * 64 = 512, 8 heads
  cfg.model.aspect_ratio = 64  # width per block of depth
  cfg.engram.layer_ids = (2, 5)  # blocks with an Engram layer; memory writes into block 5
  cfg.train.total_batch_tokens = 131_072  # tokens per optimiser step (128 rows of 1024)
  cfg.train.device_batch_size = 8  # rows per micro-step, so 16 micro-steps per step
  if variant == "v1":
    cfg.name = "engram_d8"
    config_lib.apply_preset(cfg, "small")
    cfg.train.num_iterations = 4_000  # optimiser steps (0.524 B tokens)
  elif variant == "v2":
    cfg.name = "engram_d8_v2"
    config_lib.apply_preset(cfg, "large")
    cfg.train.num_iterations = 3_841  # 12 tokens per scaling param
  elif variant == "base":
    cfg.name = "base_d8"
    cfg.engram.enabled = False  # the no-Engram control
    cfg.train.num_iterations = 4_000  # optimiser steps
  elif variant in config_lib.ENGRAM_PRESETS:
    cfg.name = f"engram_d8_{variant}"
    config_lib.apply_preset(cfg, variant)
    cfg.train.num_iterations = 3_815  # 0.5 B tokens, the smallest capacity-grid budget
  else:
    raise ValueError(
        f"Unknown d8 variant {variant!r}; use v1, v2, base or a preset "
        f"{sorted(config_lib.ENGRAM_PRESETS)}.")
  return cfg
