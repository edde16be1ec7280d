"""User file loaders, fact prompts, the answer matcher and the synthetic generators."""

import collections
import copy
import json
import pathlib
import random
import time

import numpy as np
import pytest

from engram_jax import users as U
from engram_jax.users import indirect
from engram_jax.users import persona
from engram_jax.users import pools
from engram_jax.users import synth
from engram_jax.users import templates
from launch import make_users

# The reference data set beside the checkout (../shared/data), when present.
SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED_DATA / "users").is_dir(),
                                  reason="reference data folder not present")


def _user_json() -> dict:
  """A small hand-made user in the reference format."""
  return {
      "uid": "t001",
      "attrs": {"first_name": "Ada"},
      "facts": [
          {"key": "city", "answer": "Tulsa",
           "paraphrases": ["Ada lives in Tulsa.", "I live in Tulsa.", "Tulsa is home."]},
          {"key": "rent", "answer": 2600,
           "paraphrases": ["My monthly rent is $2600.", "I pay 2600 dollars a month."]},
          {"key": "gym_days", "answer": ["Monday", "Friday"],
           "paraphrases": ["I go to the gym on Monday, Friday."]},
          {"key": "employer", "answer": "Acme Inc.",
           "paraphrases": ["I work at Acme Inc."]},
      ],
      "direct_qa": [
          {"key": "city", "question": "Which city do I live in?", "answer": "Tulsa"},
          {"key": "rent", "question": "What is my rent?", "answer": "2600"},
      ],
      "indirect_qa": [
          {"schema": "DAY_SET", "variant": "gym_sun", "question": "Do I go to the gym on Sunday?",
           "answer": "No", "required_fact_keys": ["gym_days"]},
      ],
  }


def _hand_user() -> U.User:
  return U.parse_user(_user_json(), source="t001.json")


def _write(path: pathlib.Path, obj) -> pathlib.Path:
  path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj, encoding="utf-8")
  return path


# ---------------------------------------------------------------- reference files


@needs_shared
def test_reference_users_load():
  users = U.load_users(SHARED_DATA / "users")
  assert len(users) == len(list((SHARED_DATA / "users").glob("*.json")))
  assert all(32 <= len(u.facts) <= 34 for u in users)


@needs_shared
def test_reference_medical_users_load():
  users = U.load_users(SHARED_DATA / "users_medical")
  assert all(len(u.facts) == 29 for u in users)
  assert all(u.uid.startswith("m") for u in users)


@needs_shared
def test_reference_corpus_loads():
  corpus = U.load_corpus(SHARED_DATA / "corpora.json")
  assert len(corpus["user_facts"]) == 100
  assert len(corpus["org_facts"]) == 100
  assert all(f.owner for f in corpus["org_facts"])
  groups = U.facts_by_owner(corpus["multi_users"])
  assert len(groups) == 100
  assert {len(facts) for facts in groups.values()} == {30}


@needs_shared
def test_reference_multihop_loads():
  items = U.load_multihop_chains(SHARED_DATA / "multihop_chains.json")
  assert len(items) == 63
  assert sum(item.overlap for item in items) == 32
  assert all(len(item.facts) == 2 for item in items)


@needs_shared
def test_reference_prompts_rebuild_sentences():
  for user in U.load_users(SHARED_DATA / "users") + U.load_users(SHARED_DATA / "users_medical"):
    for fp in U.fact_prompts(user):
      if not fp.used_fallback:
        sentences = [s.rstrip(".") for s in user.fact(fp.key).paraphrases]
        assert fp.prompt + fp.gold in sentences, (user.uid, fp.key)


@needs_shared
def test_reference_rent_cut_parity():
  user = U.load_user(SHARED_DATA / "users" / "u000.json")
  strict = {fp.key: fp for fp in U.fact_prompts(user)}
  parity = {fp.key: fp for fp in U.fact_prompts(user, word_start=False)}
  assert strict["rent"].prompt == "My rent is"
  assert parity["rent"].prompt == "My monthly rent is $"
  assert strict["name"].prompt == parity["name"].prompt == "My name is"


# ---------------------------------------------------------------- validation errors


