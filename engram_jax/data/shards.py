"""On-disk token shards with a fixed validation split.

A data directory contains, per split ("train", "val"), shards named
`{split}_{i:05d}` stored as two .npy files:

  {name}.tokens.npy    uint16 (vocab <= 65536) or uint32 [N]: the BOS-prepended
                       token ids of the shard's documents, concatenated
  {name}.offsets.npy   int64 [num_docs + 1]: start offset of each document in
                       the tokens array; the last entry equals N

plus `manifest.json`, written last, which records the tokenizer fingerprint,
the vocabulary size, the BOS id, the shards and counts of each split, the
source description and the validation rule. A document never spans two shards.
While shards are being written the directory contains `incomplete.json`
instead of a manifest, so a crashed run is never mistaken for a finished one.
"""

import hashlib
import json
import os
import pathlib
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from absl import logging
import numpy as np

FORMAT = "engram-token-shards/1"
MANIFEST_FILE = "manifest.json"
INCOMPLETE_FILE = "incomplete.json"
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 1 << 25  # 32 Mi tokens, 64 MiB per uint16 shard
_ENCODE_BATCH_DOCS = 128
_LOG_EVERY_S = 10.0
_SHARD_FILE = re.compile(r"^(train|val)_\d{5}\.(tokens|offsets)\.npy(\.tmp)?$")
_IDENTITY_KEYS = ("tokenizer_fingerprint", "vocab_size", "sources", "val_rule")
_RERUN = "rerun `python -m launch.prepare_data` to rebuild it"
PathLike = str | os.PathLike


def check_val_permille(val_permille: Any) -> int:
  """Return `val_permille` if it leaves both splits a chance of documents, else raise."""
  if isinstance(val_permille, bool) or not isinstance(val_permille, int) or not 1 <= val_permille <= 999:
    raise ValueError(f"data.val_permille={val_permille!r} must be an int in [1, 999], e.g. 20 for 2%.")
  return val_permille


def val_rule(val_permille: int) -> str:
  """Describe the hash split in words, as recorded in the manifest."""
  check_val_permille(val_permille)
  return f"val iff int(sha256(utf8(text)).hexdigest()[:8], 16) % 1000 < {val_permille}"


def hash_split(text: str, val_permille: int) -> str:
  """Return "val" or "train" for a document, from its content alone.

  The same text always lands in the same split, whatever the source, order or
  run. Lone surrogates are hashed with surrogatepass, so this never raises; the
  tokenizer rejects such text later with its own message.
  """
  digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
  return "val" if int(digest[:8], 16) % 1000 < val_permille else "train"


def make_hash_split(val_permille: int) -> Callable[[str], str]:
  check_val_permille(val_permille)
  return lambda text: hash_split(text, val_permille)


def token_dtype(vocab_size: int) -> np.dtype:
  """Return the narrowest unsigned dtype that stores every id below `vocab_size`."""
  if vocab_size < 1 or vocab_size > 1 << 32:
    raise ValueError(f"vocab_size={vocab_size} must be in [1, 2**32] to store ids as uint16/uint32.")
  return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _atomic_save(path: pathlib.Path, array: np.ndarray) -> None:
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    np.save(f, array, allow_pickle=False)
  os.replace(tmp, path)


def _atomic_json(path: pathlib.Path, obj: dict[str, Any]) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
  os.replace(tmp, path)


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  try:
    obj = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e}); delete the directory and {_RERUN}.") from e
  if not isinstance(obj, dict):
    raise ValueError(f"{path} does not contain a JSON object; delete the directory and {_RERUN}.")
  return obj


def data_identity(tokenizer: Any, sources: Sequence[dict[str, Any]], val_rule_text: str) -> dict[str, Any]:
  """The manifest fields that must match before a data directory is reused or replaced."""
  return {
      "tokenizer_fingerprint": tokenizer.fingerprint,
      "vocab_size": tokenizer.vocab_size,
      "sources": json.loads(json.dumps(list(sources))),  # JSON-normalised, to compare with files
      "val_rule": val_rule_text,
  }


def identity_differences(recorded: dict[str, Any], identity: dict[str, Any]) -> list[str]:
  """Return the identity fields (tokenizer, sources, split rule) that differ."""
  return [key for key in _IDENTITY_KEYS if recorded.get(key) != identity.get(key)]


