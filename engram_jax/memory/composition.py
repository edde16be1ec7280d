"""Composition, overlap and batching of override maps.

`compose` is a pure function of an ordered list of maps and never reads a
table. Under the default rule "last_wins" a row that several maps write takes
the value of the last map in the list, so [organisation map, user map] lets
the user win a shared row. Under "sum" the values of a shared row are added.
Rows that only one map writes keep that map's value under both rules, so maps
with disjoint rows commute.

`stack_overrides` turns one entry per batch sequence into the model's
per-sequence `RowOverrides`, so users with different memories share one
forward pass.

Shape letters: R map rows, W row width, B batch, K override slots.
"""

import dataclasses
import itertools
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from engram_jax.memory.maps import (
    COMPOSE_RULES, SLOT_MULTIPLE, OverrideMap, merge_sorted_rows)
from engram_jax.model.overrides import UNUSED_ROW, RowOverrides


@dataclasses.dataclass(frozen=True)
class PairOverlap:
  """Row overlap of maps `first` and `second` (indices into the composed list)."""

  first: int
  second: int
  shared_rows: int
  union_rows: int
  intersection_over_union: float  # 0.0 when both maps are empty
  intersection_over_smaller: float  # 0.0 when either map is empty


@dataclasses.dataclass(frozen=True)
class CompositionReport:
  """Summary of one composition: row counts and the overlap of every pair of input maps."""

  rule: str
  part_rows: tuple[int, ...]  # distinct rows of each input map, in list order
  composed_rows: int  # distinct rows of the composed map
  contested_rows: int  # distinct rows written by two or more maps, whose value the rule decided
  pairs: tuple[PairOverlap, ...]  # every pair (i, j) with i < j

  @property
  def mean_intersection_over_smaller(self) -> float:
    """Mean pairwise intersection over the smaller set; 0.0 with fewer than two maps."""
    if not self.pairs:
      return 0.0
    return float(np.mean([pair.intersection_over_smaller for pair in self.pairs]))


def _check_same_target(maps: Sequence[OverrideMap], action: str, *, check_width: bool = True,
                       labels: Sequence[str] | None = None) -> None:
  """Raise ValueError unless all maps share the first map's layer, fingerprint and width."""
  labels = labels or [f"map {i}" for i in range(len(maps))]
  fields = ("layer", "model_fingerprint") + (("row_width",) if check_width else ())
  first = maps[0]
  for label, m in zip(labels[1:], maps[1:]):
    for field in fields:
      if getattr(m, field) != getattr(first, field):
        raise ValueError(
            f"Cannot {action} {label} (owner {m.owner!r}, {field}={getattr(m, field)!r}) with "
            f"{labels[0]} (owner {first.owner!r}, {field}={getattr(first, field)!r}); only maps "
            "written for the same model, Engram layer and row width can be combined.")


def _overlap_counts(rows_a: np.ndarray, rows_b: np.ndarray) -> dict:
  shared = int(np.intersect1d(rows_a, rows_b, assume_unique=True).size)
  union = int(rows_a.size + rows_b.size - shared)
  smaller = int(min(rows_a.size, rows_b.size))
  return {
      "shared_rows": shared,
      "union_rows": union,
      "intersection_over_union": shared / union if union else 0.0,
      "intersection_over_smaller": shared / smaller if smaller else 0.0,
  }


def overlap(a: OverrideMap, b: OverrideMap) -> dict:
  """Return shared_rows, union_rows, intersection_over_union and intersection_over_smaller.

  Both ratios are 0.0 when their denominator is 0. The maps must target the
  same layer of the same model.
  """
  for name, m in (("a", a), ("b", b)):
    if not isinstance(m, OverrideMap):
      raise TypeError(f"{name} must be an OverrideMap; got {type(m).__name__}.")
  _check_same_target([a, b], "compare", check_width=False)
  return _overlap_counts(a.rows, b.rows)


def _as_map_list(maps: Any) -> list[OverrideMap]:
  if isinstance(maps, OverrideMap) or not isinstance(maps, Sequence):
    raise TypeError(f"maps must be a list or tuple of OverrideMap; got {type(maps).__name__}.")
  for i, m in enumerate(maps):
    if not isinstance(m, OverrideMap):
      raise TypeError(f"maps[{i}] is a {type(m).__name__}; expected an OverrideMap.")
  if not maps:
    raise ValueError("compose() needs at least one map; an empty list has no layer or row width.")
  return list(maps)


def _part_record(m: OverrideMap) -> dict:
  return {"owner": m.owner, "strategy": m.strategy, "settings": m.settings,
          "fact_keys": list(m.fact_keys), "num_rows": m.num_rows}


def _report(maps: list[OverrideMap], sorted_rows: np.ndarray, composed: OverrideMap,
            rule: str) -> CompositionReport:
  _, counts = np.unique(sorted_rows, return_counts=True)
  pairs = tuple(
      PairOverlap(first=i, second=j, **_overlap_counts(maps[i].rows, maps[j].rows))
      for i, j in itertools.combinations(range(len(maps)), 2))
  return CompositionReport(
      rule=rule, part_rows=tuple(m.num_rows for m in maps), composed_rows=composed.num_rows,
      contested_rows=int(np.sum(counts > 1)), pairs=pairs)


