"""Deterministic synthetic users in the reference personal schema.

`generate_users(n, seed)` returns users "s0000", "s0001", ... with 30-34 facts
(spouse facts for about 75% of users, child facts for about 70%), 2-3
paraphrases per fact, one direct question per fact and 27-29 indirect
questions (see `indirect`). User i is drawn from its own generator seeded
with (USER_STREAM, seed, i), so it is the same whatever `n` is, and no global
random state is read or changed. Persona documents for pretraining draw from
PERSONA_STREAM instead (see `persona`), so by default they never contain an
evaluation user.

Within a user, the self, spouse, child, sibling and emergency-contact first
names are distinct, the doctor and dentist differ, and every person has a
distinct birth year. So no two facts share a writing prompt and no age
comparison ties.
"""

from collections.abc import Iterator
from typing import Any

import numpy as np

from engram_jax.users import indirect
from engram_jax.users import pools
from engram_jax.users import prompts
from engram_jax.users import templates
from engram_jax.users.schema import DirectQA, Fact, User

USER_STREAM = 0x5EED_0001  # first entropy word of every user generator
PERSONA_STREAM = 0x5EED_0002  # first entropy word of every persona-document generator
SCHEMAS = ("personal",)
SPOUSE_PROBABILITY = 0.75
CHILD_PROBABILITY = 0.7


def check_seed(seed: int, name: str = "seed") -> int:
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"{name}={seed!r} is invalid; pass a non-negative integer")
  return int(seed)


def stream_rng(stream: int, seed: int, index: int) -> np.random.Generator:
  """Return the generator of item `index` of `stream` under `seed`."""
  return np.random.default_rng([stream, check_seed(seed), check_seed(index, "index")])


def pick(rng: np.random.Generator, pool: Any) -> Any:
  return pool[int(rng.integers(len(pool)))]


def pick_distinct(rng: np.random.Generator, pool: Any, count: int) -> list[Any]:
  return [pool[int(i)] for i in rng.choice(len(pool), size=count, replace=False)]


def _weekdays(rng: np.random.Generator, count: int, consecutive: bool) -> list[str]:
  """Return `count` weekdays in week order, as one block or a random subset."""
  if consecutive:
    start = int(rng.integers(0, 7 - count + 1))
    return list(pools.WEEKDAYS[start:start + count])
  chosen = sorted(int(i) for i in rng.choice(7, size=count, replace=False))
  return [pools.WEEKDAYS[i] for i in chosen]


def _birth_years(rng: np.random.Generator) -> dict[str, int]:
  """Return distinct birth years for the user, spouse, sibling and child."""
  birth = int(rng.integers(1960, 2003))
  spouse = birth + int(pick(rng, [d for d in range(-8, 9) if d != 0]))
  sibling = birth + int(pick(rng, [d for d in range(-12, 13) if d not in (0, spouse - birth)]))
  # A child is born at least 20 years after the user, so after the spouse and sibling too.
  child = int(rng.integers(birth + 20, min(2024, birth + 44) + 1))
  return {"birth_year": birth, "spouse_year": spouse, "sibling_year": sibling,
          "child_year": child}


def _people(rng: np.random.Generator) -> dict[str, Any]:
  first, spouse, child, sibling, contact = pick_distinct(rng, pools.FIRST_NAMES, 5)
  last, contact_last, doctor, dentist = pick_distinct(rng, pools.LAST_NAMES, 4)
  years = _birth_years(rng)
  people = {
      "first_name": first, "last_name": last, "full_name": f"{first} {last}",
      "birth_year": years["birth_year"],
      "sibling_name": sibling, "sibling_year": years["sibling_year"],
      "emergency_contact": f"{contact} {contact_last}",
      "doctor": f"Dr. {doctor}", "dentist": f"Dr. {dentist}",
  }
  if rng.random() < SPOUSE_PROBABILITY:
    people.update(spouse_name=spouse, spouse_year=years["spouse_year"])
  if rng.random() < CHILD_PROBABILITY:
    people.update(child_name=child, child_year=years["child_year"])
  return people


