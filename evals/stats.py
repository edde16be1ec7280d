"""Confidence intervals for memory-evaluation metrics.

Proportions (top-1, exact match, leak rates) get Wilson score intervals over
their trials. Other statistics (Δbpb, storage, seconds, median rank) get a
percentile bootstrap. When items are grouped by user, the bootstrap resamples
whole users (a cluster bootstrap), because facts of one user share a map and
are not independent draws.
"""

from collections.abc import Callable, Mapping, Sequence
import math

import numpy as np

# Two-sided 95% normal quantile.
Z_95 = 1.959963984540054
DEFAULT_RESAMPLES = 2000


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
  """Return the Wilson score interval of `successes` out of `trials`.

  Raises ValueError for negative counts or more successes than trials. With
  zero trials the interval is undefined and ValueError is raised too.
  """
  if trials <= 0:
    raise ValueError(f"trials={trials}: a Wilson interval needs at least one trial.")
  if not 0 <= successes <= trials:
    raise ValueError(f"successes={successes} must lie in [0, trials={trials}].")
  p = successes / trials
  z2 = z * z
  denom = 1.0 + z2 / trials
  center = (p + z2 / (2 * trials)) / denom
  half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denom
  return max(0.0, center - half), min(1.0, center + half)


def bootstrap_interval(values: Sequence[float], *, statistic: Callable = np.mean,
                       resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                       confidence: float = 0.95) -> tuple[float, float]:
  """Return the percentile bootstrap interval of `statistic` over iid `values`."""
  values_N = np.asarray(values, dtype=np.float64)
  if values_N.ndim != 1 or values_N.size == 0:
    raise ValueError(f"values must be a non-empty 1-D sequence; got shape {values_N.shape}.")
  return bootstrap_grouped([values_N[i:i + 1] for i in range(values_N.size)], statistic=statistic,
                           resamples=resamples, seed=seed, confidence=confidence)


def bootstrap_grouped(groups: Sequence[Sequence[float]], *, statistic: Callable = np.mean,
                      resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                      confidence: float = 0.95) -> tuple[float, float]:
  """Return the cluster-bootstrap interval: whole groups are resampled with replacement.

  `statistic` is applied to the pooled items of each resample.
  """
  if not 0 < confidence < 1:
    raise ValueError(f"confidence={confidence} must lie in (0, 1).")
  if resamples < 1:
    raise ValueError(f"resamples={resamples} must be at least 1.")
  arrays = [np.asarray(g, dtype=np.float64).ravel() for g in groups]
  arrays = [a for a in arrays if a.size]
  if not arrays:
    raise ValueError("bootstrap needs at least one non-empty group.")
  rng = np.random.default_rng(seed)
  picks_RG = rng.integers(0, len(arrays), size=(resamples, len(arrays)))
  stats_R = np.array([statistic(np.concatenate([arrays[i] for i in picks])) for picks in picks_RG])
  alpha = (1.0 - confidence) / 2.0
  low, high = np.quantile(stats_R, [alpha, 1.0 - alpha])
  return float(low), float(high)


def proportion_summary(hits_by_group: Mapping[str, Sequence[bool]]) -> dict:
  """Summarise pass/fail trials: pooled rate with its Wilson interval.

  Returns {"mean", "ci95", "n", "ci_method"}. With no trials, mean and ci95 are
  None, because a rate of nothing is undefined.
  """
  hits = [bool(h) for group in hits_by_group.values() for h in group]
  if not hits:
    return {"mean": None, "ci95": None, "n": 0, "ci_method": "wilson"}
  successes = sum(hits)
  low, high = wilson_interval(successes, len(hits))
  return {"mean": successes / len(hits), "ci95": [low, high], "n": len(hits), "ci_method": "wilson"}


def value_summary(values_by_group: Mapping[str, Sequence[float]], *,
                  statistic: Callable = np.mean, seed: int = 0) -> dict:
  """Summarise a continuous metric: `statistic` over all items, bootstrap over groups.

  Groups are users. With one group the bootstrap falls back to the items
  themselves, since one cluster cannot be resampled. Returns {"mean", "ci95",
  "n", "ci_method"}; "mean" is the statistic (a median when one is passed).
  """
  groups = {k: [float(v) for v in vs] for k, vs in values_by_group.items() if len(vs)}
  items = [v for vs in groups.values() for v in vs]
  if not items:
    return {"mean": None, "ci95": None, "n": 0, "ci_method": "bootstrap"}
  center = float(statistic(np.asarray(items, dtype=np.float64)))
  if len(groups) > 1:
    low, high = bootstrap_grouped(list(groups.values()), statistic=statistic, seed=seed)
    method = "bootstrap over users"
  else:
    low, high = bootstrap_interval(items, statistic=statistic, seed=seed)
    method = "bootstrap over items"
  return {"mean": center, "ci95": [low, high], "n": len(items), "ci_method": method}
