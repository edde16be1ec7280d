"""Override map files: one map per safetensors file.

Format "engram-jax-override-map/1" is a plain safetensors file:

  tensors
    rows    I32 [R]             global rows of the layer's table, strictly ascending
    values  F32 or BF16 [R, W]  values[i] replaces table row rows[i]; all finite
  metadata (the safetensors "__metadata__" header entry; every value is a string)
    format             "engram-jax-override-map/1"
    owner              user or organisation id
    layer              Engram block index as a decimal integer, e.g. "7"
    fact_keys          JSON list of strings
    strategy           writer name, e.g. "joint_opt"
    settings           JSON object of the writer's hyperparameters
    model_fingerprint  hex digest from maps.model_fingerprint()
    value_dtype        "float32" or "bfloat16", the dtype of `values`

Loading ignores other metadata keys and rejects other tensors. Any
safetensors reader opens the file: for example
`safetensors.flax.load_file(path)` for the tensors and
`safetensors.safe_open(path, framework="flax").metadata()` for the metadata.
safetensors.numpy (0.8) has no bfloat16, so it only reads F32 files.

Files are written to a temporary file in the target directory and renamed
over the target, so readers never see a partial file.

Saving over an existing file that contains the same map leaves it as it is.
"The same map" ignores the wall-clock timings of the settings' "write" entry
(TIMING_KEYS), so rerunning a deterministic writer does not need overwrite.
"""

import dataclasses
import json
import os
import pathlib
import re
import tempfile
from typing import Any

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy
from absl import logging

from engram_jax.memory.maps import (
    OverrideMap, check_fingerprint, check_rows, check_table_shape, check_values, value_dtype_name)

FORMAT = "engram-jax-override-map/1"
METADATA_KEYS = ("format", "owner", "layer", "fact_keys", "strategy", "settings",
                 "model_fingerprint", "value_dtype")
TENSOR_NAMES = ("rows", "values")
# safetensors dtype codes this module decodes; anything else is reported by its code.
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_DECIMAL = re.compile(r"^(0|[1-9][0-9]*)$")
_FILE_FIX = ("write the map again with `python -m launch.write_memory --overwrite` "
             "(engram_jax.memory.save_map(..., overwrite=True) in Python)")
_OVERWRITE_FIX = ("rerun `python -m launch.write_memory` with --overwrite (or with another "
                  "--maps_dir), or pass overwrite=True (or another path) to save_map() in Python")
# Keys of a map's settings["write"] entry that measure wall-clock time. They
# differ on every run, so they do not count when comparing a map with a file.
TIMING_KEYS = ("seconds", "compile_seconds")


class InvalidMapFileError(ValueError):
  """A file is not a valid override map file."""


def map_to_bytes(m: OverrideMap) -> bytes:
  """Serialise a map in the override map file format."""
  metadata = {
      "format": FORMAT,
      "owner": m.owner,
      "layer": str(m.layer),
      "fact_keys": json.dumps(list(m.fact_keys)),
      "strategy": m.strategy,
      "settings": json.dumps(m.settings, sort_keys=True, allow_nan=False),
      "model_fingerprint": m.model_fingerprint,
      "value_dtype": m.value_dtype,
  }
  tensors = {"rows": np.ascontiguousarray(m.rows), "values": np.ascontiguousarray(m.values)}
  return safetensors.numpy.save(tensors, metadata=metadata)


