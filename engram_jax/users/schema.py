"""Per-user fact records and the loaders for their JSON files.

A user file is one JSON object:

  uid          non-empty string
  attrs        object of sampled attributes (free-form, kept as loaded)
  facts        list of {key, answer, paraphrases}; answer is a string, an
               integer or a list of strings and integers; 1+ paraphrases
  direct_qa    list of {key, question, answer}, key naming a fact
  indirect_qa  list of {schema, variant, question, answer, required_fact_keys},
               every required key naming a fact

A corpus file (the single-fact benchmark) has `user_facts` and `org_facts`
lists of {trigger, prompt, gold, schema} (org facts add `org`) and
`multi_users`, a list of {user_id, facts}. Every validation error names the
file and the field, for example `u003.json: facts[4].paraphrases: ...`.
Unknown extra fields are ignored, so newer files still load.
"""

import dataclasses
import json
import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Union

from absl import logging

Answer = Union[str, int, list[Union[str, int]]]
PathLike = Union[str, os.PathLike]

# File names that `load_users` picks up in a directory: u000.json, m012.json, s0042.json.
_USER_FILE_RE = re.compile(r"^[A-Za-z]+\d+\.json$")
CORPUS_SECTIONS = ("user_facts", "org_facts", "multi_users")


@dataclasses.dataclass(frozen=True)
class Fact:
  key: str
  answer: Answer
  paraphrases: list[str]


@dataclasses.dataclass(frozen=True)
class DirectQA:
  key: str
  question: str
  answer: Union[str, int]


@dataclasses.dataclass(frozen=True)
class IndirectQA:
  schema: str
  variant: str
  question: str
  answer: Union[str, int]
  required_fact_keys: list[str]


@dataclasses.dataclass(frozen=True)
class User:
  """One user's facts and probes; `source_path` is not part of equality."""
  uid: str
  attrs: dict[str, Any]
  facts: list[Fact]
  direct_qa: list[DirectQA]
  indirect_qa: list[IndirectQA]
  source_path: str = dataclasses.field(default="", compare=False)

  def fact(self, key: str) -> Fact:
    """Return the fact with `key`; raise KeyError naming the known keys."""
    for fact in self.facts:
      if fact.key == key:
        return fact
    raise KeyError(f"user {self.uid!r} has no fact {key!r}; keys: {[f.key for f in self.facts]}")


@dataclasses.dataclass(frozen=True)
class CorpusFact:
  """One single-fact benchmark item; owner is the org or multi-user id, else None."""
  trigger: str
  prompt: str
  gold: str
  schema: str
  owner: Union[str, None] = None


@dataclasses.dataclass(frozen=True)
class MultihopItem:
  """Two chained (prompt, gold) facts and a query whose answer composes them."""
  facts: list[tuple[str, str]]
  query: str
  expected: str
  overlap: bool


@dataclasses.dataclass(frozen=True)
class _Loc:
  """Position of a value being validated: the file and a field path."""
  source: str
  field: str = ""

  def at(self, name: Union[str, int]) -> "_Loc":
    if isinstance(name, int):
      return _Loc(self.source, f"{self.field}[{name}]")
    return _Loc(self.source, f"{self.field}.{name}" if self.field else name)

  def fail(self, problem: str, exc: type = ValueError) -> Exception:
    where = f"{self.source}: {self.field}" if self.field else self.source
    return exc(f"{where}: {problem}")


def _type_name(value: Any) -> str:
  return "null" if value is None else type(value).__name__


def _get(obj: Mapping, name: str, loc: _Loc) -> Any:
  if name not in obj:
    raise loc.at(name).fail(f"missing field {name!r}; present fields: {sorted(obj)}")
  return obj[name]


def _object(value: Any, loc: _Loc) -> Mapping:
  if not isinstance(value, dict):
    raise loc.fail(f"expected a JSON object, got {_type_name(value)}", TypeError)
  return value


