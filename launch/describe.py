"""Print a model's parameter counts and Engram table layout without allocating weights.

  python -m launch.describe --config=configs/d20.py [--json]
  python -m launch.describe --config=configs/d8.py:base
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from engram_jax import config as config_lib
from engram_jax.model import factory, params

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/d20.py[:variant].")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")


def describe(cfg) -> dict:
  """Return the parameter counts and Engram layout of `cfg` as a JSON-ready dict."""
  config_lib.validate(cfg)
  layout = factory.hash_layout(cfg)
  model = factory.abstract_model(cfg, layout=layout)
  logical_rows = layout.table_rows if layout is not None else None
  counts = params.summarize_counts(params.count_by_group(model, logical_rows))
  m = cfg.model
  report = {
      "name": cfg.name,
      "model": {
          "depth": m.depth,
          "width": config_lib.model_width(m),
          "heads": config_lib.num_heads(m),
          "head_dim": m.head_dim,
          "vocab_size": m.vocab_size,
          "sequence_len": m.sequence_len,
      },
      "params": counts,
      "train": {
          "num_iterations": int(cfg.train.num_iterations),
          "tokens_per_step": int(cfg.train.total_batch_tokens),
          "tokens": int(cfg.train.num_iterations) * int(cfg.train.total_batch_tokens),
          "tokens_per_scaling_param": (int(cfg.train.num_iterations) * int(cfg.train.total_batch_tokens)
                                       / counts["scaling"]),
      },
      "engram": {"enabled": bool(cfg.engram.enabled), "layers": []},
  }
  if layout is not None:
    report["engram"].update({
        "preset": cfg.engram.preset,
        "vocab_per_ngram": cfg.engram.vocab_per_ngram,
        "row_width": config_lib.row_width(cfg.engram),
        "hash_heads": config_lib.hash_heads(cfg.engram),
        "slots_total": int(sum(layout.table_rows)),
    })
    for i, layer in enumerate(layout.layer_ids):
      report["engram"]["layers"].append({
          "layer": int(layer),
          "primes": [int(p) for p in layout.primes[i]],
          "offsets": [int(o) for o in layout.offsets[i]],
          "slots": int(layout.table_rows[i]),
          "physical_rows": int(layout.physical_rows[i]),
      })
  return report


def format_report(report: dict) -> str:
  """Render `describe`'s dict as aligned text."""
  p, m = report["params"], report["model"]
  lines = [
      f"{report['name']}: depth {m['depth']}, width {m['width']}, {m['heads']} heads of "
      f"{m['head_dim']}, vocab {m['vocab_size']:,}, sequence {m['sequence_len']:,}",
      "parameters:",
  ]
  rows = [
      ("embeddings (wte)", p["wte"]),
      ("value embeddings", p["value_embeds"]),
      ("transformer matrices", p["transformer_matrices"]),
      ("lm_head", p["lm_head"]),
      ("scalars", p["scalars"]),
      ("Engram tables", p["engram_tables"]),
      ("Engram projections + conv", p["engram_projections_conv"]),
      ("total", p["total"]),
      ("scaling (matrices + lm_head)", p["scaling"]),
  ]
  lines += [f"  {name:<30}{value:>16,}" for name, value in rows]
  t = report["train"]
  lines.append(f"training: {t['num_iterations']:,} steps of {t['tokens_per_step']:,} tokens = "
               f"{t['tokens'] / 1e9:.3f} B tokens ({t['tokens_per_scaling_param']:.1f} per scaling param)")
  engram = report["engram"]
  if not engram["enabled"]:
    lines.append("Engram: off")
    return "\n".join(lines)
  lines.append(
      f"Engram: preset {engram['preset']}, {engram['hash_heads']} hash heads, rows of "
      f"{engram['row_width']} floats, {engram['slots_total']:,} slots in all")
  for layer in engram["layers"]:
    lines.append(f"  block {layer['layer']}: {layer['slots']:,} slots "
                 f"({layer['physical_rows']:,} physical rows)")
    lines.append(f"    primes  {' '.join(str(x) for x in layer['primes'])}")
    lines.append(f"    offsets {' '.join(str(x) for x in layer['offsets'])}")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/d20.py")
  report = describe(_CONFIG.value)
  if _JSON.value:
    json.dump(report, sys.stdout, indent=None)
    sys.stdout.write("\n")
  else:
    print(format_report(report))


if __name__ == "__main__":
  app.run(main)
