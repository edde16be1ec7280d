"""Short persona documents for pretraining text.

Each document states facts about one synthetic person or organisation. It is
written in the first person, in the third person, or as statements followed
by "Q: ...\nA: ..." lines. A model pretrained on them has seen both the
statement style of fact prompts and the question style of held-out probes.

Document i is drawn from its own generator seeded with (PERSONA_STREAM, seed,
i). Evaluation users come from USER_STREAM, so by default no evaluation user
appears here. Chance overlaps of single values (a shared first name or city)
remain, because both streams draw from the same pools.
"""

from collections.abc import Iterator
from typing import Any

import numpy as np

from engram_jax.users import pools
from engram_jax.users import synth
from engram_jax.users import templates

DOCUMENT_STYLES = ("first_person", "third_person", "self_qa", "profile_qa", "organisation")
_FIRST_INTROS = ("Hi, I'm {f}.", "A few things about me.", "About me:", "Notes to self, {f}:")
_THIRD_INTROS = ("Profile: {n}.", "Here is what we know about {n}.", "{n}, in brief.")

# Organisation facts: (attribute, statements, question). Statements name the
# organisation so that any of them can open the document.
_ORG_FACTS = (
    ("city", ("{org} has its headquarters in {city}.", "{org} is based in {city}."),
     "Where is {org} headquartered?"),
    ("industry", ("{org} works in {industry}.", "{org} is a company in {industry}."),
     "What industry is {org} in?"),
    ("founded", ("{org} was founded in {founded}.", "{org} opened its doors in {founded}."),
     "When was {org} founded?"),
    ("ceo", ("The chief executive of {org} is {ceo}.", "{ceo} runs {org}."),
     "Who leads {org}?"),
    ("employees", ("{org} employs about {employees} people.",),
     "How many people work at {org}?"),
    ("mascot", ("The mascot of {org} is {mascot_art} {mascot}.",),
     "What animal is the mascot of {org}?"),
    ("product", ("{org} is best known for {product}.",), "What is {org} known for?"),
    ("parent", ("{org} is owned by {parent}.", "{parent} is the parent company of {org}."),
     "Which company owns {org}?"),
)


def _org_name(rng: np.random.Generator) -> str:
  return f"{synth.pick(rng, pools.EMPLOYER_HEADS)} {synth.pick(rng, pools.EMPLOYER_TAILS)}"


def sample_organisation(rng: np.random.Generator) -> dict[str, Any]:
  """Draw one synthetic organisation's attributes."""
  org = _org_name(rng)
  parent = _org_name(rng)
  mascot = synth.pick(rng, pools.MASCOTS)
  first, last = synth.pick(rng, pools.FIRST_NAMES), synth.pick(rng, pools.LAST_NAMES)
  return {
      "org": org, "city": synth.pick(rng, pools.CITIES)[0],
      "industry": synth.pick(rng, pools.INDUSTRIES), "founded": int(rng.integers(1950, 2024)),
      "ceo": f"{first} {last}", "employees": int(rng.integers(12, 40_000)),
      "mascot": mascot, "mascot_art": templates.article(mascot),
      "product": synth.pick(rng, pools.PRODUCTS),
      "parent": parent if parent != org else None,
  }


def _qa_lines(pairs: list[tuple[str, str]]) -> str:
  return "\n".join(f"Q: {question}\nA: {answer}" for question, answer in pairs)


def _person_facts(rng: np.random.Generator, attrs: dict[str, Any]) -> list[tuple[str, dict]]:
  """Return 4-9 (fact key, template fields) pairs of the person, in random order."""
  keys = synth.fact_keys(attrs)
  count = int(rng.integers(4, 10))
  chosen = synth.pick_distinct(rng, keys, count)
  return [(key, synth.template_context(key, attrs)) for key in chosen]


def _statements(rng: np.random.Generator, facts: list[tuple[str, dict]], person: str) -> list[str]:
  out = []
  for key, ctx in facts:
    spec = templates.TEMPLATES[key]
    out.append(synth.pick(rng, spec.first if person == "first" else spec.third).format(**ctx))
  return out


def _paragraphs(rng: np.random.Generator, sentences: list[str]) -> str:
  """Join sentences into one paragraph, or two when there are five or more."""
  if len(sentences) >= 5 and rng.random() < 0.5:
    cut = len(sentences) // 2
    return " ".join(sentences[:cut]) + "\n\n" + " ".join(sentences[cut:])
  return " ".join(sentences)


def person_document(rng: np.random.Generator, style: str, uid: str) -> str:
  """Write one document about a freshly drawn person in `style`."""
  attrs = synth.sample_attrs(rng, uid)
  facts = _person_facts(rng, attrs)
  names = {"f": attrs["first_name"], "n": attrs["full_name"]}
  person = "first" if style in ("first_person", "self_qa") else "third"
  intros = _FIRST_INTROS if person == "first" else _THIRD_INTROS
  body = _paragraphs(rng, [synth.pick(rng, intros).format(**names)]
                     + _statements(rng, facts, person))
  if style in ("first_person", "third_person"):
    return body
  questioned = facts[:int(rng.integers(2, len(facts) + 1))]
  field = "ask" if person == "first" else "ask_third"
  pairs = [(getattr(templates.TEMPLATES[key], field).format(**ctx), ctx["a"]) for key, ctx in questioned]
  return body + "\n\n" + _qa_lines(pairs)


def organisation_document(rng: np.random.Generator) -> str:
  """Write one document about a freshly drawn organisation: statements, then Q/A lines."""
  org = sample_organisation(rng)
  facts = [fact for fact in _ORG_FACTS if org[fact[0]] is not None]
  chosen = synth.pick_distinct(rng, facts, int(rng.integers(3, len(facts) + 1)))
  sentences = [synth.pick(rng, statements).format(**org) for _, statements, _ in chosen]
  body = _paragraphs(rng, sentences)
  if rng.random() < 0.5:
    return body
  questioned = chosen[:int(rng.integers(1, len(chosen) + 1))]
  return body + "\n\n" + _qa_lines([(question.format(**org), str(org[attr]))
                                     for attr, _, question in questioned])


def _documents(num_docs: int, seed: int) -> Iterator[str]:
  for i in range(num_docs):
    rng = synth.stream_rng(synth.PERSONA_STREAM, seed, i)
    style = synth.pick(rng, DOCUMENT_STYLES)
    if style == "organisation":
      yield organisation_document(rng)
    else:
      yield person_document(rng, style, f"p{i:07d}")


def persona_documents(num_docs: int, seed: int) -> Iterator[str]:
  """Return an iterator over `num_docs` persona documents, deterministic in `seed`.

  Each document's style is drawn uniformly from DOCUMENT_STYLES. Document i
  does not depend on `num_docs`. Invalid arguments raise at the call, not at
  the first `next`.
  """
  synth.check_seed(num_docs, "num_docs")
  synth.check_seed(seed)
  return _documents(num_docs, seed)