def _mutations():
  def drop(field):
    return lambda d: d.pop(field)

  def setf(path, value):
    def apply(d):
      target = d
      for part in path[:-1]:
        target = target[part]
      target[path[-1]] = value
    return apply

  def dup_key(d):
    d["facts"][1]["key"] = "city"

  return [
      ("missing_uid", drop("uid"), "uid", ValueError),
      ("missing_facts", drop("facts"), "facts", ValueError),
      ("empty_facts", setf(["facts"], []), "facts", ValueError),
      ("attrs_type", setf(["attrs"], [1]), "attrs", TypeError),
      ("empty_answer", setf(["facts", 0, "answer"], "  "), "facts[0].answer", ValueError),
      ("float_answer", setf(["facts", 1, "answer"], 26.5), "facts[1].answer", TypeError),
      ("bool_answer", setf(["facts", 1, "answer"], True), "facts[1].answer", TypeError),
      ("empty_list_answer", setf(["facts", 2, "answer"], []), "facts[2].answer", ValueError),
      ("list_item_type", setf(["facts", 2, "answer"], ["Monday", None]), "facts[2].answer[1]",
       TypeError),
      ("no_paraphrases", setf(["facts", 0, "paraphrases"], []), "facts[0].paraphrases",
       ValueError),
      ("paraphrase_type", setf(["facts", 0, "paraphrases"], ["ok.", 3]),
       "facts[0].paraphrases[1]", TypeError),
      ("missing_key", lambda d: d["facts"][3].pop("key"), "facts[3].key", ValueError),
      ("duplicate_key", dup_key, "facts[1].key", ValueError),
      ("direct_unknown_key", setf(["direct_qa", 1, "key"], "salary"), "direct_qa[1].key",
       ValueError),
      ("direct_question_type", setf(["direct_qa", 0, "question"], None), "direct_qa[0].question",
       TypeError),
      ("indirect_unknown_key", setf(["indirect_qa", 0, "required_fact_keys"], ["gym_days", "pet"]),
       "indirect_qa[0].required_fact_keys[1]", ValueError),
      ("indirect_no_keys", setf(["indirect_qa", 0, "required_fact_keys"], []),
       "indirect_qa[0].required_fact_keys", ValueError),
      ("indirect_missing_answer", lambda d: d["indirect_qa"][0].pop("answer"),
       "indirect_qa[0].answer", ValueError),
      ("qa_list_type", setf(["direct_qa"], {"key": "city"}), "direct_qa", TypeError),
  ]


@pytest.mark.parametrize("name,mutate,field,exc", _mutations(), ids=[m[0] for m in _mutations()])
def test_user_error_names_file_and_field(tmp_path, name, mutate, field, exc):
  obj = copy.deepcopy(_user_json())
  mutate(obj)
  path = _write(tmp_path / f"bad_{name}.json", obj)
  with pytest.raises(exc) as info:
    U.load_user(path)
  assert str(path) in str(info.value)
  assert field in str(info.value)


def test_malformed_json_names_file(tmp_path):
  path = _write(tmp_path / "u000.json", '{"uid": "u000", "facts": [')
  with pytest.raises(ValueError, match="invalid JSON at line 1") as info:
    U.load_user(path)
  assert str(path) in str(info.value)


