"""Fact prompts for writing memory, held-out probes, and the one answer matcher.

Writing prompt of a fact: the first paraphrase that ends with the rendered
answer, with its trailing periods removed and cut just before the answer
("My name is Harper Nguyen." -> "My name is"); the gold is " " + the answer.
With no such paraphrase the prompt falls back to "My <key> is" (underscores in
the key become spaces). Unlike the reference cut, the default rule also
requires the answer to start a word, so prompt + gold always rebuilds the
sentence: "My monthly rent is $2600." is skipped, because cutting it gives
"My monthly rent is $" + " 2600", which is not the sentence.
`word_start=False` reproduces the reference cut for parity runs.

Held-out prompts are the direct_qa questions as "Q: {question}\\nA:"; they are
never used for writing, so recall measured on them is not recall of the
optimised string.

Matching (`answer_matches`, `exact_match`) works on normalised word tokens:

* lower case after Unicode NFKC; curly quotes become straight;
* a token is a run of letters and digits, kept whole across inner `. : ' + /`
  ("10:00", "29.5", "o'brien"), plus a trailing "+" or, after one or two
  characters, a trailing "-" (blood types "a+", "ab-"). Inner hyphens split
  ("20-minute" -> "20", "minute"), and a final "'s" is dropped ("harper's" and
  also "it's" -> "it");
* numbers: thousands separators are removed, decimals lose trailing zeros
  ("29.0" == "29"), and hours lose a leading zero ("09:40" == "9:40").
  Integers keep leading zeros, because answers such as "0429" are digit strings;
* number words from "zero" to "ninety-nine" become digits ("twenty" == "20");
* when matching, parenthesised text in the gold is dropped
  ("Quinn (spouse)" -> "quinn").

`answer_matches` needs the gold's tokens as a contiguous run of the
prediction's tokens, so "no" does not match "know" and "3" does not match
"13". A list gold (a Python list, or a string with ", " between items, where
a final "and" also separates) needs every item, in any order. A yes/no gold is compared with the first "yes" or
"no" in the prediction. `exact_match` needs the whole prediction to equal the
gold token for token (lists: the same items in any order).

NOTE: containment accepts a prediction that lists several candidates
("Tulsa or Boise" matches "Tulsa"); use `exact_match` or a judge where that matters.
"""

import dataclasses
import re
import unicodedata
from collections.abc import Sequence
from typing import Union

from absl import logging

from engram_jax.users.schema import Answer, Fact, User

LIST_SEPARATOR = ", "  # how list answers are written, as in "Monday, Wednesday, Friday"


def render_answer(answer: Answer) -> str:
  """Render an answer as text: strings as is, integers via str(), lists joined with ", "."""
  if isinstance(answer, list):
    return LIST_SEPARATOR.join(str(item) for item in answer)
  return str(answer)


def first_word_gold(answer: Answer) -> str:
  """Return " " + the answer's first word: the reference's first-token gold string."""
  words = render_answer(answer).split()
  if not words:
    raise ValueError(f"answer {answer!r} has no words; a gold needs at least one")
  return " " + words[0]


def qa_prompt(question: str) -> str:
  """Return the question-answer probe format, "Q: {question}\\nA:"."""
  return f"Q: {question}\nA:"


def fallback_prompt(key: str) -> str:
  return f"My {key.replace('_', ' ')} is"


def cut_before_answer(sentence: str, answer_text: str, word_start: bool = True) -> Union[str, None]:
  """Return the sentence cut before a final `answer_text`, or None if it does not end with it.

  Trailing periods are removed first, unless the answer itself ends with one.
  With `word_start` the answer must follow whitespace. A sentence that is only
  the answer has no prompt and returns None.
  """
  body = sentence.strip()
  if not answer_text.endswith("."):
    body = body.rstrip(".")
  if not answer_text or not body.endswith(answer_text):
    return None
  prefix = body[:-len(answer_text)]
  if word_start and prefix and not prefix[-1].isspace():
    return None
  prefix = prefix.rstrip()
  return prefix or None


def fact_phrasings(fact: Fact, word_start: bool = True) -> list[str]:
  """Return every distinct writing prompt of the fact in paraphrase order, or the fallback."""
  answer_text = render_answer(fact.answer)
  phrasings: list[str] = []
  for sentence in fact.paraphrases:
    prefix = cut_before_answer(sentence, answer_text, word_start)
    if prefix is not None and prefix not in phrasings:
      phrasings.append(prefix)
  return phrasings or [fallback_prompt(fact.key)]


def fact_text(fact: Fact, word_start: bool = True) -> str:
  """Return the fact as one sentence for retrieval.

  That is the first paraphrase ending with the answer, else "My <key> is <answer>".
  """
  answer_text = render_answer(fact.answer)
  for sentence in fact.paraphrases:
    if cut_before_answer(sentence, answer_text, word_start) is not None:
      return sentence.strip()
  return f"{fallback_prompt(fact.key)} {answer_text}"


@dataclasses.dataclass(frozen=True)
class FactPrompt:
  """Writing prompt, gold and probes of one fact.

  `gold` is " " + the full rendered answer. `phrasings` are all anticipated
  writing prompts (for multi-trigger insertion), `prompt` first. The
  `heldout_prompts` come from direct_qa and are never written.
  """
  user_uid: str
  key: str
  prompt: str
  gold: str
  phrasings: list[str]
  heldout_prompts: list[str]
  used_fallback: bool

  @property
  def gold_first_word(self) -> str:
    """The reference's gold string: " " + the answer's first word."""
    return first_word_gold(self.gold.strip())


