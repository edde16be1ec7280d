"""Parquet shards of a Hugging Face dataset repo in the ClimbMix / FineWeb-Edu layout.

The repo contains `shard_00000.parquet`, `shard_00001.parquet`, ... at its root,
each with one `text` column. Training reads the configured train shards. The
named validation shard forms the whole validation split, so hub data gets no
hash split.
"""

import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

from absl import logging
import huggingface_hub
from huggingface_hub import errors as hf_errors

from engram_jax.data import sources

PathLike = str | os.PathLike


def shard_filename(index: int) -> str:
  if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= 99_999:
    raise ValueError(f"hub shard index {index!r} must be an int in [0, 99999].")
  return f"shard_{index:05d}.parquet"


def default_local_dir(repo_id: str, cache_dir: PathLike | None = None) -> pathlib.Path:
  """Download folder of `repo_id`: <cache_dir>/hub/<owner>__<name>."""
  base = pathlib.Path(cache_dir) if cache_dir is not None else sources.default_cache_dir()
  return base / "hub" / repo_id.replace("/", "__")


def check_shards(train_shards: Sequence[int], val_shard: int) -> None:
  """Raise ValueError unless the train shards are distinct valid indices without the val shard."""
  train = list(train_shards)
  for index in [*train, val_shard]:
    shard_filename(index)
  if not train:
    raise ValueError("data.hub_shards is empty; name at least one train shard, e.g. (0, 1).")
  if len(set(train)) != len(train):
    raise ValueError(f"data.hub_shards={tuple(train_shards)} repeats a shard; list each once.")
  if val_shard in train:
    raise ValueError(
        f"data.hub_val_shard={val_shard} is also in data.hub_shards={tuple(train_shards)}; "
        "remove it from the train shards so validation stays held out."
    )


def download_shard(
    repo_id: str, index: int, local_dir: PathLike, *, endpoint: str | None = None, role: str = "train"
) -> pathlib.Path:
  """Download one shard with `hf_hub_download` (reused when already complete) and return its path."""
  filename = shard_filename(index)
  try:
    path = huggingface_hub.hf_hub_download(
        repo_id, filename, repo_type="dataset", local_dir=local_dir, endpoint=endpoint
    )
  except hf_errors.EntryNotFoundError as e:
    field = "data.hub_val_shard" if role == "val" else "data.hub_shards"
    raise FileNotFoundError(
        f"{role} shard {filename} is not in dataset {repo_id} and not in {local_dir}; "
        f"set {field} to a shard the repo has."
    ) from e
  except (hf_errors.HfHubHTTPError, OSError) as e:
    raise RuntimeError(
        f"downloading {filename} of dataset {repo_id} into {local_dir} failed ({e}); check the network "
        f"or HF_ENDPOINT, or place the file at {pathlib.Path(local_dir) / filename}."
    ) from e
  return pathlib.Path(path)


def download_shards(
    repo_id: str,
    train_shards: Sequence[int],
    val_shard: int,
    local_dir: PathLike,
    *,
    endpoint: str | None = None,
) -> tuple[list[pathlib.Path], pathlib.Path]:
  """Return (train shard paths, val shard path), downloading the val shard first.

  Fetching validation first makes a missing val shard fail before the larger
  train download starts.
  """
  check_shards(train_shards, val_shard)
  val_path = download_shard(repo_id, val_shard, local_dir, endpoint=endpoint, role="val")
  train_paths = []
  for index in train_shards:
    train_paths.append(download_shard(repo_id, index, local_dir, endpoint=endpoint))
    logging.info("[data] hub shard %s ready (%d of %d)", train_paths[-1], len(train_paths), len(train_shards))
  return train_paths, val_path


def hub_labelled_documents(
    train_paths: Sequence[PathLike], val_path: PathLike
) -> Iterator[tuple[str, str]]:
  """Yield ("train", text) for the train shards in order, then ("val", text) for the val shard."""
  for path in train_paths:
    for text in sources.parquet_documents(path):
      yield "train", text
  for text in sources.parquet_documents(val_path):
    yield "val", text


def hub_description(repo_id: str, train_shards: Sequence[int], val_shard: int) -> list[dict[str, Any]]:
  return [{
      "name": "hub",
      "repo": repo_id,
      "train": [shard_filename(i) for i in train_shards],
      "val": shard_filename(val_shard),
  }]


def hub_val_rule(val_shard: int) -> str:
  return f"val = every document of hub shard {shard_filename(val_shard)}; train = the listed train shards"
