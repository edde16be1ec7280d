"""Aggregate per-seed memory evaluations into report.json, report.md and a PNG plot.

Each metric is an object {"mean", "ci95": [low, high], "n", "ci_method"}.
Proportions pool every trial over users and seeds with a Wilson interval.
Continuous metrics take one value per (user, seed) and bootstrap over users.
"mean" is the named statistic, so it is the median for median ranks. The
largest off-trigger residual change is a worst case without an interval:
{"max", "n"}.

A seed result is a dict with "strategy", "seed", "probes" (records from
evals.recall.run_probes), "leak_checks", "users" (uid -> per-map numbers:
delta_bpb, firing_rate, offtrigger_change, storage_bytes, num_rows,
num_facts, write_seconds, value_dtype) and optionally "maps" (uid ->
OverrideMap or None), whose settings become the strategy's writer_settings.
"""

import json
import pathlib
from collections.abc import Sequence

import numpy as np

from evals import stats

# Map settings that tell runs of one strategy apart in a report (most are flags of
# launch.write_memory).
WRITER_SETTING_KEYS = ("continuation_heads", "init", "anchor_weight", "anchor", "keep_weight",
                       "learning_rate", "max_steps")
RECALL_FLAGS = ("first_token_top1", "first_token_top5", "first_token_top10", "exact_match",
                "answer_contains")
SPLITS = ("seen", "heldout")


def _group(items, key_fn, value_fn) -> dict[str, list]:
  groups: dict[str, list] = {}
  for item in items:
    value = value_fn(item)
    if value is not None:
      groups.setdefault(key_fn(item), []).append(value)
  return groups


def _recall(probes: list[dict], split: str) -> dict:
  chosen = [p for p in probes if p["split"] == split]
  out = {flag: stats.proportion_summary(_group(chosen, lambda p: p["uid"], lambda p, f=flag: p[f]))
         for flag in RECALL_FLAGS}
  out["first_token_median_rank"] = stats.value_summary(
      _group(chosen, lambda p: p["uid"], lambda p: p["rank"]), statistic=np.median)
  return out


def _per_user(seed_results: Sequence[dict], field: str, scale_by_facts: bool = False) -> dict:
  groups: dict[str, list[float]] = {}
  for result in seed_results:
    for uid, values in result["users"].items():
      value = values.get(field)
      if value is None:
        continue
      if scale_by_facts:
        value = value / values["num_facts"]
      groups.setdefault(uid, []).append(float(value))
  return groups


def aggregate_strategy(seed_results: Sequence[dict]) -> dict:
  """Combine the seed results of one strategy into the report's metric objects."""
  probes = [p for r in seed_results for p in r["probes"]]
  checks = [c for r in seed_results for c in r["leak_checks"]]
  swaps = [p for p in probes if p["split"] == "swap"]
  users = sorted({uid for r in seed_results for uid in r["users"]})
  value_dtypes = sorted({v["value_dtype"] for r in seed_results for v in r["users"].values()
                         if v.get("value_dtype")})
  return {
      "seeds": sorted({r["seed"] for r in seed_results}),
      "users": users,
      "recall": {split: _recall(probes, split) for split in SPLITS},
      "locality": {
          "delta_bpb": stats.value_summary(_per_user(seed_results, "delta_bpb")),
          "firing_rate": stats.value_summary(_per_user(seed_results, "firing_rate")),
          **_residual_change(seed_results),
      },
      "leakage": {
          "rate": stats.proportion_summary(_group(checks, lambda c: c["uid"], lambda c: c["leak"])),
          "rate_beyond_bare_model": stats.proportion_summary(_group(
              checks, lambda c: c["uid"],
              lambda c: None if "bare_leak" not in c else c["leak"] and not c["bare_leak"])),
          "rate_beyond_alone": stats.proportion_summary(_group(
              checks, lambda c: c["uid"], lambda c: c["leak"] and not c.get("alone_leak", False))),
          "swap_control_rate": stats.proportion_summary(
              _group(swaps, lambda p: p["uid"], lambda p: p["swap_hit"])),
          "swap_control_own_exact_match": stats.proportion_summary(
              _group(swaps, lambda p: p["uid"], lambda p: p["exact_match"])),
      },
      "storage": {
          "bytes_per_fact": stats.value_summary(_per_user(seed_results, "storage_bytes", True)),
          "bytes_per_user": stats.value_summary(_per_user(seed_results, "storage_bytes")),
          "rows_per_user": stats.value_summary(_per_user(seed_results, "num_rows")),
          "value_dtype": value_dtypes[0] if len(value_dtypes) == 1 else value_dtypes,
      },
      "write": {"seconds_per_fact": stats.value_summary(
          _per_user(seed_results, "write_seconds", True))},
      "writer_settings": writer_settings(seed_results),
      "per_seed": {str(r["seed"]): _seed_line(r) for r in seed_results},
  }