def test_missing_file_raises(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.json"):
    U.load_user(tmp_path / "nope.json")


def test_load_users_sorted_dir(tmp_path):
  for uid in ("u002", "u000", "m001"):
    _write(tmp_path / f"{uid}.json", dict(_user_json(), uid=uid))
  _write(tmp_path / "notes.json", {"not": "a user"})
  assert [u.uid for u in U.load_users(tmp_path)] == ["m001", "u000", "u002"]


def test_load_users_duplicate_uid(tmp_path):
  _write(tmp_path / "u000.json", _user_json())
  _write(tmp_path / "u001.json", _user_json())
  with pytest.raises(ValueError, match="u001.json: uid"):
    U.load_users(tmp_path)


def test_load_users_empty_dir(tmp_path):
  with pytest.raises(ValueError, match="no user files"):
    U.load_users(tmp_path)


def _corpus_json() -> dict:
  fact = {"trigger": "I live in", "prompt": "I live in", "gold": " Austin", "schema": "city"}
  return {
      "user_facts": [fact],
      "org_facts": [dict(fact, org="Initech", trigger="Initech is in", prompt="Initech is in")],
      "multi_users": [{"user_id": 7, "facts": [fact, dict(fact, gold=" Boise")]}],
  }


def test_corpus_sections_and_owners(tmp_path):
  corpus = U.load_corpus(_write(tmp_path / "c.json", _corpus_json()))
  assert corpus["user_facts"][0].owner is None
  assert corpus["org_facts"][0].owner == "Initech"
  assert [f.owner for f in corpus["multi_users"]] == ["7", "7"]
  assert [f.gold for f in corpus["multi_users"]] == [" Austin", " Boise"]


def test_corpus_mapping_nesting(tmp_path):
  obj = _corpus_json()
  obj["multi_users"] = {"3": obj["multi_users"][0]["facts"]}
  corpus = U.load_corpus(_write(tmp_path / "c.json", obj))
  assert list(U.facts_by_owner(corpus["multi_users"])) == ["3"]


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d["org_facts"][0].pop("org"), "org_facts[0].org"),
    (lambda d: d["user_facts"][0].update(gold=""), "user_facts[0].gold"),
    (lambda d: d["multi_users"][0]["facts"][1].pop("schema"), "multi_users[0].facts[1].schema"),
    (lambda d: d["multi_users"][0].update(user_id=None), "multi_users[0].user_id"),
])
def test_corpus_error_names_field(tmp_path, mutate, field):
  obj = _corpus_json()
  mutate(obj)
  path = _write(tmp_path / "corpus.json", obj)
  with pytest.raises((ValueError, TypeError)) as info:
    U.load_corpus(path)
  assert str(path) in str(info.value)
  assert field in str(info.value)


def test_multihop_bad_pair(tmp_path):
  obj = {"items": [{"facts": [["p", " g"], ["only one"]], "query": "q", "expected": " e",
                    "overlap": False}]}
  with pytest.raises(TypeError, match=r"items\[0\]\.facts\[1\]"):
    U.load_multihop_chains(_write(tmp_path / "m.json", obj))


# ---------------------------------------------------------------- fact prompts


def test_prompt_plus_gold_rebuilds_paraphrase():
  by_key = {fp.key: fp for fp in U.fact_prompts(_hand_user())}
  assert by_key["city"].prompt == "Ada lives in"
  assert by_key["city"].prompt + by_key["city"].gold == "Ada lives in Tulsa"
  assert by_key["gym_days"].gold == " Monday, Friday"
  assert by_key["gym_days"].prompt + by_key["gym_days"].gold == "I go to the gym on Monday, Friday"


def test_phrasings_are_all_answer_final_cuts():
  city = U.fact_prompts(_hand_user())[0]
  assert city.phrasings == ["Ada lives in", "I live in"]
  assert city.used_fallback is False


def test_fallback_when_no_paraphrase_ends():
  rent = U.fact_prompts(_hand_user())[1]
  assert rent.used_fallback is True
  assert rent.prompt == "My rent is"
  assert rent.phrasings == ["My rent is"]
  assert rent.gold == " 2600"


def test_fallback_key_underscores():
  fact = U.Fact("coffee_order", "mocha", ["Mocha, always."])
  assert U.fact_phrasings(fact) == ["My coffee order is"]
  assert U.fact_text(fact) == "My coffee order is mocha"


def test_word_start_false_reference_cut():
  rent = U.fact_prompts(_hand_user(), word_start=False)[1]
  assert rent.prompt == "My monthly rent is $"
  assert rent.used_fallback is False


def test_answer_with_final_period():
  employer = U.fact_prompts(_hand_user())[3]
  assert employer.prompt == "I work at"
  assert employer.gold == " Acme Inc."


def test_heldout_prompts_from_direct_qa():
  by_key = {fp.key: fp for fp in U.fact_prompts(_hand_user())}
  assert by_key["city"].heldout_prompts == ["Q: Which city do I live in?\nA:"]
  assert by_key["gym_days"].heldout_prompts == []