def _list(value: Any, loc: _Loc, allow_empty: bool = True) -> list:
  if not isinstance(value, list):
    raise loc.fail(f"expected a JSON list, got {_type_name(value)}", TypeError)
  if not allow_empty and not value:
    raise loc.fail("empty list; give at least one entry")
  return value


def _text(value: Any, loc: _Loc) -> str:
  if not isinstance(value, str):
    raise loc.fail(f"expected a string, got {_type_name(value)} {value!r}", TypeError)
  if not value.strip():
    raise loc.fail(f"empty string {value!r}; give a non-blank value")
  return value


def _scalar_answer(value: Any, loc: _Loc) -> Union[str, int]:
  # bool is a subclass of int, but true/false is never a valid answer here.
  if isinstance(value, int) and not isinstance(value, bool):
    return value
  if isinstance(value, str):
    return _text(value, loc)
  raise loc.fail(f"expected a string or an integer, got {_type_name(value)} {value!r}",
                 TypeError)


def _answer(value: Any, loc: _Loc) -> Answer:
  if isinstance(value, list):
    _list(value, loc, allow_empty=False)
    return [_scalar_answer(item, loc.at(i)) for i, item in enumerate(value)]
  return _scalar_answer(value, loc)


def _parse_fact(raw: Any, loc: _Loc) -> Fact:
  obj = _object(raw, loc)
  paraphrases = _list(_get(obj, "paraphrases", loc), loc.at("paraphrases"), allow_empty=False)
  return Fact(
      key=_text(_get(obj, "key", loc), loc.at("key")),
      answer=_answer(_get(obj, "answer", loc), loc.at("answer")),
      paraphrases=[_text(p, loc.at("paraphrases").at(i)) for i, p in enumerate(paraphrases)],
  )


def _known_key(value: Any, keys: set[str], loc: _Loc) -> str:
  key = _text(value, loc)
  if key not in keys:
    raise loc.fail(f"unknown fact key {key!r}; the user's facts are {sorted(keys)}")
  return key


def _parse_direct(raw: Any, keys: set[str], loc: _Loc) -> DirectQA:
  obj = _object(raw, loc)
  return DirectQA(
      key=_known_key(_get(obj, "key", loc), keys, loc.at("key")),
      question=_text(_get(obj, "question", loc), loc.at("question")),
      answer=_scalar_answer(_get(obj, "answer", loc), loc.at("answer")),
  )


def _parse_indirect(raw: Any, keys: set[str], loc: _Loc) -> IndirectQA:
  obj = _object(raw, loc)
  required_loc = loc.at("required_fact_keys")
  required = _list(_get(obj, "required_fact_keys", loc), required_loc, allow_empty=False)
  return IndirectQA(
      schema=_text(_get(obj, "schema", loc), loc.at("schema")),
      variant=_text(_get(obj, "variant", loc), loc.at("variant")),
      question=_text(_get(obj, "question", loc), loc.at("question")),
      answer=_scalar_answer(_get(obj, "answer", loc), loc.at("answer")),
      required_fact_keys=[_known_key(k, keys, required_loc.at(i)) for i, k in enumerate(required)],
  )


def parse_user(obj: Any, source: str = "<user>") -> User:
  """Validate one decoded user object; errors name `source` and the field."""
  loc = _Loc(source)
  obj = _object(obj, loc)
  uid = _text(_get(obj, "uid", loc), loc.at("uid"))
  attrs = _object(_get(obj, "attrs", loc), loc.at("attrs"))
  facts_loc = loc.at("facts")
  raw_facts = _list(_get(obj, "facts", loc), facts_loc, allow_empty=False)
  facts = [_parse_fact(raw, facts_loc.at(i)) for i, raw in enumerate(raw_facts)]
  seen: dict[str, int] = {}
  for i, fact in enumerate(facts):
    if fact.key in seen:
      raise facts_loc.at(i).at("key").fail(
          f"duplicate fact key {fact.key!r} (also facts[{seen[fact.key]}]); keys must be unique")
    seen[fact.key] = i
  keys = set(seen)
  direct_loc, indirect_loc = loc.at("direct_qa"), loc.at("indirect_qa")
  direct = _list(_get(obj, "direct_qa", loc), direct_loc)
  indirect = _list(_get(obj, "indirect_qa", loc), indirect_loc)
  return User(
      uid=uid,
      attrs=dict(attrs),
      facts=facts,
      direct_qa=[_parse_direct(raw, keys, direct_loc.at(i)) for i, raw in enumerate(direct)],
      indirect_qa=[_parse_indirect(raw, keys, indirect_loc.at(i))
                   for i, raw in enumerate(indirect)],
      source_path=source,
  )