def save_map(path: str | os.PathLike, m: OverrideMap, *, overwrite: bool = False) -> pathlib.Path:
  """Write `m` to `path` atomically and return the path.

  An existing file that contains an equal map, apart from the TIMING_KEYS of
  settings["write"], is left as it is. Any other existing file raises
  FileExistsError, naming the fields that differ, unless `overwrite=True`.
  Missing parent directories are created.
  """
  if not isinstance(m, OverrideMap):
    raise TypeError(f"save_map() needs an OverrideMap; got {type(m).__name__}.")
  path = pathlib.Path(path)
  if path.is_dir():
    raise IsADirectoryError(f"{path} is a directory; pass a file path such as {path / 'map.safetensors'}.")
  if path.exists() and not overwrite:
    difference = _difference_from_file(path, m)
    if difference is None:
      logging.info("[memory] %s already contains this map (write timings aside); not rewritten", path)
      return path
    raise FileExistsError(f"{path} exists and {difference}; {_OVERWRITE_FIX}.")
  path.parent.mkdir(parents=True, exist_ok=True)
  _write_atomically(path, map_to_bytes(m))
  logging.info("[memory] wrote %s: owner %s, %d rows, %d bytes (%s)", path, m.owner, m.num_rows,
               m.storage_bytes(), m.value_dtype)
  return path


def _without_timings(settings: dict) -> dict:
  """Return `settings` without the TIMING_KEYS of its "write" entry."""
  record = settings.get("write")
  if not isinstance(record, dict):
    return settings
  return dict(settings, write={k: v for k, v in record.items() if k not in TIMING_KEYS})


