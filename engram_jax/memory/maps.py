"""Override maps: a user's memory as (global row, value) pairs of one Engram table.

A map is written for one Engram layer (the last one, where facts are stored)
of one model, identified by `model_fingerprint`. The shared table is never
written: `stack_overrides` turns the maps of a batch into the per-sequence
`RowOverrides` that the model swaps in at lookup time.

Composition is a pure function of an ordered list of maps, for example
[organisation map, user map]. The default rule, "last_wins", gives a row that
several maps write the value of the last map that writes it, so the user
overrides the organisation. The alternative rule "sum" adds the values. Maps
with disjoint rows commute under both rules.

Storage of every memory artefact is counted by `storage_bytes`:
R * (W * s_v + s_i) bytes, with R distinct rows, W floats per row, s_v bytes
per value (4 float32, 2 bfloat16) and s_i = 4 bytes per int32 row id.

The file format and `save_map` / `load_map` live in engram_jax.memory.map_files;
`compose`, `overlap` and `stack_overrides` in engram_jax.memory.composition.

Shape letters: R map rows, W row width, B batch, K override slots.
"""

import dataclasses
import hashlib
import json
from typing import Any, Sequence

import ml_dtypes
import numpy as np

from engram_jax.model.overrides import UNUSED_ROW

# Bytes per stored value for each dtype a map may hold.
VALUE_BYTES = {"float32": 4, "bfloat16": 2}
_VALUE_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
# Rows are stored as int32: every table has fewer than 2^31 rows.
ROW_ID_BYTES = 4
# UNUSED_ROW pads override slots, so no map may use it as a real row.
ROW_LIMIT = int(UNUSED_ROW)
DUPLICATE_RULES = ("error", "mean", "last")
COMPOSE_RULES = ("last_wins", "sum")
# Default override slots are rounded up to a multiple of this, so batches with
# slightly different map sizes reuse one compiled shape.
SLOT_MULTIPLE = 8
_MAKE_MAP_FIX = "build maps with make_map(), which sorts rows, merges duplicates and converts dtypes"


def value_dtype_name(dtype: Any) -> str:
  """Return "float32" or "bfloat16" for a dtype (or its name) that maps may store."""
  try:
    name = np.dtype(dtype).name
  except TypeError:
    name = str(dtype)
  if name not in _VALUE_DTYPES:
    raise ValueError(f"Value dtype {dtype!r} is not supported; use one of {sorted(_VALUE_DTYPES)}.")
  return name