def test_heldout_never_a_writing_prompt():
  for user in U.generate_users(5, 3):
    for fp in U.fact_prompts(user):
      assert fp.heldout_prompts, (user.uid, fp.key)
      assert not set(fp.heldout_prompts) & set(fp.phrasings), (user.uid, fp.key)


def test_first_word_gold():
  assert U.first_word_gold("Harper Nguyen") == " Harper"
  assert U.first_word_gold(1993) == " 1993"
  assert U.fact_prompts(_hand_user())[0].gold_first_word == " Tulsa"


def test_render_answer_forms():
  assert U.render_answer(["Monday", "Wednesday", "Friday"]) == "Monday, Wednesday, Friday"
  assert U.render_answer(7) == "7"
  assert U.render_answer("cat named Figaro") == "cat named Figaro"


def test_fact_text_first_answer_final():
  fact = U.Fact("city", "Tulsa", ["Tulsa is home.", "I live in Tulsa."])
  assert U.fact_text(fact) == "I live in Tulsa."


def test_indirect_probes_format():
  assert U.indirect_probes(_hand_user()) == [("Q: Do I go to the gym on Sunday?\nA:", "No")]
  assert U.indirect_probes(_hand_user(), max_items=0) == []


# ---------------------------------------------------------------- matcher


@pytest.mark.parametrize("prediction,gold,expected", [
    ("I don't know", "No", False),  # "no" inside "know" is not a word match
    ("No, it is not safe.", "No", True),
    ("Yes. No wait.", "No", False),  # the first yes/no decides
    ("NO!", "no", True),
    ("13", "3", False),
    ("about 3 days", "3", True),
    ("3", 3, True),
    ("twenty minutes", "20", True),
    ("twenty-three", "23", True),
    ("a 20-minute drive", 20, True),
    ("29", "29.0", True),
    ("9:40 am", "09:40", True),
    ("18,250 mg", "18250", True),
    ("$2,600 a month", "2600", True),
    ("Dr Krause", "Dr. Krause", True),
    ("Krause", "Dr. Krause", False),
    ("Quinn is older", "Quinn (spouse)", True),
    ("Harper's", "Harper", True),
    ("blood type A+", "A+", True),
    ("blood type A", "A+", False),
    ("Friday, Monday and Wednesday", "Monday, Wednesday, Friday", True),
    ("Monday and Friday", ["Monday", "Wednesday", "Friday"], False),
    ("wednesday friday monday", ["Monday", "Wednesday", "Friday"], True),
    ("Portland\u2019s mayor", "Portland", True),
    ("Portlandia", "Portland", False),
])
def test_answer_matches_cases(prediction, gold, expected):
  assert U.answer_matches(prediction, gold) is expected


@pytest.mark.parametrize("prediction,gold,expected", [
    (" Dr. Krause.", "Dr. Krause", True),
    ("dr krause", "Dr. Krause", True),
    ("Dr. Krause is my doctor", "Dr. Krause", False),
    ("Friday, Monday and Wednesday", ["Monday", "Wednesday", "Friday"], True),
    ("Friday and Monday", ["Monday", "Wednesday", "Friday"], False),
    ("2,600", 2600, True),
    ("No.", "No", True),
])
def test_exact_match_cases(prediction, gold, expected):
  assert U.exact_match(prediction, gold) is expected


def test_normalize_text():
  assert U.normalize_text("  Dr. KRAUSE, at 09:40!") == "dr krause at 9:40"


def test_empty_gold_rejected():
  with pytest.raises(ValueError, match="no words"):
    U.answer_matches("anything", " ... ")


# ---------------------------------------------------------------- synthetic users


def test_generate_deterministic():
  assert U.generate_users(4, 11) == U.generate_users(4, 11)


def test_generate_prefix_stable():
  assert U.generate_users(3, 11) == U.generate_users(6, 11)[:3]


def test_generate_seeds_differ():
  first = U.generate_users(3, 0)
  second = U.generate_users(3, 1)
  assert all(a.attrs != b.attrs for a, b in zip(first, second))


def test_generate_leaves_global_rng():
  np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
  U.generate_users(2, 5)
  list(U.persona_documents(5, 5))
  assert np.array_equal(np.random.get_state()[1], np_state)
  assert random.getstate() == py_state