def _residual_change(seed_results: Sequence[dict]) -> dict:
  """Summarise the off-trigger residual change: mean of the per-(user, seed) maxima, and their max.

  Each per-(user, seed) value is already a maximum over the user's prompts.
  Their mean has a bootstrap interval over users. Their max is a worst case,
  which a bootstrap cannot bound, so it is reported without an interval.
  """
  by_user = _per_user(seed_results, "offtrigger_change")
  values = [v for per_user in by_user.values() for v in per_user]
  return {
      "mean_user_max_residual_change_off_trigger": stats.value_summary(by_user),
      "max_residual_change_off_trigger": {"max": max(values) if values else None, "n": len(values)},
  }


def writer_settings(seed_results: Sequence[dict]) -> dict:
  """Return the distinct WRITER_SETTING_KEYS values and value dtypes of the strategy's maps.

  Each key maps to a list of its distinct values, in first-seen order. Keys
  that no map's settings contain are left out, so a strategy without maps
  (the bare model) gets {}.
  """
  found: dict[str, list] = {}
  for result in seed_results:
    for m in (result.get("maps") or {}).values():
      if m is None:
        continue
      for key in WRITER_SETTING_KEYS:
        if key in m.settings:
          _add_distinct(found.setdefault(key, []), m.settings[key])
      _add_distinct(found.setdefault("value_dtype", []), m.value_dtype)
  return found


def _add_distinct(values: list, value) -> None:
  if value not in values:
    values.append(value)


def _seed_line(result: dict) -> dict:
  """Point values of one seed, to show the spread across seeds."""
  line = {}
  for split in SPLITS:
    chosen = [p for p in result["probes"] if p["split"] == split]
    for flag in ("exact_match", "first_token_top1"):
      line[f"{split}.{flag}"] = float(np.mean([p[flag] for p in chosen])) if chosen else None
  deltas = [v["delta_bpb"] for v in result["users"].values() if v.get("delta_bpb") is not None]
  line["delta_bpb"] = float(np.mean(deltas)) if deltas else None
  return line


def _cell(metric: dict | None, digits: int = 3) -> str:
  if not metric or metric.get("mean") is None:
    return "n/a"
  low, high = metric["ci95"]
  fmt = f"{{:.{digits}f}}"
  return f"{fmt.format(metric['mean'])} [{fmt.format(low)}, {fmt.format(high)}]"


def _sci(metric: dict | None) -> str:
  if not metric or metric.get("mean") is None:
    return "n/a"
  low, high = metric["ci95"]
  return f"{metric['mean']:+.2e} [{low:+.1e}, {high:+.1e}]"


TABLE_COLUMNS = (
    ("seen EM", lambda s: _cell(s["recall"]["seen"]["exact_match"], 2)),
    ("seen top-1*", lambda s: _cell(s["recall"]["seen"]["first_token_top1"], 2)),
    ("held-out EM", lambda s: _cell(s["recall"]["heldout"]["exact_match"], 2)),
    ("held-out top-1*", lambda s: _cell(s["recall"]["heldout"]["first_token_top1"], 2)),
    ("Δbpb", lambda s: _sci(s["locality"]["delta_bpb"])),
    ("leak", lambda s: _cell(s["leakage"]["rate"], 3)),
    ("leak beyond alone", lambda s: _cell(s["leakage"]["rate_beyond_alone"], 3)),
    ("swap control", lambda s: _cell(s["leakage"]["swap_control_rate"], 2)),
    ("bytes/fact", lambda s: _cell(s["storage"]["bytes_per_fact"], 0)),
    ("s/fact", lambda s: _cell(s["write"]["seconds_per_fact"], 3)),
)


def format_table(report: dict) -> str:
  """Format a Markdown table with one row per strategy."""
  header = "| strategy | " + " | ".join(name for name, _ in TABLE_COLUMNS) + " |"
  lines = [header, "|" + "---|" * (len(TABLE_COLUMNS) + 1)]
  for name, summary in report["strategies"].items():
    lines.append(f"| {name} | " + " | ".join(cell(summary) for _, cell in TABLE_COLUMNS) + " |")
  return "\n".join(lines)