def storage_bytes(num_rows: int, row_width: int, value_dtype: Any) -> int:
  """Return R * (W * s_v + s_i): the bytes one map needs, rows and values together."""
  for name, value, minimum in (("num_rows", num_rows, 0), ("row_width", row_width, 1)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise TypeError(f"{name}={value!r} must be an integer.")
    if value < minimum:
      raise ValueError(f"{name}={value} must be at least {minimum}.")
  s_v = VALUE_BYTES[value_dtype_name(value_dtype)]
  return int(num_rows) * (int(row_width) * s_v + ROW_ID_BYTES)


def model_fingerprint(cfg, tokenizer_fingerprint: str, layout) -> str:
  """Return the SHA-256 hex digest that ties a map to one model, tokenizer and table layout.

  It covers every field of the `model` and `engram` config sections (the
  sequence length and compute dtype included), the tokenizer fingerprint and
  `layout.fingerprint`. Pass the layout used for hashing, built with the
  canonical vocabulary size V'.
  """
  if not isinstance(tokenizer_fingerprint, str) or not tokenizer_fingerprint:
    raise ValueError(f"tokenizer_fingerprint={tokenizer_fingerprint!r} must be a non-empty string.")
  if layout is None:
    raise ValueError("layout is None: override maps need a model with Engram layers.")
  if tuple(cfg.engram.layer_ids) != tuple(layout.layer_ids):
    raise ValueError(
        f"layout.layer_ids={layout.layer_ids} differ from engram.layer_ids={tuple(cfg.engram.layer_ids)}; "
        "build the layout from this config.")
  payload = {
      "model": json.loads(cfg.model.to_json_best_effort()),
      "engram": json.loads(cfg.engram.to_json_best_effort()),
      "tokenizer": tokenizer_fingerprint,
      "layout": layout.fingerprint,
  }
  text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_rows(rows: Any, *, where: str, fix: str, table_rows: int | None = None) -> np.ndarray:
  """Raise unless `rows` is int32 [R], strictly ascending and inside [0, table_rows)."""
  if not isinstance(rows, np.ndarray) or rows.dtype != np.int32:
    raise TypeError(f"{where}: rows have dtype {getattr(rows, 'dtype', type(rows).__name__)}; "
                    f"expected int32. Fix: {fix}.")
  if rows.ndim != 1:
    raise ValueError(f"{where}: rows have shape {rows.shape}; expected one dimension [R]. Fix: {fix}.")
  limit = ROW_LIMIT if table_rows is None else table_rows
  bad = rows[(rows < 0) | (rows >= limit)]
  if bad.size:
    raise ValueError(f"{where}: rows {bad[:8].tolist()} lie outside the table rows [0, {limit}). "
                     f"Fix: {fix}.")
  steps = np.diff(rows)
  if np.any(steps < 0):
    i = int(np.argmax(steps < 0))
    raise ValueError(f"{where}: rows are not sorted ascending (row {rows[i]} at index {i} comes "
                     f"before row {rows[i + 1]}). Fix: {fix}.")
  if np.any(steps == 0):
    duplicated = np.unique(rows[1:][steps == 0])
    raise ValueError(f"{where}: rows {duplicated[:8].tolist()} are duplicated. Fix: {fix}.")
  return rows


def check_values(values: Any, num_rows: int, *, where: str, fix: str,
                 row_width: int | None = None) -> np.ndarray:
  """Raise unless `values` is a finite float32 or bfloat16 array [num_rows, W]."""
  dtype = getattr(values, "dtype", None)
  if not isinstance(values, np.ndarray) or dtype.name not in _VALUE_DTYPES:
    raise TypeError(f"{where}: values have dtype {dtype or type(values).__name__}; expected "
                    f"float32 or bfloat16. Fix: {fix}.")
  if values.ndim != 2:
    raise ValueError(f"{where}: values have shape {values.shape}; expected two dimensions "
                     f"[rows, row width]. Fix: {fix}.")
  if values.shape[0] != num_rows:
    raise ValueError(f"{where}: values have {values.shape[0]} rows but there are {num_rows} row ids. "
                     f"Fix: {fix}.")
  if values.shape[1] < 1 or (row_width is not None and values.shape[1] != row_width):
    expected = "at least 1" if row_width is None else str(row_width)
    raise ValueError(f"{where}: values have row width {values.shape[1]}; expected {expected}. "
                     f"Fix: {fix}.")
  bad = ~np.isfinite(values)
  if np.any(bad):
    raise ValueError(f"{where}: values contain {int(bad.sum())} NaN or infinite entries "
                     f"(first in row index {int(np.argmax(bad.any(axis=1)))}). Fix: {fix}.")
  return values


def _check_text(name: str, value: Any, where: str) -> str:
  if not isinstance(value, str) or not value:
    raise TypeError(f"{where}: {name}={value!r} must be a non-empty string.")
  return value


def _normalise_fact_keys(fact_keys: Any, where: str) -> tuple[str, ...]:
  if isinstance(fact_keys, str) or not isinstance(fact_keys, Sequence):
    raise TypeError(f"{where}: fact_keys={fact_keys!r} must be a list or tuple of strings.")
  if not all(isinstance(key, str) for key in fact_keys):
    raise TypeError(f"{where}: fact_keys={fact_keys!r} must contain only strings.")
  return tuple(fact_keys)


def _normalise_settings(settings: Any, where: str) -> dict:
  """Return a JSON round-tripped copy, so a loaded map equals the map that was saved."""
  if not isinstance(settings, dict):
    raise TypeError(f"{where}: settings must be a dict; got {type(settings).__name__}.")
  try:
    return json.loads(json.dumps(settings, sort_keys=True, allow_nan=False))
  except (TypeError, ValueError) as error:
    raise TypeError(f"{where}: settings must hold only JSON values (str keys, finite numbers, "
                    f"lists, dicts); {error}.") from error


def _read_only_copy(array: np.ndarray) -> np.ndarray:
  copy = np.array(array, copy=True)
  copy.flags.writeable = False
  return copy


@dataclasses.dataclass(frozen=True, eq=False)
class OverrideMap:
  """A set of (global row, value) pairs for one Engram table, with its provenance.

  The arrays are read-only copies. Equality is bit-exact on rows and values
  and exact on every other field.
  """

  layer: int  # Engram block index the rows belong to (the last Engram layer)
  rows: np.ndarray  # int32 [R], strictly ascending
  values: np.ndarray  # float32 or bfloat16 [R, W]
  owner: str  # user or organisation id
  fact_keys: tuple[str, ...]  # facts the map stores
  strategy: str  # writer that produced the values ("random", "unembed_p", "opt", "joint_opt", ...)
  settings: dict  # the writer's hyperparameters, JSON values only
  model_fingerprint: str  # model_fingerprint() of the model the map was written for

  def __post_init__(self):
    where = "OverrideMap"
    if isinstance(self.layer, bool) or not isinstance(self.layer, (int, np.integer)) or self.layer < 0:
      raise TypeError(f"{where}: layer={self.layer!r} must be a non-negative integer block index.")
    rows = check_rows(self.rows, where=where, fix=_MAKE_MAP_FIX)
    values = check_values(self.values, rows.size, where=where, fix=_MAKE_MAP_FIX)
    object.__setattr__(self, "layer", int(self.layer))
    object.__setattr__(self, "rows", _read_only_copy(rows))
    object.__setattr__(self, "values", _read_only_copy(values))
    object.__setattr__(self, "owner", _check_text("owner", self.owner, where))
    object.__setattr__(self, "fact_keys", _normalise_fact_keys(self.fact_keys, where))
    object.__setattr__(self, "strategy", _check_text("strategy", self.strategy, where))
    object.__setattr__(self, "settings", _normalise_settings(self.settings, where))
    object.__setattr__(self, "model_fingerprint",
                       _check_text("model_fingerprint", self.model_fingerprint, where))

  @property
  def num_rows(self) -> int:
    return int(self.rows.size)

  @property
  def row_width(self) -> int:
    return int(self.values.shape[1])

  @property
  def value_dtype(self) -> str:
    """Name of the stored value dtype: "float32" or "bfloat16"."""
    return self.values.dtype.name

  def storage_bytes(self) -> int:
    return storage_bytes(self.num_rows, self.row_width, self.value_dtype)

  def to_dtype(self, dtype: Any) -> "OverrideMap":
    """Return the map with values cast to float32 (exact) or bfloat16 (round to nearest even)."""
    name = value_dtype_name(dtype)
    if name == self.value_dtype:
      return self
    return dataclasses.replace(self, values=self.values.astype(_VALUE_DTYPES[name]))

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, OverrideMap):
      return NotImplemented
    scalars = ("layer", "owner", "fact_keys", "strategy", "settings", "model_fingerprint")
    return (all(getattr(self, name) == getattr(other, name) for name in scalars)
            and _bit_equal(self.rows, other.rows) and _bit_equal(self.values, other.values))


