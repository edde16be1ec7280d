"""Versioned tokenizer files: ranks, manifest, byte lengths and canonical map.

A tokenizer directory contains:

  tokenizer.tiktoken          ranks in tiktoken's format (`base64(token) rank` lines)
  tokenizer.json              manifest: format version, pattern, special ids,
                              library versions and the tokenizer fingerprint
  byte_lengths_<rule>.npy     int32 [V] byte lengths under `rule` ("raw", "reference")
  byte_lengths_<rule>.json    the rule and the tokenizer fingerprint
  canonical.npy               int32 [V] raw -> canonical ids
  canonical.json              V', pad id, tokenizer fingerprint, `tokenizers` version

Every derived file records the fingerprint of the tokenizer it was built from;
loading rejects a file whose fingerprint differs from the directory's tokenizer.
The ranks file is parsed here instead of with `tiktoken.load.load_tiktoken_bpe`,
because that function caches files by path under the temp directory and can
return a stale copy after the file at the same path changes.
"""

import base64
import binascii
import hashlib
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from absl import logging
import numpy as np
import tiktoken
import tokenizers

from engram_jax.tokenizer.bpe import BYTE_LENGTH_RULES
from engram_jax.tokenizer.bpe import ENCODING_NAME
from engram_jax.tokenizer.bpe import Tokenizer
from engram_jax.tokenizer.canonical import SPACE_SENTINEL
from engram_jax.tokenizer.canonical import CanonicalMap
from engram_jax.tokenizer.canonical import build_canonical_map

FORMAT_VERSION = 1
MANIFEST_FILE = "tokenizer.json"
RANKS_FILE = "tokenizer.tiktoken"
CANONICAL_FILE = "canonical.npy"
CANONICAL_META_FILE = "canonical.json"
_NORMALIZER_DESCRIPTION = "NFKC, NFD, StripAccents, Lowercase, Replace([ \\t\\r\\n]+ -> ' ')"
PathLike = str | os.PathLike
_FIX_BUNDLE = (
    "Restore the files, or rewrite the set from a Tokenizer with "
    "save_tokenizer_bundle(directory, tokenizer, overwrite=True)."
)


def ranks_to_tiktoken_text(ranks: Mapping[bytes, int]) -> bytes:
  """Serialise ranks in tiktoken's file format: one `base64(token) rank` line each."""
  lines = [
      base64.b64encode(token) + b" " + str(rank).encode() + b"\n"
      for token, rank in sorted(ranks.items(), key=lambda item: item[1])
  ]
  return b"".join(lines)


def compute_fingerprint(
    ranks: Mapping[bytes, int], pattern: str, special_ids: Mapping[str, int]
) -> str:
  """Return the sha256 hex digest identifying ranks, split pattern and special ids."""
  digest = hashlib.sha256(b"engram-bpe fingerprint v1\n")
  digest.update(pattern.encode("utf-8") + b"\n")
  for name, token_id in special_ids.items():
    digest.update(f"{token_id} {name}\n".encode("utf-8"))
  digest.update(ranks_to_tiktoken_text(ranks))
  return digest.hexdigest()