def fact_prompts(user: User, word_start: bool = True) -> list[FactPrompt]:
  """Build the FactPrompt of every fact of `user`, in fact order."""
  questions: dict[str, list[str]] = {}
  for qa in user.direct_qa:
    questions.setdefault(qa.key, []).append(qa_prompt(qa.question))
  result = []
  for fact in user.facts:
    phrasings = fact_phrasings(fact, word_start)
    heldout = [q for q in questions.get(fact.key, []) if q not in phrasings]
    if len(heldout) != len(questions.get(fact.key, [])):
      logging.warning("[users] %s/%s: dropped held-out prompts equal to a writing prompt",
                      user.uid, fact.key)
    answer_text = render_answer(fact.answer)
    used_fallback = all(cut_before_answer(s, answer_text, word_start) is None
                        for s in fact.paraphrases)
    result.append(FactPrompt(
        user_uid=user.uid, key=fact.key, prompt=phrasings[0], gold=" " + answer_text,
        phrasings=phrasings, heldout_prompts=heldout, used_fallback=used_fallback))
  return result


def indirect_probes(user: User, max_items: int = 20) -> list[tuple[str, str]]:
  """Return (prompt, gold) for the first `max_items` indirect questions, in file order."""
  if max_items < 0:
    raise ValueError(f"max_items={max_items} is negative; pass 0 or more")
  return [(qa_prompt(qa.question), str(qa.answer)) for qa in user.indirect_qa[:max_items]]


# ----------------------------------------------------------------------------
# Matching
# ----------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\w+(?:[.:'+/]\w+)*(?:\+|-(?!\w))?")
_DECIMAL_RE = re.compile(r"^\d+\.\d+$")
_TIME_RE = re.compile(r"^0(\d):(\d\d)$")
_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
          "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_NUMBER_WORDS = {word: i for i, word in enumerate(_UNITS)}
_NUMBER_WORDS.update({word: 20 + 10 * i for i, word in enumerate(_TENS)})
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_YES_NO = ("yes", "no")


def normalize_text(text: str) -> str:
  """Return the normalised tokens of `text` joined by single spaces."""
  return " ".join(_tokens(text))


def _canonical_token(token: str) -> str:
  if token.endswith("'s"):
    token = token[:-2]
  if token.endswith("-") and len(token) > 3:
    token = token[:-1]
  if _DECIMAL_RE.match(token):
    token = token.rstrip("0").rstrip(".")
  time = _TIME_RE.match(token)
  if time:
    token = f"{time.group(1)}:{time.group(2)}"
  return token


def _merge_number_words(tokens: list[str]) -> list[str]:
  """Replace number words by digits; "twenty three" (or "twenty-three") becomes "23"."""
  merged: list[str] = []
  i = 0
  while i < len(tokens):
    token = tokens[i]
    if token in _NUMBER_WORDS:
      value = _NUMBER_WORDS[token]
      nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
      if token in _TENS and nxt in _NUMBER_WORDS and 0 < _NUMBER_WORDS[nxt] < 10:
        value += _NUMBER_WORDS[nxt]
        i += 1
      token = str(value)
    merged.append(token)
    i += 1
  return merged


def _tokens(text: str) -> list[str]:
  text = unicodedata.normalize("NFKC", text).translate(_QUOTES).lower()
  # Thousands separators would otherwise split "18,250" into two tokens.
  text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
  raw = [_canonical_token(t) for t in _TOKEN_RE.findall(text)]
  return _merge_number_words([t for t in raw if t])


def _split_list(text: str) -> list[str]:
  """Split "a, b and c" into items; text without ", " stays one item."""
  items = re.split(r",\s+", text)
  if len(items) > 1:
    items = [part for item in items for part in re.split(r"(?:^|\s+)and\s+", item)]
  return [item for item in items if item.strip()]


def _gold_items(gold: Answer) -> list[str]:
  """Split a gold answer into list items, dropping parenthesised text."""
  if isinstance(gold, list):
    return [str(item) for item in gold if str(item).strip()]
  return _split_list(re.sub(r"\([^)]*\)", " ", str(gold)))


def _item_tokens(gold: Answer) -> list[list[str]]:
  items = [_tokens(item) for item in _gold_items(gold)]
  items = [item for item in items if item]
  if not items:
    raise ValueError(f"gold {gold!r} has no words after normalisation; pass a non-empty answer")
  return items


def _contains(haystack: Sequence[str], needle: Sequence[str]) -> bool:
  n = len(needle)
  return any(list(haystack[i:i + n]) == list(needle) for i in range(len(haystack) - n + 1))


def answer_matches(prediction: str, gold: Answer) -> bool:
  """Return whether `prediction` states `gold` under the word-level rules above."""
  items = _item_tokens(gold)
  predicted = _tokens(prediction)
  if len(items) == 1 and len(items[0]) == 1 and items[0][0] in _YES_NO:
    said = [t for t in predicted if t in _YES_NO]
    return bool(said) and said[0] == items[0][0]
  return all(_contains(predicted, item) for item in items)


def exact_match(prediction: str, gold: Answer) -> bool:
  """Return whether the whole prediction equals the gold after normalisation."""
  items = _item_tokens(gold)
  if len(items) == 1:
    return _tokens(prediction) == items[0]
  predicted = [tuple(tokens) for tokens in (_tokens(p) for p in _split_list(prediction)) if tokens]
  return sorted(predicted) == sorted(tuple(item) for item in items)
