"""Reference d20 run: depth 20, width 1536 (aspect 76, 24 heads), large Engram at (2, 11).

Variants (`--config=configs/d20.py:<variant>`):
  optimal (default)  56,449 steps (engram_d20_w1536_optimal, 12 tokens per scaling param)
  base               no Engram, same budget
"""

from engram_jax import config as config_lib


def get_config(variant: str = "optimal"):
  cfg = config_lib.base_config()
  cfg.name = "engram_d20_w1536_optimal"
  cfg.model.depth = 20  # blocks
  cfg.model.aspect_ratio = 76  # ceil(20 * 76 / 64) * 64 = 1536, 24 heads
  cfg.engram.layer_ids = (2, 11)  # blocks with an Engram layer; memory writes into block 11
  config_lib.apply_preset(cfg, "large")  # 50,000 primes per head, 32 floats per row
  cfg.train.total_batch_tokens = 131_072  # tokens per optimiser step
  cfg.train.device_batch_size = 4  # rows per micro-step, so 32 micro-steps per step
  cfg.train.num_iterations = 56_449  # 12 tokens per scaling param (7.399 B tokens)
  if variant == "base":
    cfg.name = "base_d20"
    cfg.engram.enabled = False  # the no-Engram control
  elif variant != "optimal":
    raise ValueError(f"Unknown d20 variant {variant!r}; use 'optimal' or 'base'.")
  return cfg