def _read_json(path: PathLike) -> Any:
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: file not found; pass the path of a JSON file")
  text = path.read_text(encoding="utf-8")
  try:
    return json.loads(text)
  except json.JSONDecodeError as err:
    raise ValueError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: "
                     f"{err.msg}") from err


def load_user(path: PathLike) -> User:
  """Load and validate one user file."""
  return parse_user(_read_json(path), source=str(path))


def load_users(path_or_dir: PathLike) -> list[User]:
  """Load one user file, or every `<letters><digits>.json` in a directory, sorted by name.

  Raises ValueError when a directory contains no user file or two files share a uid.
  """
  path = pathlib.Path(path_or_dir)
  if path.is_file():
    return [load_user(path)]
  if not path.is_dir():
    raise FileNotFoundError(f"{path}: no such file or directory; pass a user file or directory")
  files = sorted(p for p in path.iterdir() if p.is_file() and _USER_FILE_RE.match(p.name))
  if not files:
    raise ValueError(f"{path}: no user files (names like u000.json); check the directory")
  users = [load_user(p) for p in files]
  owners: dict[str, str] = {}
  for user in users:
    if user.uid in owners:
      raise ValueError(f"{user.source_path}: uid: {user.uid!r} is also the uid of "
                       f"{owners[user.uid]}; uids must be unique")
    owners[user.uid] = user.source_path
  return users


def user_to_json(user: User) -> dict[str, Any]:
  """Return the user as a JSON-ready dict in the file format described above."""
  return {
      "uid": user.uid,
      "attrs": user.attrs,
      "facts": [dataclasses.asdict(f) for f in user.facts],
      "direct_qa": [dataclasses.asdict(q) for q in user.direct_qa],
      "indirect_qa": [dataclasses.asdict(q) for q in user.indirect_qa],
  }