def _byte_length_paths(directory: pathlib.Path, rule: str) -> tuple[pathlib.Path, pathlib.Path]:
  return directory / f"byte_lengths_{rule}.npy", directory / f"byte_lengths_{rule}.json"


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
  """Write `data` to a temporary file and rename it, so readers never see half a file."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_bytes(data)
  os.replace(tmp, path)


def _write_json(path: pathlib.Path, obj: dict[str, Any]) -> None:
  _atomic_write(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def _write_npy(path: pathlib.Path, array: np.ndarray) -> None:
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    np.save(f, array, allow_pickle=False)
  os.replace(tmp, path)


def _require_file(path: pathlib.Path) -> None:
  if not path.parent.is_dir():
    raise FileNotFoundError(
        f"tokenizer directory {path.parent} does not exist; train a tokenizer with train_bpe(...) "
        "and write it with save_tokenizer_bundle(directory, tokenizer)."
    )
  if not path.is_file():
    raise FileNotFoundError(
        f"{path} is missing; write it with save_tokenizer_bundle(directory, tokenizer)."
    )


def _read_json(path: pathlib.Path, kind: str) -> dict[str, Any]:
  """Read a metadata file and check its format name and version."""
  _require_file(path)
  try:
    meta = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e}). {_FIX_BUNDLE}") from e
  if not isinstance(meta, dict) or meta.get("format") != kind:
    raise ValueError(f"{path} is not an engram-jax {kind} file. {_FIX_BUNDLE}")
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(
        f"{path} has format_version={meta.get('format_version')!r}; this version of engram-jax "
        f"reads format_version {FORMAT_VERSION}. {_FIX_BUNDLE}"
    )
  return meta


def _check_fingerprint(recorded: Any, tokenizer: Tokenizer, path: pathlib.Path, fix: str) -> None:
  if recorded != tokenizer.fingerprint:
    raise ValueError(
        f"{path} was built from tokenizer fingerprint {recorded}, but the tokenizer has "
        f"fingerprint {tokenizer.fingerprint}. Rebuild it with {fix}."
    )


def _load_npy(path: pathlib.Path, vocab_size: int) -> np.ndarray:
  _require_file(path)
  array = np.load(path, allow_pickle=False)
  if array.dtype != np.int32 or array.shape != (vocab_size,):
    raise ValueError(
        f"{path} contains {array.dtype} of shape {array.shape}, expected int32 of shape "
        f"({vocab_size},). {_FIX_BUNDLE}"
    )
  return array


def _check_no_other_tokenizer(directory: pathlib.Path, fingerprint: str, overwrite: bool) -> None:
  """Raise when `directory` contains a tokenizer with another fingerprint, unless `overwrite`."""
  manifest = directory / MANIFEST_FILE
  if not manifest.exists():
    return
  try:
    existing = json.loads(manifest.read_text(encoding="utf-8")).get("fingerprint")
  except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
    existing = "<unreadable manifest>"
  if existing == fingerprint:
    return
  if not overwrite:
    raise FileExistsError(
        f"{directory} already contains a different tokenizer (fingerprint {existing}, new one "
        f"{fingerprint}); write to another directory or pass overwrite=True to replace it."
    )
  logging.warning(
      "[tokenizer] replacing tokenizer %s in %s with %s; a canonical map built from the old "
      "tokenizer is rejected at load until it is rebuilt", existing, directory, fingerprint
  )


def _check_same_tokenizer(directory: pathlib.Path, fingerprint: str, kind: str) -> None:
  """Raise when `directory` contains a tokenizer other than the one a derived file comes from."""
  manifest = directory / MANIFEST_FILE
  if not manifest.exists():
    return
  recorded = _read_json(manifest, "tokenizer").get("fingerprint")
  if recorded != fingerprint:
    raise ValueError(
        f"{directory} contains tokenizer {recorded}, but the {kind} was built from "
        f"{fingerprint}; build the {kind} from that directory's tokenizer."
    )


def save_tokenizer(
    directory: PathLike, tokenizer: Tokenizer, *, overwrite: bool = False
) -> pathlib.Path:
  """Write the ranks file, the manifest and both byte-length files into `directory`.

  Raises FileExistsError when `directory` already contains a tokenizer with another
  fingerprint, unless `overwrite` is True. Returns the directory path.
  """
  directory = pathlib.Path(directory)
  _check_no_other_tokenizer(directory, tokenizer.fingerprint, overwrite)
  directory.mkdir(parents=True, exist_ok=True)
  _atomic_write(directory / RANKS_FILE, ranks_to_tiktoken_text(tokenizer.mergeable_ranks))
  _write_json(directory / MANIFEST_FILE, {
      "format": "tokenizer",
      "format_version": FORMAT_VERSION,
      "encoding_name": ENCODING_NAME,
      "fingerprint": tokenizer.fingerprint,
      "vocab_size": tokenizer.vocab_size,
      "num_ordinary": tokenizer.num_ordinary,
      "pattern": tokenizer.pattern,
      "special_tokens": [{"text": text, "id": i} for text, i in tokenizer.special_ids.items()],
      "ranks_file": RANKS_FILE,
      "tokenizers_version": tokenizers.__version__,
      "tiktoken_version": tiktoken.__version__,
      "training": tokenizer.training_info,
  })
  for rule in BYTE_LENGTH_RULES:
    save_byte_lengths(directory, tokenizer, rule)
  logging.info(
      "[tokenizer] saved V=%d fingerprint %s to %s",
      tokenizer.vocab_size, tokenizer.fingerprint, directory,
  )
  return directory


def _parse_ranks(path: pathlib.Path) -> dict[bytes, int]:
  _require_file(path)
  ranks: dict[bytes, int] = {}
  for line_number, line in enumerate(path.read_bytes().splitlines(), start=1):
    if not line.strip():
      continue
    try:
      encoded, rank = line.split()
      token = base64.b64decode(encoded, validate=True)
      ranks_value = int(rank)
    except (ValueError, binascii.Error) as e:
      raise ValueError(
          f"{path}:{line_number} is not a 'base64-token rank' line ({e}). {_FIX_BUNDLE}"
      ) from e
    if token in ranks:
      raise ValueError(f"{path}:{line_number} repeats token {token!r}. {_FIX_BUNDLE}")
    ranks[token] = ranks_value
  return ranks


def load_tokenizer(directory: PathLike) -> Tokenizer:
  """Read a tokenizer written by `save_tokenizer` and check it against its manifest."""
  directory = pathlib.Path(directory)
  manifest_path = directory / MANIFEST_FILE
  manifest = _read_json(manifest_path, "tokenizer")
  ranks = _parse_ranks(directory / RANKS_FILE)
  try:
    specials = manifest["special_tokens"]
    tokenizer = Tokenizer(
        ranks,
        pattern=manifest["pattern"],
        special_tokens=[entry["text"] for entry in specials],
        training_info=manifest.get("training"),
    )
    recorded_ids = {entry["text"]: entry["id"] for entry in specials}
  except (KeyError, TypeError) as e:
    raise ValueError(f"{manifest_path} lacks field {e} or has the wrong type. {_FIX_BUNDLE}") from e
  except ValueError as e:
    raise ValueError(f"{directory} contains an invalid tokenizer: {e} {_FIX_BUNDLE}") from e
  if recorded_ids != tokenizer.special_ids or manifest.get("vocab_size") != tokenizer.vocab_size:
    raise ValueError(
        f"{manifest_path}: special ids or vocab_size disagree with {RANKS_FILE}. {_FIX_BUNDLE}"
    )
  if manifest.get("fingerprint") != tokenizer.fingerprint:
    raise ValueError(
        f"{directory}: the manifest records fingerprint {manifest.get('fingerprint')}, but "
        f"{RANKS_FILE} with the manifest's pattern gives {tokenizer.fingerprint}, so the "
        f"files were edited or come from different tokenizers. {_FIX_BUNDLE}"
    )
  return tokenizer


def save_byte_lengths(directory: PathLike, tokenizer: Tokenizer, rule: str) -> None:
  """Write `tokenizer.byte_lengths(rule)` with its rule and tokenizer fingerprint."""
  directory = pathlib.Path(directory)
  _check_same_tokenizer(directory, tokenizer.fingerprint, "byte-length file")
  directory.mkdir(parents=True, exist_ok=True)
  lengths_V = tokenizer.byte_lengths(rule)
  npy_path, json_path = _byte_length_paths(directory, rule)
  _write_npy(npy_path, lengths_V)
  _write_json(json_path, {
      "format": "byte_lengths",
      "format_version": FORMAT_VERSION,
      "rule": rule,
      "tokenizer_fingerprint": tokenizer.fingerprint,
      "vocab_size": tokenizer.vocab_size,
  })


def load_byte_lengths(directory: PathLike, tokenizer: Tokenizer, rule: str = "raw") -> np.ndarray:
  """Read int32 [V] byte lengths under `rule`, checked against `tokenizer`."""
  if rule not in BYTE_LENGTH_RULES:
    raise ValueError(f"rule={rule!r} is not a byte-length rule; use one of {BYTE_LENGTH_RULES}.")
  npy_path, json_path = _byte_length_paths(pathlib.Path(directory), rule)
  meta = _read_json(json_path, "byte_lengths")
  fix = f"save_byte_lengths({str(directory)!r}, tokenizer, {rule!r})"
  _check_fingerprint(meta.get("tokenizer_fingerprint"), tokenizer, json_path, fix)
  if meta.get("rule") != rule:
    raise ValueError(
        f"{json_path} records rule {meta.get('rule')!r}, expected {rule!r}; rebuild it with {fix}."
    )
  lengths_V = _load_npy(npy_path, tokenizer.vocab_size)
  if not np.array_equal(lengths_V, tokenizer.byte_lengths(rule)):
    raise ValueError(
        f"{npy_path} differs from the {rule!r} byte lengths of the tokenizer; "
        f"rebuild it with {fix}."
    )
  return lengths_V


def save_canonical_map(directory: PathLike, canonical_map: CanonicalMap) -> None:
  """Write the map and its metadata. A tokenizer already in `directory` must be the map's."""
  directory = pathlib.Path(directory)
  _check_same_tokenizer(directory, canonical_map.fingerprint, "canonical map")
  directory.mkdir(parents=True, exist_ok=True)
  _write_npy(directory / CANONICAL_FILE, canonical_map.raw_to_canonical)
  _write_json(directory / CANONICAL_META_FILE, {
      "format": "canonical_map",
      "format_version": FORMAT_VERSION,
      "tokenizer_fingerprint": canonical_map.fingerprint,
      "vocab_size": canonical_map.vocab_size,
      "num_canonical": canonical_map.num_canonical,
      "pad_id": canonical_map.pad_id,
      "reference_pad": canonical_map.reference_pad,
      "tokenizers_version": canonical_map.tokenizers_version,
      "normalizer": _NORMALIZER_DESCRIPTION,
      "space_sentinel": f"U+{ord(SPACE_SENTINEL):04X}",
  })


