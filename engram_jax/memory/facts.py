"""A user's facts as token examples, and the Engram table rows each fact writes.

A `FactExample` is one writing prompt of a fact (BOS + prompt tokens) and the
tokens of its gold answer (" " + answer, encoded on its own, as the first-token
gold of the reference is). Training and scoring use teacher forcing on the
sequence prompt + answer: answer token j is predicted at position
len(prompt_ids) - 1 + j.

Row location. The whole sequence is canonicalised and hashed, and rows are
read from the target Engram layer:

* the trigger position (the last prompt token) contributes all G rows; they
  predict the first answer token;
* each continuation position, from the first answer token through the
  second-to-last, predicts the next answer token and contributes the rows of
  `continuation_heads` only (default: all G heads). Passing the order-3 heads
  (`order_heads(layout, 3)`) halves the storage of long answers, because
  order-3 n-grams are the more specific addresses. Passing `()` writes the
  trigger rows only, like the reference's multi-token runs.

`locate_rows` returns int32 [P, G] with P = number of answer tokens; a head
that a position does not write holds NO_ROW.

Shape letters: L Engram layers, T sequence, G hash heads, P answer positions.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from engram_jax import hashing
from engram_jax.hashing import HashLayout

# Marks a (position, head) that writes no row in `locate_rows`.
NO_ROW = -1


@dataclasses.dataclass(frozen=True)
class FactExample:
  """One writing prompt of a fact with its answer tokens.

  Attributes:
    owner: uid of the user the fact belongs to.
    key: the fact's key, shared by every phrasing of the fact.
    prompt_ids: BOS followed by the prompt's tokens.
    answer_ids: tokens of the gold string (" " + answer).
    phrasing_index: index of the prompt in the fact's anticipated phrasings
      (0 is the fact's main writing prompt).
  """
  owner: str
  key: str
  prompt_ids: tuple[int, ...]
  answer_ids: tuple[int, ...]
  phrasing_index: int = 0

  def __post_init__(self):
    if len(self.prompt_ids) < 1:
      raise ValueError(f"Fact {self.owner}/{self.key}: prompt_ids is empty; it needs at least BOS.")
    if len(self.answer_ids) < 1:
      raise ValueError(f"Fact {self.owner}/{self.key}: answer_ids is empty; the gold has no tokens.")
    object.__setattr__(self, "prompt_ids", tuple(int(i) for i in self.prompt_ids))
    object.__setattr__(self, "answer_ids", tuple(int(i) for i in self.answer_ids))

  @property
  def sequence_ids(self) -> tuple[int, ...]:
    """The teacher-forcing sequence: prompt followed by the answer."""
    return self.prompt_ids + self.answer_ids

  @property
  def trigger_position(self) -> int:
    """Index of the last prompt token, which predicts the first answer token."""
    return len(self.prompt_ids) - 1

  @property
  def answer_positions(self) -> np.ndarray:
    """int32 [P]: position predicting each answer token (trigger, then continuations)."""
    return np.arange(len(self.answer_ids), dtype=np.int32) + self.trigger_position


def encode_facts(fact_prompts: Sequence[Any], tokenizer: Any, *,
                 multi_trigger: bool = False) -> list[FactExample]:
  """Encode FactPrompts (engram_jax.users.fact_prompts) into FactExamples.

  Without `multi_trigger` each fact gives one example, its main prompt. With
  it, each anticipated phrasing gives one example, all with the fact's answer.
  """
  examples = []
  for fact in fact_prompts:
    if not fact.gold.strip():
      raise ValueError(f"Fact {fact.user_uid}/{fact.key} has an empty gold {fact.gold!r}.")
    answer_ids = tuple(tokenizer.encode(fact.gold))
    phrasings = list(fact.phrasings) if multi_trigger else [fact.prompt]
    for prompt in phrasings:
      index = list(fact.phrasings).index(prompt) if prompt in fact.phrasings else 0
      examples.append(FactExample(
          owner=fact.user_uid, key=fact.key,
          prompt_ids=tuple(tokenizer.encode(prompt, prepend_bos=True)),
          answer_ids=answer_ids, phrasing_index=index))
  return examples


def order_heads(layout: HashLayout, order: int) -> tuple[int, ...]:
  """Return the head indices (slab order) of the n-grams of `order` (2..N)."""
  if not 2 <= order <= layout.max_ngram:
    raise ValueError(f"order={order} is not hashed; orders run from 2 to {layout.max_ngram}.")
  first = (order - 2) * layout.heads_per_ngram
  return tuple(range(first, first + layout.heads_per_ngram))


def check_heads(heads: Sequence[int] | None, num_heads: int) -> tuple[int, ...]:
  """Validate a head subset and return it sorted; None means all heads."""
  if heads is None:
    return tuple(range(num_heads))
  checked = tuple(sorted(int(h) for h in heads))
  if len(set(checked)) != len(checked) or any(not 0 <= h < num_heads for h in checked):
    raise ValueError(
        f"continuation_heads={tuple(heads)} must be distinct head indices in [0, {num_heads}); "
        "pass None for all heads or () for the trigger rows only.")
  return checked


def canonical_ids(raw_ids: Any, canonical_map: Any, layout: HashLayout) -> np.ndarray:
  """Map raw ids to canonical ids; `canonical_map` is a CanonicalMap or an int array [V]."""
  table_V = getattr(canonical_map, "raw_to_canonical", canonical_map)
  num_canonical = getattr(canonical_map, "num_canonical", None)
  if num_canonical is not None and num_canonical != layout.num_canonical:
    raise ValueError(
        f"The canonical map has {num_canonical} canonical ids but the hash layout was built for "
        f"{layout.num_canonical}; build the layout with the map's num_canonical.")
  return hashing.canonicalize_np(raw_ids, table_V, num_canonical=layout.num_canonical)


def layer_index(layout: HashLayout, layer: int) -> int:
  """Return the table index of Engram block `layer`, or raise ValueError."""
  if layer not in layout.layer_ids:
    raise ValueError(f"layer={layer} has no Engram table; Engram blocks are {layout.layer_ids}.")
  return layout.layer_ids.index(layer)


def hash_example(example: FactExample, layout: HashLayout, canonical_map: Any) -> np.ndarray:
  """Return the global rows of every Engram layer for prompt + answer, int32 [L, T, G]."""
  ids_1T = canonical_ids(np.asarray(example.sequence_ids)[None], canonical_map, layout)
  return hashing.hash_rows_np(ids_1T, layout)[:, 0]


def locate_rows(example: FactExample, layout: HashLayout, canonical_map: Any, layer: int, *,
                continuation_heads: Sequence[int] | None = None) -> np.ndarray:
  """Return the rows the fact writes in Engram block `layer`, int32 [P, G].

  Row 0 contains the trigger position's G rows. Row p > 0 contains, for the
  heads in `continuation_heads` (None: all), the rows at the position of
  answer token p - 1, which predicts answer token p. Other heads contain NO_ROW.
  """
  heads = check_heads(continuation_heads, layout.heads)
  rows_TG = hash_example(example, layout, canonical_map)[layer_index(layout, layer)]
  rows_PG = rows_TG[example.answer_positions].copy()
  written_G = np.zeros(layout.heads, dtype=bool)
  written_G[list(heads)] = True
  rows_PG[1:, ~written_G] = NO_ROW
  return rows_PG.astype(np.int32)
