"""Tests for the BPE tokenizer, byte lengths, canonical map and tokenizer files."""

import json
import pickle
import random
import shutil

import numpy as np
import pytest
import tiktoken.load
from tokenizers import pre_tokenizers

from engram_jax.config import SPECIAL_TOKENS
from engram_jax.tokenizer import CanonicalMap
from engram_jax.tokenizer import Tokenizer
from engram_jax.tokenizer import bpe
from engram_jax.tokenizer import build_canonical_map
from engram_jax.tokenizer import canonical
from engram_jax.tokenizer import load_byte_lengths
from engram_jax.tokenizer import load_canonical_map
from engram_jax.tokenizer import load_tokenizer
from engram_jax.tokenizer import load_tokenizer_bundle
from engram_jax.tokenizer import save_byte_lengths
from engram_jax.tokenizer import save_canonical_map
from engram_jax.tokenizer import save_tokenizer_bundle
from engram_jax.tokenizer import train_bpe
from engram_jax.tokenizer import unreachable_tokens

VOCAB_SIZE = 1024

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if "
    "so no out more will up about who can said other time into them some these may then do "
    "its only two new over first any like than after our also most now made many well way "
    "down even because through where much back good should each those people how me very "
    "know world life just still help model memory token user answer question"
).split()
_CASED = ["Hello", "hello", "HELLO", "World", "world", "WORLD"]
_ACCENTED = (
    "café naïve résumé élan été déjà Zürich jalapeño façade crème brûlée São"
).split()
_CJK = ["漢字", "日本語", "中文", "東京", "北京", "한국어", "テキスト"]
_EMOJI = ["😀", "👍🏽", "🎉", "❤️", "🚀", "🇫🇷"]

ROUND_TRIP_TEXTS = [
    "",
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\r\nwindows newlines\n\n\nand blank lines",
    "Crème brûlée in Zürich costs 12.50 €; naïve café.",
    "decomposed e\u0301 and precomposed \u00e9",
    "漢字と日本語のテキスト, 한국어 문장.",
    "emoji 😀👍🏽🎉🇫🇷 and ❤️ with zero-width joiner 👩‍💻",
    "numbers 1234567890 3.14159 -42 1e10 007",
    "rare bytes \x00\x01\x7f and \u0301 combining alone",
    "it's they'll we've I'M YOU'RE",
    "<|bos|> and <|endoftext|> are plain text here",
]


def _make_sentence(rng: random.Random) -> str:
  words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
  extras = (_CASED, 0.35), (_ACCENTED, 0.3), (_CJK, 0.1), (_EMOJI, 0.06)
  for choices, probability in extras:
    if rng.random() < probability:
      words.insert(rng.randrange(len(words) + 1), rng.choice(choices))
  if rng.random() < 0.3:
    words.insert(rng.randrange(len(words) + 1), str(rng.randint(0, 10 ** rng.randint(1, 7))))
  text = " ".join(words)
  if rng.random() < 0.7:
    text = text[0].upper() + text[1:]
  return text + rng.choice(".!?,;")


def make_corpus(seed: int = 0, num_docs: int = 800) -> list[str]:
  """Return about 600 KB of English-like text with accents, CJK, emoji and digits."""
  rng = random.Random(seed)
  docs = []
  for _ in range(num_docs):
    sentences = [_make_sentence(rng) for _ in range(rng.randint(5, 25))]
    docs.append(rng.choice([" ", "\n", "\n\n", "\t", "\r\n"]).join(sentences))
  return docs


@pytest.fixture(scope="module")
def corpus() -> list[str]:
  return make_corpus()


@pytest.fixture(scope="module")
def tok(corpus) -> Tokenizer:
  return train_bpe(corpus, VOCAB_SIZE)


@pytest.fixture(scope="module")
def other_tok(corpus) -> Tokenizer:
  return train_bpe(corpus[:200], 300)


@pytest.fixture(scope="module")
def cmap(tok) -> CanonicalMap:
  return build_canonical_map(tok)


def _single_token(tok: Tokenizer, text: str) -> int:
  """Return the id whose bytes are exactly `text`, failing the test if absent."""
  try:
    return tok.encoding.encode_single_token(text.encode("utf-8"))
  except KeyError:
    pytest.fail(f"{text!r} is not a token of the test vocabulary; adjust the corpus.")


# Training and id layout.