def load_canonical_map(directory: PathLike, tokenizer: Tokenizer) -> CanonicalMap:
  """Read the canonical map in `directory`, checked against `tokenizer`."""
  directory = pathlib.Path(directory)
  meta_path = directory / CANONICAL_META_FILE
  meta = _read_json(meta_path, "canonical_map")
  fix = f"save_canonical_map({str(directory)!r}, build_canonical_map(tokenizer))"
  _check_fingerprint(meta.get("tokenizer_fingerprint"), tokenizer, meta_path, fix)
  table_V = _load_npy(directory / CANONICAL_FILE, tokenizer.vocab_size)
  if meta.get("tokenizers_version") != tokenizers.__version__:
    logging.info(
        "[tokenizer] %s was built with tokenizers %s, installed is %s; using the saved map",
        meta_path, meta.get("tokenizers_version"), tokenizers.__version__,
    )
  try:
    return CanonicalMap(
        raw_to_canonical=table_V,
        num_canonical=meta["num_canonical"],
        pad_id=meta["pad_id"],
        reference_pad=meta["reference_pad"],
        fingerprint=meta["tokenizer_fingerprint"],
        tokenizers_version=meta["tokenizers_version"],
    )
  except KeyError as e:
    raise ValueError(f"{meta_path} lacks field {e}; rebuild it with {fix}.") from e
  except ValueError as e:
    raise ValueError(f"{meta_path} describes an invalid map: {e} Rebuild it with {fix}.") from e