def format_markdown(report: dict, plot_name: str | None = None) -> str:
  """Format the whole report.md: setup, the table, definitions and the plot."""
  model = report["model"]
  val = report.get("validation", {})
  lines = [
      "# Per-user memory evaluation", "",
      f"Model: `{model['workdir']}` ({model['name']}, step {model['step']}), memory in block "
      f"{model['memory_layer']}. Users: {', '.join(report['users'])}. "
      f"Seeds: {', '.join(str(s) for s in report['seeds'])}.",
      f"Validation: {val.get('tokens', 'n/a')} tokens, base bpb {val.get('base_bpb', float('nan')):.4f}.",
      "", format_table(report), "",
      "Cells: mean [95% CI]. EM = full-answer exact match under greedy decoding (primary "
      "metric). * first-token top-1 is secondary: the gold's first token has the highest logit "
      "at the trigger position.",
  ]
  lines += [f"- {name}: {text}" for name, text in report["definitions"].items()]
  lines += _writer_settings_lines(report)
  if plot_name:
    lines += ["", f"![recall and locality]({plot_name})"]
  return "\n".join(lines) + "\n"


def _writer_settings_lines(report: dict) -> list[str]:
  """Format one Markdown line per strategy with its maps' writer settings (none for the bare model)."""
  lines = []
  for name, summary in report["strategies"].items():
    found = summary.get("writer_settings") or {}
    if found:
      values = "; ".join(f"{key} {', '.join(_setting_text(v) for v in options)}"
                         for key, options in found.items())
      lines.append(f"- {name}: {values}")
  return ["", "Writer settings found in the maps:", *lines] if lines else []


def _setting_text(value) -> str:
  return value if isinstance(value, str) else json.dumps(value)


def write_plot(report: dict, path: str | pathlib.Path) -> None:
  """Recall per strategy (bars with 95% CIs) and Δbpb per strategy, as one PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  names = list(report["strategies"])
  series = (("seen EM", ("seen", "exact_match")), ("seen top-1 (secondary)", ("seen", "first_token_top1")),
            ("held-out EM", ("heldout", "exact_match")))
  fig, (ax_recall, ax_bpb) = plt.subplots(1, 2, figsize=(11, 4))
  width = 0.8 / len(series)
  x = np.arange(len(names))
  for i, (label, (split, flag)) in enumerate(series):
    metrics = [report["strategies"][n]["recall"][split][flag] for n in names]
    _bars(ax_recall, x + i * width, metrics, width, label)
  ax_recall.set_xticks(x + width * (len(series) - 1) / 2, names)
  ax_recall.set_ylim(0, 1.05)
  ax_recall.set_ylabel("rate")
  ax_recall.set_title("Recall per strategy (95% CI)")
  ax_recall.legend(fontsize=8)
  _bars(ax_bpb, x, [report["strategies"][n]["locality"]["delta_bpb"] for n in names], 0.6, "Δbpb")
  ax_bpb.set_xticks(x, names)
  ax_bpb.axhline(0.0, color="black", linewidth=0.5)
  ax_bpb.set_ylabel("bpb with map - bpb without")
  ax_bpb.set_title("Δbpb on validation text (95% CI)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _bars(ax, x, metrics, width, label) -> None:
  means = np.array([np.nan if m["mean"] is None else m["mean"] for m in metrics])
  # Rounding can put a percentile bound a hair past the mean; bar lengths cannot be negative.
  low = np.array([0.0 if m["ci95"] is None else max(0.0, m["mean"] - m["ci95"][0]) for m in metrics])
  high = np.array([0.0 if m["ci95"] is None else max(0.0, m["ci95"][1] - m["mean"]) for m in metrics])
  ax.bar(x, np.nan_to_num(means), width, yerr=[low, high], capsize=3, label=label)


def write_report(report: dict, out_dir: str | pathlib.Path) -> dict[str, pathlib.Path]:
  """Write report.json, report.md and recall.png into `out_dir`; return their paths."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {"json": out / "report.json", "markdown": out / "report.md", "plot": out / "recall.png"}
  paths["json"].write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
  write_plot(report, paths["plot"])
  paths["markdown"].write_text(format_markdown(report, paths["plot"].name))
  return paths


def write_predictions(seed_results: dict[str, list[dict]], path: pathlib.Path) -> None:
  """Write one JSON line per decoded probe, labelled with its strategy and seed."""
  with open(path, "w", encoding="utf-8") as f:
    for strategy, results in seed_results.items():
      for result in results:
        for record in result["probes"]:
          f.write(json.dumps({"strategy": strategy, "seed": result["seed"], **record}) + "\n")