def test_vocab_size_exact(tok):
  assert tok.vocab_size == VOCAB_SIZE
  assert tok.encoding.n_vocab == VOCAB_SIZE


def test_bos_id_after_merges(tok):
  assert tok.bos_id == VOCAB_SIZE - 9


def test_special_ids_in_order(tok):
  assert list(tok.special_ids) == list(SPECIAL_TOKENS)
  assert list(tok.special_ids.values()) == list(range(VOCAB_SIZE - 9, VOCAB_SIZE))


def test_single_bytes_first(tok):
  for b in range(256):
    assert tok.token_bytes(b) == bytes([b])


def test_every_merge_reachable(tok):
  assert unreachable_tokens(tok) == []


def test_byte_map_matches_hf():
  assert set(bpe.BYTE_TO_UNICODE.values()) == set(pre_tokenizers.ByteLevel.alphabet())
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  # These characters cover every byte value that occurs in valid UTF-8: all
  # one- and two-byte forms, every three-byte lead, every four-byte lead.
  samples = [chr(c) for c in range(0x800)]
  samples += [chr(max(0x800, (lead - 0xE0) << 12)) for lead in range(0xE0, 0xF0)]
  samples += [chr(max(0x10000, (lead - 0xF0) << 18)) for lead in range(0xF0, 0xF5)]
  for text in samples:
    ((piece, _),) = byte_level.pre_tokenize_str(text)
    assert piece == "".join(bpe.BYTE_TO_UNICODE[b] for b in text.encode("utf-8"))


def test_tiktoken_matches_hf_encoding(corpus, tok):
  num_ordinary = VOCAB_SIZE - len(SPECIAL_TOKENS)
  hf_tokenizer = bpe.train_hf_bpe([corpus], num_ordinary)
  ranks = bpe.mergeable_ranks_from_hf(hf_tokenizer)
  assert ranks == tok.mergeable_ranks
  hf_to_rank = {
      hf_id: ranks[bytes(bpe.UNICODE_TO_BYTE[c] for c in piece)]
      for piece, hf_id in hf_tokenizer.get_vocab().items()
  }
  for text in make_corpus(seed=1, num_docs=40) + ROUND_TRIP_TEXTS:
    hf_ids = [hf_to_rank[i] for i in hf_tokenizer.encode(text).ids]
    assert tok.encode(text) == hf_ids, text


def test_training_info_recorded(tok, corpus):
  assert tok.training_info["documents"] == len(corpus)
  assert tok.training_info["characters"] == sum(len(d) for d in corpus)


def test_max_chars_respected(corpus):
  small = train_bpe(corpus, 300, max_chars=50_000, doc_cap_chars=500)
  assert small.training_info["characters"] == 50_000
  assert small.training_info["capped_documents"] > 0


def test_vocab_too_small_rejected(corpus):
  with pytest.raises(ValueError, match="at least 265"):
    train_bpe(corpus, 264)


def test_tiny_corpus_rejected():
  with pytest.raises(ValueError, match="yields only"):
    train_bpe(["ab ab ab cd"], VOCAB_SIZE)


def test_empty_corpus_rejected():
  with pytest.raises(ValueError, match="no characters"):
    train_bpe([], VOCAB_SIZE)


def test_train_non_str_rejected():
  with pytest.raises(TypeError, match="training document 1"):
    train_bpe(["fine", b"bytes"], 300)


def test_train_surrogate_rejected():
  with pytest.raises(ValueError, match="training document 0"):
    train_bpe(["bad \ud800"], 300)


# Encoding and decoding.


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(tok, text):
  assert tok.decode(tok.encode(text)) == text


def test_round_trip_held_out_docs(tok):
  for text in make_corpus(seed=2, num_docs=20):
    assert tok.decode(tok.encode(text)) == text


def test_digits_split_in_pairs(tok):
  for token_id in tok.encode("x 12345678901 y 99999 and 3"):
    piece = tok.token_bytes(token_id)
    if piece.isdigit():
      assert len(piece) <= 2


def test_digit_pairs_used(tok):
  assert [tok.token_bytes(i) for i in tok.encode("1234")] == [b"12", b"34"]


def test_special_text_is_ordinary(tok):
  text = "fact: <|bos|> then <|endoftext|> and <|user_start|>"
  ids = tok.encode(text)
  assert max(ids) < tok.num_ordinary
  assert tok.decode(ids) == text