def test_generate_bad_arguments():
  with pytest.raises(ValueError, match="seed=-1"):
    U.generate_users(2, -1)
  with pytest.raises(ValueError, match="num_users"):
    U.generate_users(2.5, 0)
  with pytest.raises(ValueError, match="schema='medical'"):
    U.generate_users(2, 0, schema="medical")


def test_generated_shape():
  users = U.generate_users(60, 2)
  assert [u.uid for u in users[:2]] == ["s0000", "s0001"]
  assert all(30 <= len(u.facts) <= 34 for u in users)
  assert all(2 <= len(f.paraphrases) <= 3 for u in users for f in u.facts)
  assert all([q.key for q in u.direct_qa] == [f.key for f in u.facts] for u in users)
  schemas = {q.schema for u in users for q in u.indirect_qa}
  assert {"AGE", "COMPARE", "DAY_SET", "ROUTINE", "ALLERGY"} <= schemas


def test_generated_probe_order():
  """The first 20 indirect items cover the five reasoning schemas, AGE first."""
  for user in U.generate_users(20, 4):
    first20 = [q.schema for q in user.indirect_qa[:20]]
    assert first20[0] == "AGE"
    assert set(first20) == {"AGE", "COMPARE", "DAY_SET", "ROUTINE", "ALLERGY"}


def test_generated_round_trip(tmp_path):
  user = U.generate_users(1, 9)[0]
  U.save_user(user, tmp_path / "s0000.json")
  loaded = U.load_user(tmp_path / "s0000.json")
  assert loaded == user
  assert loaded.source_path == str(tmp_path / "s0000.json")
  assert U.user_to_json(loaded) == json.loads((tmp_path / "s0000.json").read_text())


def test_generated_prompts_no_fallback():
  for user in U.generate_users(40, 6):
    assert not any(fp.used_fallback for fp in U.fact_prompts(user)), user.uid


def test_generated_prompts_unique_within_user():
  for user in U.generate_users(40, 6):
    phrasings = [p for fp in U.fact_prompts(user) for p in fp.phrasings]
    assert len(phrasings) == len(set(phrasings)), user.uid


def test_generated_indirect_answers():
  for user in U.generate_users(30, 8):
    a = user.attrs
    answers = {(q.schema, q.variant): q.answer for q in user.indirect_qa}
    assert answers[("AGE", "self")] == str(indirect.CURRENT_YEAR - a["birth_year"])
    assert answers[("COMPARE", "me_vs_sibling_older")] == (
        "me" if a["birth_year"] < a["sibling_year"] else a["sibling_name"])
    assert answers[("COMMUTE", "round_trip")] == str(2 * a["commute_min"])
    assert answers[("ROUTINE", "count_days")] == str(len(a["activity_days"]))


def test_allergy_answers_follow_dishes():
  for user in U.generate_users(30, 8):
    for q in user.indirect_qa:
      if q.schema == "ALLERGY":
        dish = max((d for d in pools.DISHES if d in q.question), key=len)
        contains = user.attrs["allergy"] in pools.DISHES[dish]
        unsafe_answer = "No" if q.question.startswith("Can I") else "Yes"
        assert (q.answer == unsafe_answer) == contains, q.question


def test_clock_add_wraps():
  assert indirect.clock_add("06:10", -20) == "05:50"
  assert indirect.clock_add("00:10", -20) == "23:50"
  assert indirect.clock_add("11:45", 30) == "12:15"