def sample_attrs(rng: np.random.Generator, uid: str) -> dict[str, Any]:
  """Draw one synthetic person's attributes (JSON types only: str, int, list)."""
  attrs: dict[str, Any] = {"uid": uid, **_people(rng)}
  attrs["city"], attrs["timezone"] = pick(rng, pools.CITIES)
  attrs["job"] = pick(rng, pools.JOBS)
  attrs["employer"] = f"{pick(rng, pools.EMPLOYER_HEADS)} {pick(rng, pools.EMPLOYER_TAILS)}"
  work_count = int(pick(rng, (3, 4, 4, 5, 5, 5, 6)))
  attrs["workdays"] = _weekdays(rng, work_count, consecutive=rng.random() < 0.6)
  start_min = 6 * 60 + 15 * int(rng.integers(0, 24))  # 06:00 to 11:45
  attrs["work_start"] = f"{start_min // 60:02d}:{start_min % 60:02d}"
  attrs["commute_min"] = int(rng.integers(5, 91))
  attrs["pet_species"], attrs["pet_name"] = pick(rng, pools.PET_SPECIES), pick(rng, pools.PET_NAMES)
  attrs["car_year"] = int(rng.integers(2006, 2026))
  attrs["car_desc"] = f"{attrs['car_year']} {pick(rng, pools.CAR_MODELS)}"
  attrs["hobby1"], attrs["hobby2"] = pick_distinct(rng, pools.HOBBIES, 2)
  attrs["cuisine"] = pick(rng, pools.CUISINES)
  attrs["allergy"] = pick(rng, pools.ALLERGENS)
  attrs["activity"] = pick(rng, pools.ACTIVITIES)
  attrs["activity_days"] = _weekdays(rng, int(rng.integers(2, 5)), consecutive=False)
  attrs["rent"] = 700 + 25 * int(rng.integers(0, 153))  # 700 to 4,500 dollars
  attrs["ec_phone_last"] = f"{int(rng.integers(0, 10_000)):04d}"
  attrs["phone_model"] = pick(rng, pools.PHONE_MODELS)
  attrs["coffee"] = pick(rng, pools.COFFEES)
  attrs["running_pace"] = int(rng.integers(6, 14))
  attrs["shoe_size"] = int(rng.integers(5, 16))
  attrs["color"] = pick(rng, pools.COLORS)
  return attrs


def fact_answer(key: str, attrs: dict[str, Any]) -> Any:
  """Return the answer of fact `key` from the attributes, in its JSON type."""
  if key == "name":
    return attrs["full_name"]
  if key == "car":
    return attrs["car_desc"]
  if key == "pet":
    return f"{attrs['pet_species']} named {attrs['pet_name']}"
  value = attrs[key]
  return list(value) if isinstance(value, list) else value


def template_context(key: str, attrs: dict[str, Any]) -> dict[str, Any]:
  """Return the `str.format` fields for the templates of fact `key`."""
  answer = prompts.render_answer(fact_answer(key, attrs))
  return {**attrs, "a": answer, "art": templates.article(answer), "n": attrs["full_name"],
          "f": attrs["first_name"]}


def fact_keys(attrs: dict[str, Any]) -> list[str]:
  """Return the fact keys this person has, in file order."""
  return [key for key in templates.TEMPLATES
          if key not in templates.OPTIONAL_KEYS or templates.OPTIONAL_KEYS[key] in attrs]


def _paraphrases(rng: np.random.Generator, key: str, ctx: dict[str, Any]) -> list[str]:
  """Pick 2-3 statements in random order; at least one ends with the answer."""
  spec = templates.TEMPLATES[key]
  options = [t.format(**ctx) for t in spec.first + spec.third]
  order = [int(i) for i in rng.permutation(len(options))]
  count = int(rng.integers(2, 4))
  chosen = [options[i] for i in order[:count]]
  if all(prompts.cut_before_answer(s, ctx["a"]) is None for s in chosen):
    enders = [options[i] for i in order[count:]
              if prompts.cut_before_answer(options[i], ctx["a"]) is not None]
    if not enders:
      raise ValueError(f"no template of fact {key!r} ends with its answer; "
                       "add one that ends in '{a}.'")
    chosen[-1] = enders[0]
  return chosen


def build_user(rng: np.random.Generator, uid: str) -> User:
  """Draw one complete synthetic user from `rng`."""
  attrs = sample_attrs(rng, uid)
  facts, direct = [], []
  for key in fact_keys(attrs):
    ctx = template_context(key, attrs)
    facts.append(Fact(key, fact_answer(key, attrs), _paraphrases(rng, key, ctx)))
    direct.append(DirectQA(key, templates.TEMPLATES[key].ask.format(**ctx), ctx["a"]))
  return User(uid=uid, attrs=attrs, facts=facts, direct_qa=direct,
              indirect_qa=indirect.indirect_questions(attrs, rng))


def generate_users(num_users: int, seed: int, *, schema: str = "personal") -> list[User]:
  """Generate `num_users` synthetic users, deterministic in `seed`.

  User i has uid f"s{i:04d}" and does not depend on `num_users`.
  """
  if schema not in SCHEMAS:
    raise ValueError(f"schema={schema!r} is not supported; use one of {list(SCHEMAS)}")
  check_seed(num_users, "num_users")
  return [build_user(stream_rng(USER_STREAM, seed, i), f"s{i:04d}") for i in range(num_users)]


def persona_documents(num_docs: int, seed: int) -> Iterator[str]:
  """Yield `num_docs` persona documents for pretraining; see `engram_jax.users.persona`."""
  # Imported here because the persona module builds on this one.
  from engram_jax.users import persona  # pylint: disable=g-import-not-at-top
  return persona.persona_documents(num_docs, seed)
