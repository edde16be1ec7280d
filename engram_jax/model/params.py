"""Parameter paths, groups and counts of the GPT.

Groups are assigned by explicit path rules, never by array rank: a rank rule
would put the embeddings, lm_head and Engram tables with the block matrices.
The optimiser and `launch.describe` both use `param_group`.
"""

import collections
import re
from typing import Iterable

import jax
import numpy as np
from flax import nnx

# (group, regex on the "/"-joined parameter path). First match wins.
PARAM_GROUP_RULES = (
    ("wte", r"^wte/embedding$"),
    ("lm_head", r"^lm_head/kernel$"),
    ("value_embeds", r"^blocks/\d+/value_embed/embedding$"),
    ("engram_tables", r"^blocks/\d+/engram/table$"),
    ("engram_projections", r"^blocks/\d+/engram/w_[kv]$"),
    ("engram_conv", r"^blocks/\d+/engram/conv$"),
    ("transformer_matrices", r"^blocks/\d+/(attn/(c_q|c_k|c_v|c_proj|ve_gate)|mlp/(c_fc|c_proj))/kernel$"),
    ("resid_lambdas", r"^resid_lambdas$"),
    ("x0_lambdas", r"^x0_lambdas$"),
    ("smear", r"^(smear_gate/kernel|smear_lambda|backout_lambda)$"),
)

# Groups summed into the reporting categories of `describe`.
SCALAR_GROUPS = ("resid_lambdas", "x0_lambdas", "smear")
ENGRAM_GROUPS = ("engram_tables", "engram_projections", "engram_conv")


def path_string(path: Iterable) -> str:
  """Join an NNX state path such as ('blocks', 0, 'attn', 'c_q', 'kernel')."""
  return "/".join(str(part) for part in path)


def param_group(path: str) -> str:
  """Return the group of a parameter path; raise for a path no rule covers."""
  for group, pattern in PARAM_GROUP_RULES:
    if re.match(pattern, path):
      return group
  raise ValueError(
      f"Parameter {path!r} matches no rule in PARAM_GROUP_RULES; add a rule so its "
      "optimiser group is explicit.")


def flat_params(model: nnx.Module) -> dict[str, jax.Array | jax.ShapeDtypeStruct]:
  """Map each parameter path to its array (or abstract shape)."""
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  return {path_string(path): var.get_value() for path, var in flat}


def count_by_group(model: nnx.Module, logical_table_rows=None) -> dict[str, int]:
  """Count parameters per group.

  Args:
    model: a GPT, concrete or abstract (from nnx.eval_shape).
    logical_table_rows: rows per Engram layer before padding to the shard
      count, in block order. When given, padding rows are not counted.
  """
  counts = collections.Counter()
  table_index = 0
  for path, value in sorted(flat_params(model).items(), key=lambda kv: _path_key(kv[0])):
    group = param_group(path)
    size = int(np.prod(value.shape))
    if group == "engram_tables" and logical_table_rows is not None:
      size = int(logical_table_rows[table_index]) * int(value.shape[1])
      table_index += 1
    counts[group] += size
  return dict(counts)


def _path_key(path: str):
  """Sort key that orders numeric path parts numerically (block 10 after block 9)."""
  return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split("/")]


def summarize_counts(counts: dict[str, int]) -> dict[str, int]:
  """Return the reporting categories: totals, scaling params and per-group sums."""
  get = lambda *groups: sum(counts.get(g, 0) for g in groups)
  summary = {
      "wte": get("wte"),
      "value_embeds": get("value_embeds"),
      "transformer_matrices": get("transformer_matrices"),
      "lm_head": get("lm_head"),
      "scalars": get(*SCALAR_GROUPS),
      "engram_tables": get("engram_tables"),
      "engram_projections_conv": get("engram_projections", "engram_conv"),
  }
  summary["engram"] = summary["engram_tables"] + summary["engram_projections_conv"]
  summary["total"] = sum(counts.values())
  # Scaling params set the token budget: transformer matrices plus lm_head.
  summary["scaling"] = summary["transformer_matrices"] + summary["lm_head"]
  return summary