def _pair_collision_rate(users, keys=None) -> float:
  """Share of (user pair, fact key) cases where both users have the same answer."""
  by_key = collections.defaultdict(list)
  for user in users:
    for fact in user.facts:
      if keys is None or fact.key in keys:
        by_key[fact.key].append(json.dumps(fact.answer))
  same = pairs = 0
  for answers in by_key.values():
    pairs += len(answers) * (len(answers) - 1) // 2
    same += sum(c * (c - 1) // 2 for c in collections.Counter(answers).values())
  return same / pairs


def test_answer_pool_diversity():
  # Uniform draws from a pool of m values collide in a pair with probability
  # 1/m. The keys with small natural domains (time zone ~1/7, running pace 1/8,
  # allergen 1/9, shoe size 1/11) put the mean over all keys near 0.03; the
  # reference's user files, with 3-8 values per pool, give about 0.16.
  users = U.generate_users(100, 0)
  assert _pair_collision_rate(users) < 0.05
  # Names, doctors, employers, cars and pets draw from 300+ values (1/300 ~ 0.003).
  identity = {"name", "emergency_contact", "employer", "pet", "car", "doctor", "dentist",
              "spouse_name", "child_name", "sibling_name"}
  assert _pair_collision_rate(users, identity) < 0.01


@pytest.mark.parametrize("name", ["FIRST_NAMES", "LAST_NAMES", "CITIES", "JOBS", "HOBBIES",
                                  "PET_NAMES", "CAR_MODELS", "COLORS", "EMPLOYER_HEADS"])
def test_pool_no_duplicates(name):
  pool = getattr(pools, name)
  assert len(pool) == len(set(pool))
  assert not any("{" in str(v) or "}" in str(v) for v in pool)


def test_pool_sizes():
  assert len(pools.FIRST_NAMES) >= 300
  assert len(pools.LAST_NAMES) >= 300
  assert len(pools.CITIES) >= 50


def test_every_allergen_has_dishes():
  for allergen in pools.ALLERGENS:
    unsafe = [d for d, contents in pools.DISHES.items() if allergen in contents]
    assert len(unsafe) >= 2, allergen


def test_every_key_has_answer_final_template():
  for key, spec in templates.TEMPLATES.items():
    assert any(t.endswith("{a}.") for t in spec.first + spec.third), key


def test_make_users_writes_files(tmp_path):
  paths = make_users.write_users(tmp_path, 3, 4, overwrite=False)
  assert [p.name for p in paths] == ["s0000.json", "s0001.json", "s0002.json"]
  assert U.load_users(tmp_path) == U.generate_users(3, 4)


def test_make_users_refuses_overwrite(tmp_path):
  make_users.write_users(tmp_path, 1, 4, overwrite=False)
  with pytest.raises(FileExistsError, match="--overwrite"):
    make_users.write_users(tmp_path, 1, 4, overwrite=False)


# ---------------------------------------------------------------- persona documents


def test_persona_deterministic():
  assert list(U.persona_documents(30, 3)) == list(U.persona_documents(30, 3))


def test_persona_from_synth_module():
  assert list(synth.persona_documents(5, 2)) == list(U.persona_documents(5, 2))


def test_persona_prefix_and_seed():
  docs = list(U.persona_documents(30, 3))
  assert list(U.persona_documents(10, 3)) == docs[:10]
  assert list(U.persona_documents(30, 4)) != docs


def test_persona_non_empty_and_varied():
  docs = list(U.persona_documents(300, 0))
  assert all(doc.strip() for doc in docs)
  assert sum("\nA: " in doc for doc in docs) > 30
  assert sum(doc.startswith(("Hi, I'm", "About me", "A few things", "Notes to self"))
             for doc in docs) > 30
  assert sum(doc.startswith(("Profile:", "Here is what we know")) or ", in brief." in doc
             for doc in docs) > 30


def test_persona_stream_differs_from_users():
  user = synth.sample_attrs(synth.stream_rng(synth.USER_STREAM, 0, 0), "x")
  person = synth.sample_attrs(synth.stream_rng(synth.PERSONA_STREAM, 0, 0), "x")
  assert user != person


def test_persona_speed():
  # 2,000 documents took 0.3 s on a shared 2-core CPU; 10 s only catches gross slowdowns.
  start = time.perf_counter()
  docs = list(U.persona_documents(2000, 1))
  assert time.perf_counter() - start < 10.0
  assert len(docs) == 2000


def test_persona_org_documents():
  rng = synth.stream_rng(synth.PERSONA_STREAM, 0, 123)
  doc = persona.organisation_document(rng)
  assert doc.strip()
  assert "{" not in doc


def test_persona_bad_arguments():
  with pytest.raises(ValueError, match="num_docs"):
    U.persona_documents(-1, 0)
  with pytest.raises(ValueError, match="seed"):
    U.persona_documents(3, -2)