def _difference_from_file(path: pathlib.Path, m: OverrideMap) -> str | None:
  """Describe how the map in `path` differs from `m`, or return None when they are equal.

  Rows and values compare bit-exact (dtype included), every other field
  exactly, and settings without the write timings.
  """
  try:
    stored = load_map(path)
  except (OSError, ValueError, TypeError) as error:
    return f"is not a readable override map ({error})"
  if dataclasses.replace(stored, settings=_without_timings(stored.settings)) == dataclasses.replace(
      m, settings=_without_timings(m.settings)):
    return None
  fields = [name for name in ("layer", "owner", "fact_keys", "strategy", "model_fingerprint")
            if getattr(stored, name) != getattr(m, name)]
  if stored.value_dtype != m.value_dtype:
    fields.append("value_dtype")
  if stored.rows.tobytes() != m.rows.tobytes():
    fields.append("rows")
  elif stored.value_dtype == m.value_dtype and (stored.values.shape != m.values.shape
                                                or stored.values.tobytes() != m.values.tobytes()):
    fields.append("values")
  old, new = _without_timings(stored.settings), _without_timings(m.settings)
  fields += [f"settings[{key!r}]" for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
  return f"contains a different map (differs in {', '.join(fields)})"


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
  handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(handle, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_name, path)
  except BaseException:
    if os.path.exists(tmp_name):
      os.remove(tmp_name)
    raise


def _read_file(path: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Return the tensors (decoded to numpy) and the metadata of a safetensors file."""
  if not path.is_file():
    raise FileNotFoundError(f"Override map file {path} not found; check the path, or write the map "
                            "with `python -m launch.write_memory`.")
  data = path.read_bytes()
  try:
    entries = safetensors.deserialize(data)
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
  except (safetensors.SafetensorError, ValueError) as error:
    raise InvalidMapFileError(f"{path} is not a safetensors file or is truncated ({error}); pass "
                              f"an override map file, or {_FILE_FIX}.") from error
  tensors = {}
  for name, entry in entries:
    if entry["dtype"] not in _SAFETENSORS_DTYPES:
      raise InvalidMapFileError(f"{path}: tensor {name!r} has dtype {entry['dtype']}, which no "
                                f"override map uses; {_FILE_FIX}.")
    dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
    tensors[name] = np.frombuffer(bytes(entry["data"]), dtype=dtype).reshape(entry["shape"])
  return tensors, header.get("__metadata__") or {}


def _json_field(metadata: dict[str, str], key: str, expected: type, where: str) -> Any:
  try:
    value = json.loads(metadata[key])
  except ValueError as error:
    raise InvalidMapFileError(f"{where}: metadata {key!r} is not valid JSON ({error}); {_FILE_FIX}.") from error
  if not isinstance(value, expected):
    raise InvalidMapFileError(f"{where}: metadata {key!r} must be a JSON {expected.__name__}; got "
                              f"{metadata[key]!r}; {_FILE_FIX}.")
  return value


def _parse_metadata(metadata: dict[str, str], where: str) -> dict[str, Any]:
  """Check the format tag and decode the metadata into OverrideMap fields (plus value_dtype)."""
  if metadata.get("format") != FORMAT:
    raise InvalidMapFileError(
        f"{where}: metadata 'format' is {metadata.get('format')!r}, expected {FORMAT!r}; the file is "
        f"not an override map of this version. Pass an override map file, or {_FILE_FIX}.")
  missing = [key for key in METADATA_KEYS if key not in metadata]
  if missing:
    raise InvalidMapFileError(f"{where}: metadata lacks {missing}; {_FILE_FIX}.")
  if not _DECIMAL.match(metadata["layer"]):
    raise InvalidMapFileError(f"{where}: metadata 'layer' is {metadata['layer']!r}; expected a "
                              f"non-negative decimal integer block index; {_FILE_FIX}.")
  try:
    value_dtype = value_dtype_name(metadata["value_dtype"])
  except ValueError as error:
    raise InvalidMapFileError(f"{where}: metadata 'value_dtype': {error} {_FILE_FIX}.") from error
  fact_keys = _json_field(metadata, "fact_keys", list, where)
  if not all(isinstance(key, str) for key in fact_keys):
    raise InvalidMapFileError(f"{where}: metadata 'fact_keys' must list strings; got "
                              f"{metadata['fact_keys']!r}; {_FILE_FIX}.")
  return {
      "layer": int(metadata["layer"]), "owner": metadata["owner"], "fact_keys": tuple(fact_keys),
      "strategy": metadata["strategy"], "settings": _json_field(metadata, "settings", dict, where),
      "model_fingerprint": metadata["model_fingerprint"], "value_dtype": value_dtype,
  }


def _check_tensors(tensors: dict[str, np.ndarray], value_dtype: str, where: str,
                   table_rows: int | None, row_width: int | None) -> None:
  names = sorted(tensors)
  if names != sorted(TENSOR_NAMES):
    raise InvalidMapFileError(f"{where}: the file contains tensors {names}; expected exactly "
                              f"{list(TENSOR_NAMES)}; {_FILE_FIX}.")
  rows, values = tensors["rows"], tensors["values"]
  try:
    check_rows(rows, where=where, fix=_FILE_FIX, table_rows=table_rows)
    check_values(values, rows.shape[0], where=where, fix=_FILE_FIX, row_width=row_width)
  except (TypeError, ValueError) as error:
    raise InvalidMapFileError(str(error)) from error
  if values.dtype.name != value_dtype:
    raise InvalidMapFileError(f"{where}: metadata 'value_dtype' is {value_dtype!r} but the values "
                              f"tensor has dtype {values.dtype.name}; {_FILE_FIX}.")


def load_map(path: str | os.PathLike, *, expected_fingerprint: str | None = None,
             table_rows: int | None = None, row_width: int | None = None) -> OverrideMap:
  """Read and validate an override map file.

  Args:
    path: the file.
    expected_fingerprint: model_fingerprint() of the model that will use the
      map; a different recorded fingerprint raises MapFingerprintError.
    table_rows: logical rows of the layer's table; rows at or above it raise.
    row_width: floats per table row; another value width raises.

  Raises:
    FileNotFoundError: `path` is not a file.
    InvalidMapFileError: the file is not a valid override map; the message
      names the file and the field.
    MapFingerprintError: the map was written for another model.
  """
  check_table_shape(table_rows, row_width)
  path = pathlib.Path(path)
  where = str(path)
  tensors, metadata = _read_file(path)
  fields = _parse_metadata(metadata, where)
  value_dtype = fields.pop("value_dtype")
  if expected_fingerprint is not None:
    check_fingerprint(fields["model_fingerprint"], expected_fingerprint, where)
  _check_tensors(tensors, value_dtype, where, table_rows, row_width)
  try:
    m = OverrideMap(rows=tensors["rows"], values=tensors["values"], **fields)
  except (TypeError, ValueError) as error:
    raise InvalidMapFileError(f"{where}: {error}") from error
  return m