def test_special_text_is_ordinary_in_batch(tok):
  ids = tok.encode_batch(["<|bos|>", "<|assistant_end|>"])
  assert all(max(row) < tok.num_ordinary for row in ids)


def test_prepend_bos(tok):
  assert tok.encode("hi", prepend_bos=True) == [tok.bos_id, *tok.encode("hi")]


def test_encode_batch_matches_encode(tok):
  texts = ROUND_TRIP_TEXTS
  assert tok.encode_batch(texts, num_threads=2) == [tok.encode(t) for t in texts]
  with_bos = [tok.encode(t, prepend_bos=True) for t in texts]
  assert tok.encode_batch(texts, prepend_bos=True) == with_bos


def test_lone_surrogate_rejected(tok):
  with pytest.raises(ValueError, match="U\\+D800 at index 1.*errors='replace'"):
    tok.encode("a\ud800b")


def test_lone_surrogate_in_batch_named(tok):
  with pytest.raises(ValueError, match=r"texts\[1\]"):
    tok.encode_batch(["ok", "bad \udfff"])


def test_lone_surrogate_replace(tok):
  assert tok.encode("a\ud800b", errors="replace") == tok.encode("a\ufffdb")


def test_surrogate_pair_replace_joins(tok):
  assert tok.encode("\ud83d\ude00", errors="replace") == tok.encode("😀")


def test_unknown_errors_rejected(tok):
  with pytest.raises(ValueError, match="errors='ignore'"):
    tok.encode("a\ud800", errors="ignore")


@pytest.mark.parametrize("value", [b"bytes", None, 12])
def test_encode_non_str_rejected(tok, value):
  with pytest.raises(TypeError, match="must be str"):
    tok.encode(value)


def test_encode_batch_single_str_rejected(tok):
  with pytest.raises(TypeError, match="list of str"):
    tok.encode_batch("just one text")


@pytest.mark.parametrize("bad_id", [VOCAB_SIZE, -1, 10**12])
def test_decode_invalid_id(tok, bad_id):
  with pytest.raises(ValueError, match=f"ids\\[1\\]={bad_id} is not a token id"):
    tok.decode([5, bad_id])


def test_decode_float_ids_rejected(tok):
  with pytest.raises(TypeError, match="integers"):
    tok.decode([1.0, 2.0])


def test_decode_numpy_ids(tok):
  ids = tok.encode("numpy ids")
  assert tok.decode(np.array(ids, dtype=np.int32)) == "numpy ids"


def test_decode_empty(tok):
  assert tok.decode([]) == ""


def test_token_bytes_special(tok):
  assert tok.token_bytes(tok.bos_id) == b"<|bos|>"


def test_token_bytes_invalid(tok):
  with pytest.raises(ValueError, match="not a token id"):
    tok.token_bytes(VOCAB_SIZE)
  with pytest.raises(TypeError, match="must be an int"):
    tok.token_bytes(True)


def test_pickle_round_trip(tok):
  clone = pickle.loads(pickle.dumps(tok))
  assert clone.encode(ROUND_TRIP_TEXTS[7]) == tok.encode(ROUND_TRIP_TEXTS[7])


# Byte lengths.


@pytest.mark.parametrize("rule", ["raw", "reference"])
def test_byte_lengths_specials_zero(tok, rule):
  lengths = tok.byte_lengths(rule)
  assert lengths.dtype == np.int32
  assert lengths.shape == (VOCAB_SIZE,)
  assert np.all(lengths[tok.num_ordinary:] == 0)


def test_byte_lengths_partial_byte(tok):
  assert tok.byte_lengths("raw")[0xC3] == 1
  assert tok.byte_lengths("reference")[0xC3] == 3


def test_byte_lengths_rules_agree_on_utf8(tok):
  raw, reference = tok.byte_lengths("raw"), tok.byte_lengths("reference")
  token_id = _single_token(tok, " hello")
  assert raw[token_id] == 6
  assert reference[token_id] == 6


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_raw_lengths_sum_to_bytes(tok, text):
  lengths = tok.byte_lengths("raw")
  assert int(lengths[tok.encode(text)].sum()) == len(text.encode("utf-8"))


def test_reference_lengths_overcount(tok):
  text = "漢字 😀 🇫🇷"
  ids = tok.encode(text)
  assert int(tok.byte_lengths("reference")[ids].sum()) > len(text.encode("utf-8"))