def _claim_dir(out_dir: pathlib.Path, identity: dict[str, Any], overwrite: bool) -> None:
  """Check that `out_dir` may be (re)written, clear old shards and mark it incomplete."""
  out_dir.mkdir(parents=True, exist_ok=True)
  for marker in (MANIFEST_FILE, INCOMPLETE_FILE):
    path = out_dir / marker
    if not path.exists():
      continue
    different = identity_differences(_read_json(path), identity)
    if different and not overwrite:
      raise FileExistsError(
          f"{out_dir} contains token shards built with a different {', '.join(different)}; "
          "write to a new data directory (data.dir) or pass --overwrite to replace them."
      )
    if different:
      logging.warning("[data] overwriting %s, built with a different %s", out_dir, ", ".join(different))
  foreign = sorted(
      p.name for p in out_dir.iterdir()
      if p.name not in (MANIFEST_FILE, INCOMPLETE_FILE) and not _SHARD_FILE.match(p.name)
  )
  if foreign:
    raise FileExistsError(
        f"{out_dir} contains files that are not token shards ({', '.join(foreign[:5])}); "
        "point data.dir at an empty or new directory."
    )
  (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
  for path in out_dir.iterdir():
    if _SHARD_FILE.match(path.name):
      path.unlink()
  _atomic_json(out_dir / INCOMPLETE_FILE, identity)


class _SplitWriter:
  """Buffer one split's tokenised documents and write a shard per `shard_tokens`."""

  def __init__(self, out_dir: pathlib.Path, split: str, dtype: np.dtype, shard_tokens: int):
    self.out_dir, self.split, self.dtype, self.shard_tokens = out_dir, split, dtype, shard_tokens
    self.shards: list[str] = []
    self.documents = self.tokens = self.text_bytes = 0
    self._pending: list[np.ndarray] = []
    self._pending_tokens = 0

  def add(self, ids: list[int], text_bytes: int) -> None:
    self._pending.append(np.asarray(ids, dtype=self.dtype))
    self._pending_tokens += len(ids)
    self.documents += 1
    self.tokens += len(ids)
    self.text_bytes += text_bytes
    if self._pending_tokens >= self.shard_tokens:
      self.flush()

  def flush(self) -> None:
    if not self._pending:
      return
    lengths = np.array([ids.size for ids in self._pending], dtype=np.int64)
    offsets = np.zeros(len(self._pending) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate(self._pending)
    name = f"{self.split}_{len(self.shards):05d}"
    _atomic_save(self.out_dir / f"{name}.tokens.npy", tokens)
    _atomic_save(self.out_dir / f"{name}.offsets.npy", offsets)
    self.shards.append(name)
    self._pending, self._pending_tokens = [], 0

  def summary(self) -> dict[str, Any]:
    return {
        "shards": list(self.shards),
        "documents": self.documents,
        "tokens": self.tokens,
        "text_bytes": self.text_bytes,
    }


def _labelled_batches(
    documents: Iterable[Any], split_fn: Callable[[str], str] | None
) -> Iterator[list[tuple[str, str]]]:
  """Yield lists of (split, text), at most `_ENCODE_BATCH_DOCS` long."""
  batch = []
  for index, item in enumerate(documents):
    if split_fn is None:
      if not (isinstance(item, tuple) and len(item) == 2):
        raise TypeError(
            f"document {index} is a {type(item).__name__}; without split_fn each item must be a "
            "(split, text) pair. Pass split_fn to split plain strings by content hash."
        )
      split, text = item
    else:
      text = item
      split = split_fn(text) if isinstance(text, str) else None
    if not isinstance(text, str):
      raise TypeError(f"document {index} is a {type(text).__name__}, expected str.")
    if split not in SPLITS:
      raise ValueError(f"document {index} has split {split!r}; use one of {SPLITS}.")
    batch.append((split, text))
    if len(batch) == _ENCODE_BATCH_DOCS:
      yield batch
      batch = []
  if batch:
    yield batch


def _log_progress(writers: dict[str, _SplitWriter], start: float, final: bool = False) -> None:
  documents = sum(w.documents for w in writers.values())
  tokens = sum(w.tokens for w in writers.values())
  megabytes = sum(w.text_bytes for w in writers.values()) / 1e6
  seconds = time.perf_counter() - start
  logging.info(
      "[data] %s%d documents, %d tokens, %.1f MB text in %.0fs (%.2f MB/s)",
      "done: " if final else "", documents, tokens, megabytes, seconds, megabytes / max(seconds, 1e-9),
  )


def write_shards(
    documents: Iterable[Any],
    tokenizer: Any,
    out_dir: PathLike,
    *,
    split_fn: Callable[[str], str] | None,
    sources: Sequence[dict[str, Any]] = (),
    val_rule_text: str = "",
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    overwrite: bool = False,
) -> dict[str, Any]:
  """Tokenise `documents` with BOS prepended and write train/val shards and the manifest.

  `documents` yields str, split by `split_fn(text)`, or (split, text) pairs when
  `split_fn` is None. Raises FileExistsError when `out_dir` contains shards of
  another tokenizer, source list or split rule, unless `overwrite`, and
  ValueError when a split gets no documents. Returns the manifest.
  """
  if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1:
    raise ValueError(f"shard_tokens={shard_tokens!r} must be a positive int.")
  out_dir = pathlib.Path(out_dir)
  identity = data_identity(tokenizer, sources, val_rule_text)
  _claim_dir(out_dir, identity, overwrite)
  dtype = token_dtype(tokenizer.vocab_size)
  writers = {split: _SplitWriter(out_dir, split, dtype, shard_tokens) for split in SPLITS}
  start = last_log = time.perf_counter()
  for batch in _labelled_batches(documents, split_fn):
    encoded = tokenizer.encode_batch([text for _, text in batch], prepend_bos=True)
    for (split, text), ids in zip(batch, encoded):
      writers[split].add(ids, len(text.encode("utf-8")))
    if time.perf_counter() - last_log >= _LOG_EVERY_S:
      _log_progress(writers, start)
      last_log = time.perf_counter()
  for writer in writers.values():
    writer.flush()
  _log_progress(writers, start, final=True)
  empty = [split for split, writer in writers.items() if writer.documents == 0]
  if empty:
    raise ValueError(
        f"no documents fell in split {empty[0]!r} of {out_dir}, so it has no manifest; add "
        "documents or change the split (data.val_permille, or the hub val shard)."
    )
  manifest = {
      "format": FORMAT,
      **identity,
      "bos_id": tokenizer.bos_id,
      "dtype": dtype.name,
      "splits": {split: writer.summary() for split, writer in writers.items()},
  }
  _atomic_json(out_dir / MANIFEST_FILE, manifest)
  (out_dir / INCOMPLETE_FILE).unlink()
  return manifest


def load_manifest(data_dir: PathLike) -> dict[str, Any]:
  """Read and check `manifest.json` of a finished data directory."""
  data_dir = pathlib.Path(data_dir)
  path = data_dir / MANIFEST_FILE
  if not path.is_file():
    if (data_dir / INCOMPLETE_FILE).exists():
      state = "was left half-written by an interrupted run"
    elif data_dir.is_dir():
      state = "has no token shards"
    else:
      state = "does not exist"
    raise FileNotFoundError(f"data directory {data_dir} {state}; {_RERUN}.")
  manifest = _read_json(path)
  if manifest.get("format") != FORMAT:
    raise ValueError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}; {_RERUN}.")
  splits = manifest.get("splits")
  if not isinstance(splits, dict) or any(
      not isinstance(splits.get(s), dict) or not isinstance(splits[s].get("shards"), list) for s in SPLITS
  ):
    raise ValueError(f"{path} lacks a shard list for each of {SPLITS}; {_RERUN}.")
  return manifest


def _corrupt(path: pathlib.Path, problem: str) -> ValueError:
  return ValueError(f"{path} {problem}: the shard is corrupt or half-written; {_RERUN}.")


def _load_npy(path: pathlib.Path, mmap: bool) -> np.ndarray:
  if not path.is_file():
    raise FileNotFoundError(f"shard file {path} is missing; {_RERUN}.")
  try:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise _corrupt(path, f"cannot be read as .npy ({e})") from e


def open_shard(data_dir: PathLike, name: str) -> tuple[np.ndarray, np.ndarray]:
  """Return (tokens [N] read-only memmap, offsets int64 [num_docs + 1]) of one shard.

  Checks the dtype, that offsets start at 0, strictly increase and end at N,
  and that every document starts with the manifest's BOS id.
  """
  data_dir = pathlib.Path(data_dir)
  manifest = load_manifest(data_dir)
  if not re.fullmatch(r"(train|val)_\d{5}", name):
    raise ValueError(f"shard name {name!r} is not of the form train_00000 or val_00000.")
  tokens_path = data_dir / f"{name}.tokens.npy"
  offsets_path = data_dir / f"{name}.offsets.npy"
  tokens_N = _load_npy(tokens_path, mmap=True)
  offsets = _load_npy(offsets_path, mmap=False)
  if tokens_N.ndim != 1 or tokens_N.dtype.name != manifest.get("dtype"):
    raise _corrupt(tokens_path, f"has dtype {tokens_N.dtype} shape {tokens_N.shape}, "
                   f"expected 1-D {manifest.get('dtype')}")
  if offsets.ndim != 1 or offsets.dtype != np.int64 or offsets.size < 2:
    raise _corrupt(offsets_path, f"has dtype {offsets.dtype} shape {offsets.shape}, "
                   "expected int64 [num_docs + 1] with at least one document")
  if offsets[0] != 0 or np.any(np.diff(offsets) <= 0):
    raise _corrupt(offsets_path, "does not start at 0 and strictly increase")
  if offsets[-1] != tokens_N.size:
    raise _corrupt(offsets_path, f"ends at {int(offsets[-1])} but the tokens file has {tokens_N.size} tokens")
  if np.any(tokens_N[offsets[:-1]] != manifest["bos_id"]):
    raise _corrupt(tokens_path, f"has a document that does not start with BOS id {manifest['bos_id']}")
  return tokens_N, offsets