def compose(maps: Sequence[OverrideMap],
            rule: str = "last_wins") -> tuple[OverrideMap, CompositionReport]:
  """Merge an ordered list of maps into one map; a pure function of the list.

  rule "last_wins" (default): a shared row takes the value of the last map
  that writes it. rule "sum": a shared row takes the float32 sum of all values
  written to it. Values keep their dtype when all maps share it and become
  float32 otherwise. The composed map's owner joins the owners with "+", its
  fact_keys concatenate the parts' keys (first occurrence kept), its strategy
  is "composed" and its settings record the rule and every part.
  """
  maps = _as_map_list(maps)
  if rule not in COMPOSE_RULES:
    raise ValueError(f"rule={rule!r} is not one of {COMPOSE_RULES}.")
  _check_same_target(maps, "compose")
  dtypes = {m.values.dtype for m in maps}
  dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)
  rows_R = np.concatenate([m.rows for m in maps])
  values_RW = np.concatenate([m.values.astype(dtype) for m in maps])
  # A stable sort keeps equal rows in list order, so "last" picks the latest map.
  order = np.argsort(rows_R, kind="stable")
  sorted_rows = rows_R[order]
  merged_rows, merged_values = merge_sorted_rows(
      sorted_rows, values_RW[order], "last" if rule == "last_wins" else "sum")
  composed = OverrideMap(
      layer=maps[0].layer, rows=merged_rows, values=merged_values,
      owner="+".join(m.owner for m in maps),
      fact_keys=tuple(dict.fromkeys(itertools.chain.from_iterable(m.fact_keys for m in maps))),
      strategy="composed", settings={"rule": rule, "parts": [_part_record(m) for m in maps]},
      model_fingerprint=maps[0].model_fingerprint)
  return composed, _report(maps, sorted_rows, composed, rule)


def _resolve_entry(entry: Any, sequence: int) -> OverrideMap | None:
  """Return the one map of a batch entry: None, a map, or a list composed with last_wins."""
  if entry is None or isinstance(entry, OverrideMap):
    return entry
  if isinstance(entry, (list, tuple)):
    for i, m in enumerate(entry):
      if not isinstance(m, OverrideMap):
        raise TypeError(f"per_sequence[{sequence}][{i}] is a {type(m).__name__}; expected an OverrideMap.")
    return compose(entry)[0] if entry else None
  raise TypeError(f"per_sequence[{sequence}] is a {type(entry).__name__}; expected None, an "
                  "OverrideMap or a list of OverrideMap.")


def _slot_count(maps: list[OverrideMap | None], slots: int | None) -> int:
  sizes = [0 if m is None else m.num_rows for m in maps]
  needed = max(sizes)
  if slots is None:
    return max(SLOT_MULTIPLE, -(-needed // SLOT_MULTIPLE) * SLOT_MULTIPLE)
  if isinstance(slots, bool) or not isinstance(slots, (int, np.integer)) or slots < 0:
    raise ValueError(f"slots={slots!r} must be a non-negative integer or None.")
  if slots < needed:
    raise ValueError(f"slots={slots} is smaller than the {needed} rows of sequence "
                     f"{sizes.index(needed)}; raise slots to at least {needed} or pass None.")
  return int(slots)


def stack_overrides(per_sequence: Sequence[OverrideMap | Sequence[OverrideMap] | None], *,
                    slots: int | None = None, row_width: int | None = None) -> RowOverrides:
  """Build the model's per-sequence RowOverrides from one entry per batch sequence.

  An entry is None (no memory), a map, or an ordered list of maps composed
  with the "last_wins" rule. Rows are padded with UNUSED_ROW and values with 0
  up to `slots`, which defaults to the largest row count rounded up to a
  multiple of SLOT_MULTIPLE (at least SLOT_MULTIPLE), to limit recompiles.
  All maps must target the same layer, model and row width. `row_width` is
  required when every entry is None. Pass the result to the model as
  `overrides={m.layer: result}`.

  Returns:
    RowOverrides with int32 rows [B, K] and float32 values [B, K, W].
  """
  if isinstance(per_sequence, OverrideMap) or not isinstance(per_sequence, Sequence):
    raise TypeError("per_sequence must be a list with one entry per batch sequence; got a "
                    f"{type(per_sequence).__name__}.")
  if not per_sequence:
    raise ValueError("per_sequence is empty; pass one entry (None, a map or a list) per sequence.")
  maps = [_resolve_entry(entry, b) for b, entry in enumerate(per_sequence)]
  present = [m for m in maps if m is not None]
  if present:
    labels = [f"per_sequence[{b}]" for b, m in enumerate(maps) if m is not None]
    _check_same_target(present, "batch", labels=labels)
  width = present[0].row_width if present else row_width
  if width is None:
    raise ValueError("Every entry is None, so the row width is unknown; pass row_width.")
  if row_width is not None and width != row_width:
    raise ValueError(f"The maps have row width {width}, but row_width={row_width} was passed.")
  num_slots = _slot_count(maps, slots)

  rows_BK = np.full((len(maps), num_slots), UNUSED_ROW, np.int32)
  values_BKW = np.zeros((len(maps), num_slots, width), np.float32)
  for b, m in enumerate(maps):
    if m is not None:
      rows_BK[b, :m.num_rows] = m.rows
      values_BKW[b, :m.num_rows] = m.values  # bfloat16 to float32 is exact
  return RowOverrides(jnp.asarray(rows_BK), jnp.asarray(values_BKW))