def _bit_equal(a: np.ndarray, b: np.ndarray) -> bool:
  return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


class MapFingerprintError(ValueError):
  """A map was written for another model, tokenizer or table layout."""


def check_fingerprint(recorded: str, expected: str, where: str) -> None:
  """Raise MapFingerprintError, naming both fingerprints, unless they are equal."""
  if recorded != expected:
    raise MapFingerprintError(
        f"{where}: this map was written for another model/tokenizer/table layout (map fingerprint "
        f"{recorded}, current model {expected}). Use the model the map was written for, or write "
        "the memory again for this model.")


def check_table_shape(table_rows: Any, row_width: Any) -> None:
  """Raise TypeError unless each of `table_rows` and `row_width` is None or a positive integer."""
  for name, value in (("table_rows", table_rows), ("row_width", row_width)):
    if value is None:
      continue
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise TypeError(f"{name}={value!r} must be a positive integer for the map's layer "
                      "(for table_rows: layout.table_rows[layout.layer_ids.index(map.layer)]).")


def check_map_fits(m: OverrideMap, *, expected_fingerprint: str | None = None,
                   table_rows: int | None = None, row_width: int | None = None,
                   where: str = "override map") -> None:
  """Raise unless `m` was written for this model and fits its table."""
  check_table_shape(table_rows, row_width)
  if expected_fingerprint is not None:
    check_fingerprint(m.model_fingerprint, expected_fingerprint, where)
  if table_rows is not None:
    check_rows(m.rows, where=where, table_rows=table_rows,
               fix="the map belongs to a larger table; use the model it was written for")
  if row_width is not None and m.row_width != row_width:
    raise ValueError(f"{where}: values have row width {m.row_width}, but the table rows hold "
                     f"{row_width} floats; use the model the map was written for.")


