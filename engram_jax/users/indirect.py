"""Indirect questions for synthetic users: answers that need reasoning over facts.

Schemas, in file order: AGE (ages in the current year), COMPARE (who is
older), DAY_SET (is a day a work or activity day), ROUTINE (weekly activity
arithmetic), ALLERGY (is a dish safe), COMMUTE (clock and minute arithmetic)
and POLICY (whom to call). Every item lists the fact keys its answer needs.
Ages are "the age a person turns in CURRENT_YEAR", so the birth year alone
decides them. The generator gives every person a distinct birth year, so
COMPARE never ties.
"""

import itertools
from typing import Any

import numpy as np

from engram_jax.users import pools
from engram_jax.users.schema import IndirectQA

CURRENT_YEAR = 2026


def _qa(schema: str, variant: str, question: str, answer: Any, keys: list[str]) -> IndirectQA:
  return IndirectQA(schema, variant, question, str(answer), keys)


def _relatives(attrs: dict[str, Any]) -> list[tuple[str, str, int, list[str]]]:
  """Return (relation, answer name, birth year, fact keys) for the user and each relative."""
  people = [("me", "me", attrs["birth_year"], ["birth_year"])]
  for relation in ("spouse", "sibling", "child"):
    if f"{relation}_name" in attrs:
      people.append((relation, attrs[f"{relation}_name"], attrs[f"{relation}_year"],
                     [f"{relation}_name", f"{relation}_year"]))
  return people


def age_questions(attrs: dict[str, Any]) -> list[IndirectQA]:
  items = [_qa("AGE", "self", f"How old do I turn in {CURRENT_YEAR}?",
               CURRENT_YEAR - attrs["birth_year"], ["birth_year"])]
  for relation, _, year, keys in _relatives(attrs)[1:]:
    items.append(_qa("AGE", relation, f"How old does my {relation} turn in {CURRENT_YEAR}?",
                     CURRENT_YEAR - year, keys))
  items.append(_qa("AGE", "car", f"How many years old is my car in {CURRENT_YEAR}?",
                   CURRENT_YEAR - attrs["car_year"], ["car_year"]))
  return items


def _label(relation: str) -> str:
  return "me" if relation == "me" else f"my {relation}"


def compare_questions(attrs: dict[str, Any]) -> list[IndirectQA]:
  """Return four COMPARE items.

  With three people: who is older in each pair, then who was born first. With
  two: older, younger, the age gap and whether the relative was born first.
  """
  people = [p for p in _relatives(attrs) if p[0] != "child"]
  if len(people) < 3 and "child_name" in attrs:
    people = _relatives(attrs)[:3]
  items = []
  pairs = list(itertools.combinations(people, 2))
  for word, pick in (("older", min), ("younger", max)):
    for a, b in pairs:
      winner = pick((a, b), key=lambda person: person[2])
      items.append(_qa("COMPARE", f"{a[0]}_vs_{b[0]}_{word}",
                       f"Who is {word}, {_label(a[0])} or {_label(b[0])}?", winner[1],
                       sorted(set(a[3] + b[3]))))
  if len(people) >= 3:
    trio = people[:3]
    oldest = min(trio, key=lambda person: person[2])
    names = ", ".join(_label(p[0]) for p in trio[:2]) + f" and {_label(trio[2][0])}"
    items.insert(len(pairs), _qa("COMPARE", "oldest_of_three",
                                 f"Who was born first among {names}?", oldest[1],
                                 sorted(set(sum((p[3] for p in trio), [])))))
  other = people[1]
  keys = sorted(set(people[0][3] + other[3]))
  items.append(_qa("COMPARE", f"{other[0]}_gap",
                   f"How many years apart in age are my {other[0]} and I?",
                   abs(attrs["birth_year"] - other[2]), keys))
  items.append(_qa("COMPARE", f"{other[0]}_born_before_me",
                   f"Was my {other[0]} born before me?",
                   "Yes" if other[2] < attrs["birth_year"] else "No", keys))
  return items[:4]


def day_set_questions(attrs: dict[str, Any], rng: np.random.Generator) -> list[IndirectQA]:
  work, activity = attrs["workdays"], attrs["activity_days"]
  work_off = [d for d in pools.WEEKDAYS if d not in work]
  activity_off = [d for d in pools.WEEKDAYS if d not in activity]
  name = attrs["activity"]
  off_day, on_day = _pick(rng, work_off), _pick(rng, work)
  activity_on, activity_off_day = _pick(rng, activity), _pick(rng, activity_off)
  return [
      _qa("DAY_SET", "work_off", f"Do I work on {off_day}s?", "No", ["workdays"]),
      _qa("DAY_SET", "work_on", f"Do I work on {on_day}s?", "Yes", ["workdays"]),
      _qa("DAY_SET", "activity_on", f"Is {activity_on} one of my {name} days?", "Yes",
          ["activity", "activity_days"]),
      _qa("DAY_SET", "activity_off", f"Do I have {name} on {activity_off_day}?", "No",
          ["activity", "activity_days"]),
  ]