def test_byte_lengths_unknown_rule(tok):
  with pytest.raises(ValueError, match="'utf16'"):
    tok.byte_lengths("utf16")


# Canonical map.


def test_case_folding(tok, cmap):
  for variants in (("Hello", " hello", " Hello", "HELLO", " HELLO"), ("world", " World", "WORLD")):
    ids = [_single_token(tok, t) for t in variants]
    assert len({int(cmap.raw_to_canonical[i]) for i in ids}) == 1, variants


def test_accent_folding(tok, cmap):
  e_acute = _single_token(tok, "é")
  assert cmap.raw_to_canonical[e_acute] == cmap.raw_to_canonical[ord("e")]


def test_whitespace_folding(tok, cmap):
  whitespace = [" ", "\t", "\n", "\r"]
  assert len({int(cmap.raw_to_canonical[ord(c)]) for c in whitespace}) == 1
  assert cmap.raw_to_canonical[_single_token(tok, "\n\n")] == cmap.raw_to_canonical[ord(" ")]


def test_lone_space_key_kept():
  normalizer = canonical.make_normalizer()
  assert canonical.canonical_key(" ", normalizer) == " "
  assert canonical.canonical_key("\t\n", normalizer) == " "


def test_empty_key_uses_raw_text():
  normalizer = canonical.make_normalizer()
  assert canonical.canonical_key("\u0301", normalizer) == "\u0301"


def test_space_distinct_from_letters(cmap):
  assert cmap.raw_to_canonical[ord(" ")] != cmap.raw_to_canonical[ord("a")]


def test_replacement_tokens_distinct(tok, cmap):
  partial = [i for i in range(tok.vocab_size) if "\ufffd" in tok.decode([i])]
  assert len(partial) >= 128
  assert len(set(cmap.raw_to_canonical[partial].tolist())) == len(partial)


def test_specials_distinct(tok, cmap):
  special = list(tok.special_ids.values())
  assert len(set(cmap.raw_to_canonical[special].tolist())) == len(special)


def test_first_appearance_numbering(cmap):
  assert cmap.raw_to_canonical[0] == 0
  _, first_raw = np.unique(cmap.raw_to_canonical, return_index=True)
  assert np.all(np.diff(first_raw) > 0)


def test_pad_reserved(cmap):
  assert cmap.pad_id == cmap.num_canonical
  assert cmap.pad_id not in set(cmap.raw_to_canonical.tolist())
  assert cmap.num_ids == cmap.num_canonical + 1


def test_reference_pad(cmap):
  parity = cmap.with_reference_pad(True)
  assert parity.pad_id == 0
  assert parity.num_ids == cmap.num_canonical


def test_colliding_pad_rejected(cmap):
  with pytest.raises(ValueError, match="real token"):
    CanonicalMap(cmap.raw_to_canonical, cmap.num_canonical, 0, False, cmap.fingerprint)


def test_canonical_table_read_only(cmap):
  assert not cmap.raw_to_canonical.flags.writeable


def test_canonicalize(tok, cmap):
  ids_BT = np.array([tok.encode("Hello world"), tok.encode("HELLO WORLD")[:2]], dtype=np.int32)
  canonical_BT = cmap.canonicalize(ids_BT)
  assert canonical_BT.shape == ids_BT.shape
  assert np.array_equal(canonical_BT, cmap.raw_to_canonical[ids_BT])


def test_canonicalize_out_of_range(cmap):
  with pytest.raises(ValueError, match=f"raw id {VOCAB_SIZE} at flat index 1"):
    cmap.canonicalize([0, VOCAB_SIZE])


# Files.


@pytest.fixture()
def bundle_dir(tmp_path, tok, cmap):
  return save_tokenizer_bundle(tmp_path / "tok", tok, cmap)


def test_bundle_round_trip(bundle_dir, tok, cmap):
  loaded, loaded_map = load_tokenizer_bundle(bundle_dir)
  assert loaded.fingerprint == tok.fingerprint
  assert loaded.special_ids == tok.special_ids
  assert loaded.encode_batch(ROUND_TRIP_TEXTS) == tok.encode_batch(ROUND_TRIP_TEXTS)
  assert np.array_equal(loaded_map.raw_to_canonical, cmap.raw_to_canonical)
  assert loaded_map.pad_id == cmap.pad_id