def save_user(user: User, path: PathLike) -> None:
  """Write `user` as one JSON file (2-space indent, UTF-8), creating parent directories."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  text = json.dumps(user_to_json(user), indent=2, ensure_ascii=False)
  path.write_text(text + "\n", encoding="utf-8")


def _parse_corpus_fact(raw: Any, loc: _Loc, owner: Union[str, None],
                       owner_field: Union[str, None] = None) -> CorpusFact:
  obj = _object(raw, loc)
  if owner_field is not None:
    owner = _text(_get(obj, owner_field, loc), loc.at(owner_field))
  return CorpusFact(
      trigger=_text(_get(obj, "trigger", loc), loc.at("trigger")),
      prompt=_text(_get(obj, "prompt", loc), loc.at("prompt")),
      gold=_text(_get(obj, "gold", loc), loc.at("gold")),
      schema=_text(_get(obj, "schema", loc), loc.at("schema")),
      owner=owner,
  )


def _multi_user_entries(raw: Any, loc: _Loc) -> list[tuple[str, list, _Loc]]:
  """Return (owner id, raw facts, location) for each multi-user entry.

  Accepts a list of {user_id, facts} objects or an object mapping user id to facts.
  """
  if isinstance(raw, dict):
    return [(str(uid), _list(facts, loc.at(str(uid))), loc.at(str(uid)))
            for uid, facts in raw.items()]
  entries = []
  for i, entry in enumerate(_list(raw, loc)):
    obj = _object(entry, loc.at(i))
    user_id = _get(obj, "user_id", loc.at(i))
    if not isinstance(user_id, (str, int)) or isinstance(user_id, bool):
      raise loc.at(i).at("user_id").fail(
          f"expected a string or an integer, got {_type_name(user_id)}", TypeError)
    facts_loc = loc.at(i).at("facts")
    entries.append((str(user_id), _list(_get(obj, "facts", loc.at(i)), facts_loc), facts_loc))
  return entries


def load_corpus(path: PathLike) -> dict[str, list[CorpusFact]]:
  """Load a single-fact benchmark corpus into {section: facts}.

  All three sections are always present (missing ones are empty). `multi_users`
  is flattened in file order with `owner` = the user id as a string; group it
  again with `facts_by_owner`.
  """
  loc = _Loc(str(path))
  obj = _object(_read_json(path), loc)
  unknown = sorted(set(obj) - set(CORPUS_SECTIONS))
  if unknown:
    logging.warning("[users] %s: ignoring unknown corpus sections %s", path, unknown)
  if not set(obj) & set(CORPUS_SECTIONS):
    raise loc.fail(f"no corpus section; expected one of {list(CORPUS_SECTIONS)}")
  user_loc, org_loc = loc.at("user_facts"), loc.at("org_facts")
  corpus = {
      "user_facts": [_parse_corpus_fact(raw, user_loc.at(i), None)
                     for i, raw in enumerate(_list(obj.get("user_facts", []), user_loc))],
      "org_facts": [_parse_corpus_fact(raw, org_loc.at(i), None, owner_field="org")
                    for i, raw in enumerate(_list(obj.get("org_facts", []), org_loc))],
      "multi_users": [],
  }
  for owner, facts, facts_loc in _multi_user_entries(obj.get("multi_users", []),
                                                     loc.at("multi_users")):
    corpus["multi_users"].extend(
        _parse_corpus_fact(raw, facts_loc.at(i), owner) for i, raw in enumerate(facts))
  return corpus


def facts_by_owner(facts: Sequence[CorpusFact]) -> dict[Union[str, None], list[CorpusFact]]:
  """Group corpus facts by owner, keeping first-seen owner order and file order."""
  groups: dict[Union[str, None], list[CorpusFact]] = {}
  for fact in facts:
    groups.setdefault(fact.owner, []).append(fact)
  return groups


def load_multihop_chains(path: PathLike) -> list[MultihopItem]:
  """Load the chained two-fact items: {items: [{facts, query, expected, overlap}]}."""
  loc = _Loc(str(path))
  items_loc = loc.at("items")
  raw_items = _list(_get(_object(_read_json(path), loc), "items", loc), items_loc)
  items = []
  for i, raw in enumerate(raw_items):
    item_loc = items_loc.at(i)
    obj = _object(raw, item_loc)
    facts_loc = item_loc.at("facts")
    pairs = []
    for j, pair in enumerate(_list(_get(obj, "facts", item_loc), facts_loc, allow_empty=False)):
      if not isinstance(pair, list) or len(pair) != 2:
        raise facts_loc.at(j).fail(f"expected a [prompt, gold] pair, got {pair!r}", TypeError)
      pairs.append((_text(pair[0], facts_loc.at(j).at(0)), _text(pair[1], facts_loc.at(j).at(1))))
    overlap = _get(obj, "overlap", item_loc)
    if not isinstance(overlap, bool):
      raise item_loc.at("overlap").fail(f"expected true or false, got {overlap!r}", TypeError)
    items.append(MultihopItem(
        facts=pairs,
        query=_text(_get(obj, "query", item_loc), item_loc.at("query")),
        expected=_text(_get(obj, "expected", item_loc), item_loc.at("expected")),
        overlap=overlap,
    ))
  return items