def routine_questions(attrs: dict[str, Any], rng: np.random.Generator) -> list[IndirectQA]:
  name, days = attrs["activity"], attrs["activity_days"]
  day = _pick(rng, days)
  both = ["activity", "activity_days"]
  return [
      _qa("ROUTINE", "activity_on_day", f"What is on my weekly schedule every {day}?", name, both),
      _qa("ROUTINE", "count_days", f"How many days a week do I have {name}?", len(days), both),
      _qa("ROUTINE", "first_day", f"What is the first weekday on which I have {name}?",
          days[0], both),
      _qa("ROUTINE", "days_off_work", "How many days a week am I off work?",
          7 - len(attrs["workdays"]), ["workdays"]),
  ]


def allergy_questions(attrs: dict[str, Any], rng: np.random.Generator) -> list[IndirectQA]:
  allergen = attrs["allergy"]
  unsafe = [dish for dish, contents in pools.DISHES.items() if allergen in contents]
  safe = [dish for dish, contents in pools.DISHES.items() if allergen not in contents]
  if len(unsafe) < 2:
    raise ValueError(f"allergen {allergen!r} is in fewer than 2 dishes of pools.DISHES; "
                     "add dishes that contain it")
  bad = [unsafe[i] for i in rng.choice(len(unsafe), size=2, replace=False)]
  good = [safe[i] for i in rng.choice(len(safe), size=2, replace=False)]
  return [
      _qa("ALLERGY", "unsafe_0", f"Can I safely eat {bad[0]}?", "No", ["allergy"]),
      _qa("ALLERGY", "safe_0", f"Can I safely eat {good[0]}?", "Yes", ["allergy"]),
      _qa("ALLERGY", "unsafe_1", f"Would a serving of {bad[1]} set off my food allergy?", "Yes",
          ["allergy"]),
      _qa("ALLERGY", "safe_1", f"Would a serving of {good[1]} set off my food allergy?", "No",
          ["allergy"]),
  ]


def clock_add(hh_mm: str, minutes: int) -> str:
  """Return the 24-hour "HH:MM" time `minutes` after `hh_mm`, wrapping at midnight."""
  hours, mins = (int(part) for part in hh_mm.split(":"))
  total = (hours * 60 + mins + minutes) % (24 * 60)
  return f"{total // 60:02d}:{total % 60:02d}"


def commute_questions(attrs: dict[str, Any]) -> list[IndirectQA]:
  start, commute = attrs["work_start"], attrs["commute_min"]
  both = ["work_start", "commute_min"]
  return [
      _qa("COMMUTE", "leave_time", "When must I leave home to arrive exactly as work starts?",
          clock_add(start, -commute), both),
      _qa("COMMUTE", "round_trip", "How many minutes do I spend commuting on a work day, "
          "there and back?", 2 * commute, ["commute_min"]),
      _qa("COMMUTE", "weekly_minutes", "How many minutes a week do I spend commuting, counting "
          "both ways on work days only?", 2 * commute * len(attrs["workdays"]),
          ["commute_min", "workdays"]),
      _qa("COMMUTE", "arrival", "If I leave home at my work start time, when do I get to work?",
          clock_add(start, commute), both),
  ]


def policy_questions(attrs: dict[str, Any]) -> list[IndirectQA]:
  return [
      _qa("POLICY", "doctor", "Whom should I phone about a medical problem?", attrs["doctor"],
          ["doctor"]),
      _qa("POLICY", "dentist", "Whom should I phone about a toothache?", attrs["dentist"],
          ["dentist"]),
      _qa("POLICY", "emergency_contact", "If nobody can reach me, who should be called instead?",
          attrs["emergency_contact"], ["emergency_contact"]),
      _qa("POLICY", "ec_phone", "What are the last four digits of the number to call if I "
          "cannot be reached?", attrs["ec_phone_last"], ["emergency_contact", "ec_phone_last"]),
  ]


def _pick(rng: np.random.Generator, items: list[str]) -> str:
  return items[int(rng.integers(len(items)))]


def indirect_questions(attrs: dict[str, Any], rng: np.random.Generator) -> list[IndirectQA]:
  """Build every indirect item for one user, in schema order."""
  return (age_questions(attrs) + compare_questions(attrs) + day_set_questions(attrs, rng)
          + routine_questions(attrs, rng) + allergy_questions(attrs, rng)
          + commute_questions(attrs) + policy_questions(attrs))