def test_method_round_trip(tmp_path, tok):
  tok.save(tmp_path / "m")
  assert Tokenizer.load(tmp_path / "m").fingerprint == tok.fingerprint


def test_byte_lengths_file_round_trip(bundle_dir, tok):
  for rule in ("raw", "reference"):
    assert np.array_equal(load_byte_lengths(bundle_dir, tok, rule), tok.byte_lengths(rule))
    meta = json.loads((bundle_dir / f"byte_lengths_{rule}.json").read_text())
    assert meta["rule"] == rule


def test_ranks_file_is_tiktoken_format(bundle_dir, tok, monkeypatch):
  monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # an empty value disables tiktoken's cache
  ranks = tiktoken.load.load_tiktoken_bpe(str(bundle_dir / "tokenizer.tiktoken"))
  assert ranks == tok.mergeable_ranks


def test_mismatched_canonical_rejected(bundle_dir, tmp_path, other_tok, tok):
  other_dir = save_tokenizer_bundle(tmp_path / "other", other_tok)
  for name in ("canonical.npy", "canonical.json"):
    shutil.copy(other_dir / name, bundle_dir / name)
  expected = f"{other_tok.fingerprint}.*{tok.fingerprint}.*build_canonical_map"
  with pytest.raises(ValueError, match=expected):
    load_tokenizer_bundle(bundle_dir)


def test_mismatched_byte_lengths_rejected(bundle_dir, tmp_path, other_tok):
  other_dir = save_tokenizer_bundle(tmp_path / "other", other_tok)
  for name in ("byte_lengths_raw.npy", "byte_lengths_raw.json"):
    shutil.copy(other_dir / name, bundle_dir / name)
  with pytest.raises(ValueError, match="save_byte_lengths"):
    load_tokenizer_bundle(bundle_dir)


def test_foreign_canonical_save_rejected(bundle_dir, other_tok):
  with pytest.raises(ValueError, match="build the canonical map from that directory's tokenizer"):
    save_canonical_map(bundle_dir, build_canonical_map(other_tok))


def test_foreign_byte_lengths_save_rejected(bundle_dir, other_tok):
  expected = "build the byte-length file from that directory's tokenizer"
  with pytest.raises(ValueError, match=expected):
    save_byte_lengths(bundle_dir, other_tok, "raw")


def test_overwrite_different_rejected(bundle_dir, other_tok):
  with pytest.raises(FileExistsError, match="overwrite=True"):
    other_tok.save(bundle_dir)


def test_overwrite_allowed_when_asked(bundle_dir, other_tok):
  save_tokenizer_bundle(bundle_dir, other_tok, overwrite=True)
  assert load_tokenizer_bundle(bundle_dir)[0].fingerprint == other_tok.fingerprint


def test_resave_same_tokenizer(bundle_dir, tok):
  tok.save(bundle_dir)
  assert load_tokenizer(bundle_dir).fingerprint == tok.fingerprint


def test_missing_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    load_tokenizer(tmp_path / "nowhere")


def test_missing_canonical_file(bundle_dir, tok):
  (bundle_dir / "canonical.npy").unlink()
  with pytest.raises(FileNotFoundError, match="canonical.npy"):
    load_canonical_map(bundle_dir, tok)


def test_colliding_pad_file_rejected(bundle_dir, tok):
  meta_path = bundle_dir / "canonical.json"
  meta = json.loads(meta_path.read_text())
  meta["pad_id"] = 0
  meta_path.write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="invalid map.*real token"):
    load_canonical_map(bundle_dir, tok)


def test_edited_ranks_rejected(bundle_dir):
  path = bundle_dir / "tokenizer.tiktoken"
  lines = path.read_bytes().splitlines(keepends=True)
  # Swap the ranks of tokens 300 and 301: still a valid file, but another tokenizer.
  swapped_300 = lines[301].replace(b" 301", b" 300")
  swapped_301 = lines[300].replace(b" 300", b" 301")
  lines[300], lines[301] = swapped_300, swapped_301
  path.write_bytes(b"".join(lines))
  with pytest.raises(ValueError, match="manifest records fingerprint"):
    load_tokenizer(bundle_dir)


def test_bundle_rejects_foreign_map(tok, other_tok, tmp_path):
  with pytest.raises(ValueError, match="pass build_canonical_map"):
    save_tokenizer_bundle(tmp_path / "x", tok, build_canonical_map(other_tok))
