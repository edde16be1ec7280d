"""Per-probe scores: first-token rank, full-answer exact match and leak tests.

Primary metric: full-answer exact match under greedy decoding. A greedy
continuation states the answer when some token-boundary prefix of it equals the
gold under `engram_jax.users.exact_match` and the next decoded character does
not continue a word. "Harper Nguyen. I live" states "Harper Nguyen";
"Harper Nguyenson" does not. Secondary metric: the rank of the gold's first
token at the trigger position, the number of vocabulary entries whose logit is
strictly greater than the gold's (top-k means rank < k).

Leaks and swaps compare two answers with `engram_jax.users.answer_matches`,
a word-boundary containment test, so "no" is not found in "know".
"""

from collections.abc import Sequence

import numpy as np

from engram_jax.users import answer_matches, exact_match

TOP_KS = (1, 5, 10)


def gold_rank(logits_V: np.ndarray, gold_id: int) -> int:
  """Return how many vocabulary entries have a logit strictly above the gold's."""
  logits_V = np.asarray(logits_V)
  if logits_V.ndim != 1:
    raise ValueError(f"logits must be 1-D [V]; got shape {logits_V.shape}.")
  if not 0 <= gold_id < logits_V.shape[0]:
    raise ValueError(f"gold id {gold_id} is outside the vocabulary [0, {logits_V.shape[0]}).")
  return int(np.sum(logits_V > logits_V[gold_id]))


def ranks_from_logits(logits_BV: np.ndarray, gold_B: np.ndarray) -> np.ndarray:
  """Return the gold rank of each row of a batch of logits, int [B]."""
  logits_BV = np.asarray(logits_BV)
  gold_B = np.asarray(gold_B)
  gold_logit_B1 = np.take_along_axis(logits_BV, gold_B[:, None], axis=1)
  return np.sum(logits_BV > gold_logit_B1, axis=1)


def top_k_hit(rank: int, k: int) -> bool:
  return bool(rank < k)


def rank_summary(ranks: Sequence[int]) -> dict:
  """Return top-1/5/10 rates and the median rank of the given gold ranks."""
  ranks_N = np.asarray(ranks)
  if ranks_N.size == 0:
    raise ValueError("rank_summary needs at least one rank.")
  out = {f"top{k}": float(np.mean(ranks_N < k)) for k in TOP_KS}
  out["median_rank"] = float(np.median(ranks_N))
  return out


def states_answer(pieces: Sequence[str], gold: str) -> bool:
  """Return whether a greedy continuation starts with exactly the gold answer.

  `pieces` are the decoded text of each generated token in order. The answer
  is stated when the text of some token prefix equals `gold` under
  `exact_match` and the following character does not continue a word, or the
  prefix is the whole continuation.
  """
  text = "".join(pieces)
  prefix = ""
  for piece in pieces:
    prefix += piece
    if not exact_match(prefix, gold):
      continue
    rest = text[len(prefix):]
    if not rest or not _continues_word(prefix, rest):
      return True
  return False


def _continues_word(prefix: str, rest: str) -> bool:
  """True when `rest` glues onto the last word of `prefix` ("Nguyen" + "son", "29" + ".5")."""
  first = rest[0]
  if first.isalnum():
    return bool(prefix) and prefix[-1].isalnum()
  # "29" followed by ".5" or "10" followed by ":30" extends a number.
  return first in ".:,/" and len(rest) > 1 and rest[1].isdigit() and prefix[-1:].isdigit()


def is_leak(output: str, map_owner_gold: str, prompt_owner_gold: str) -> bool:
  """Return whether the output states the map owner's answer and not the prompt owner's own."""
  return answer_matches(output, map_owner_gold) and not answer_matches(output, prompt_owner_gold)


def answers_distinct(gold_a: str, gold_b: str) -> bool:
  """Return whether the matcher distinguishes two golds (neither matches the other)."""
  return not (answer_matches(gold_a, gold_b) or answer_matches(gold_b, gold_a))


def score_probe(rank: int, pieces: Sequence[str], gold: str) -> dict:
  """Score one probe from its gold rank and greedy token texts.

  Returns first-token top-k hits (secondary), full-answer exact match
  (primary), word-boundary containment and the output text.
  """
  rank = int(rank)  # a numpy integer would make numpy booleans, which JSON cannot encode
  output = "".join(pieces)
  record = {f"first_token_top{k}": top_k_hit(rank, k) for k in TOP_KS}
  record.update(rank=rank, exact_match=states_answer(pieces, gold),
                answer_contains=answer_matches(output, gold), output=output)
  return record