def _row_ids(rows: Any) -> np.ndarray:
  """Convert integer row ids to int32 [R], rejecting values that int32 cannot hold."""
  rows = np.asarray(rows)
  if rows.dtype == np.bool_ or not np.issubdtype(rows.dtype, np.integer):
    raise TypeError(f"rows have dtype {rows.dtype}; expected integer global row ids.")
  if rows.ndim != 1:
    raise ValueError(f"rows have shape {rows.shape}; expected one dimension [R].")
  wide = rows.astype(np.int64)
  bad = wide[(wide < 0) | (wide >= ROW_LIMIT)]
  if bad.size:
    raise ValueError(f"rows {bad[:8].tolist()} lie outside [0, {ROW_LIMIT}); global rows are "
                     "non-negative int32 values below the int32 maximum, which pads override slots.")
  return wide.astype(np.int32)


def _float_values(values: Any) -> np.ndarray:
  """Keep float32 and bfloat16 values; convert other float dtypes to float32."""
  values = np.asarray(values)
  if values.dtype.name in _VALUE_DTYPES:
    return values
  if not np.issubdtype(values.dtype, np.floating):
    raise TypeError(f"values have dtype {values.dtype}; expected a float dtype "
                    "(float32 and bfloat16 are stored as given, others become float32).")
  return values.astype(np.float32)


def merge_sorted_rows(rows_R: np.ndarray, values_RW: np.ndarray,
                      rule: str) -> tuple[np.ndarray, np.ndarray]:
  """Merge equal neighbours of stably sorted rows into one row each.

  Rule "error" raises naming the duplicated rows. Rule "last" keeps the value
  that came last in input order. Rules "mean" and "sum" average or add the
  values in float32 and cast the result back to the value dtype.
  """
  if rows_R.size == 0:
    return rows_R, values_RW
  starts = np.flatnonzero(np.concatenate([[True], rows_R[1:] != rows_R[:-1]]))
  if starts.size == rows_R.size:
    return rows_R, values_RW
  counts = np.diff(np.append(starts, rows_R.size))
  if rule == "error":
    duplicated = rows_R[starts[counts > 1]]
    raise ValueError(
        f"rows {duplicated[:8].tolist()} occur more than once ({duplicated.size} duplicated rows); "
        "pass duplicate_rule='mean' or 'last' to merge them.")
  if rule == "last":
    return rows_R[starts], values_RW[starts + counts - 1]
  if rule not in ("mean", "sum"):
    raise ValueError(f"Unknown merge rule {rule!r}; use 'error', 'last', 'mean' or 'sum'.")
  merged = np.add.reduceat(values_RW.astype(np.float32), starts, axis=0)
  if rule == "mean":
    merged = merged / counts[:, None].astype(np.float32)
  return rows_R[starts], merged.astype(values_RW.dtype)


def make_map(layer: int, rows: Any, values: Any, *, owner: str, fact_keys: Sequence[str],
             strategy: str, settings: dict, model_fingerprint: str,  # pylint: disable=redefined-outer-name
             duplicate_rule: str = "error") -> OverrideMap:
  """Build a map from rows in any order, merging duplicated rows by `duplicate_rule`.

  `duplicate_rule`: "error" (default) raises naming the duplicated rows,
  "mean" averages their values and "last" keeps the value given last.
  Values may be any float array. Float32 and bfloat16 values are kept as
  given, and other float dtypes are converted to float32.
  """
  if duplicate_rule not in DUPLICATE_RULES:
    raise ValueError(f"duplicate_rule={duplicate_rule!r} is not one of {DUPLICATE_RULES}.")
  rows_R = _row_ids(rows)
  values_RW = _float_values(values)
  if values_RW.ndim != 2 or values_RW.shape[0] != rows_R.size:
    raise ValueError(f"values have shape {values_RW.shape}; expected [{rows_R.size}, row width], "
                     "one value row per row id.")
  order = np.argsort(rows_R, kind="stable")
  rows_R, values_RW = merge_sorted_rows(rows_R[order], values_RW[order], duplicate_rule)
  return OverrideMap(
      layer=layer, rows=rows_R, values=values_RW, owner=owner, fact_keys=fact_keys,
      strategy=strategy, settings=settings, model_fingerprint=model_fingerprint)