def save_tokenizer_bundle(
    directory: PathLike,
    tokenizer: Tokenizer,
    canonical_map: CanonicalMap | None = None,
    *,
    overwrite: bool = False,
) -> pathlib.Path:
  """Write the tokenizer, both byte-length files and the canonical map (built if None)."""
  if canonical_map is None:
    canonical_map = build_canonical_map(tokenizer)
  if canonical_map.fingerprint != tokenizer.fingerprint:
    raise ValueError(
        f"the canonical map was built from tokenizer {canonical_map.fingerprint}, not from "
        f"{tokenizer.fingerprint}; pass build_canonical_map(tokenizer) or None."
    )
  directory = save_tokenizer(directory, tokenizer, overwrite=overwrite)
  save_canonical_map(directory, canonical_map)
  return directory


def load_tokenizer_bundle(directory: PathLike) -> tuple[Tokenizer, CanonicalMap]:
  """Read the tokenizer and canonical map, and check every byte-length file present."""
  directory = pathlib.Path(directory)
  tokenizer = load_tokenizer(directory)
  canonical_map = load_canonical_map(directory, tokenizer)
  for rule in BYTE_LENGTH_RULES:
    if _byte_length_paths(directory, rule)[1].exists():
      load_byte_lengths(directory, tokenizer, rule)
  return tokenizer, canonical_map
