"""Recall, leakage and content-swap probes of per-user memory maps.

Probe sets, all decoded greedily in shared batches with one map per sequence:

* seen: the prompts the map was written from (the main prompt of each fact;
  every anticipated phrasing when the map was written with multi_trigger);
* heldout: the fact's direct_qa questions as "Q: {question}\\nA:", never
  used for writing;
* swap: a user's seen prompts with another user's map (the content-swap
  control). A swap hit is an output that states the map owner's answer and
  not the prompt owner's own. A high rate shows the answers come from the
  map's content and that the leak test below can see a crossed map.

Leakage is measured on the seen batches. Their sequences are ordered by fact
key, so one forward pass carries several users' prompts, each sequence with
its own user's map. For each prompt of user B and each other user A whose map
sat in the same forward pass, with the same key and a different answer, a leak
is an output that states A's answer and not B's own. Leaks are checked again
against controls (see `leak_checks`): the bare model's output and the
prompt decoded alone, because small value pools make a wrong answer often equal
another user's.
"""

import dataclasses
from collections.abc import Mapping, Sequence

from engram_jax.memory.maps import OverrideMap
from engram_jax.users import FactPrompt, User, fact_prompts

from evals import scoring
from evals.decode import ModelRunner, decode_greedy

# Greedy tokens decoded beyond the longest gold, so a differently tokenised
# answer still fits and the character after the answer is visible.
EXTRA_DECODE_TOKENS = 2


@dataclasses.dataclass(frozen=True)
class Probe:
  """One prompt to decode with one map (None: the bare model)."""
  split: str  # "seen", "heldout" or "swap"
  uid: str  # owner of the prompt and of `gold`
  key: str
  prompt: str
  prompt_ids: tuple[int, ...]
  gold: str  # " " + the prompt owner's answer
  gold_first_id: int
  map_owner: str | None
  map_gold: str | None = None  # the map owner's answer for this key (swap probes)


def user_fact_prompts(users: Sequence[User]) -> dict[str, dict[str, FactPrompt]]:
  """FactPrompts of every user, by uid and fact key."""
  return {u.uid: {fp.key: fp for fp in fact_prompts(u)} for u in users}


def _probe(tokenizer, split, fact: FactPrompt, prompt: str, map_owner, map_gold=None) -> Probe:
  prompt_ids = tuple(tokenizer.encode(prompt, prepend_bos=True))
  gold_first_id = tokenizer.encode(fact.gold)[0]
  return Probe(split, fact.user_uid, fact.key, prompt, prompt_ids, fact.gold, gold_first_id,
               map_owner, map_gold)


def written_prompts(fact: FactPrompt, multi_trigger: bool) -> list[str]:
  """Return the prompts a writer used for `fact`, as engram_jax.memory.facts.encode_facts picks them."""
  return list(fact.phrasings) if multi_trigger else [fact.prompt]


def _multi_trigger(m: OverrideMap | None) -> bool:
  return bool(m is not None and m.settings.get("write", {}).get("multi_trigger", False))


def build_probes(tokenizer, facts: Mapping[str, Mapping[str, FactPrompt]],
                 maps: Mapping[str, OverrideMap | None]) -> dict[str, list[Probe]]:
  """Build the seen, heldout and swap probes of users that have an entry in `maps`.

  `maps` maps uid -> the user's map (None evaluates the bare model, which has
  no swap probes). Seen probes are ordered by fact key, then user, so one
  forward pass mixes users.
  """
  uids = [uid for uid in facts if uid in maps]
  if not uids:
    raise ValueError(f"No user in {sorted(facts)} has a map; pass maps keyed by user id.")
  keys = list(dict.fromkeys(k for uid in uids for k in facts[uid]))
  seen, heldout = [], []
  for key in keys:
    for uid in uids:
      fact = facts[uid].get(key)
      if fact is None:
        continue
      m = maps[uid]
      owner = None if m is None else uid
      for prompt in written_prompts(fact, _multi_trigger(m)):
        seen.append(_probe(tokenizer, "seen", fact, prompt, owner))
      heldout.extend(_probe(tokenizer, "heldout", fact, q, owner) for q in fact.heldout_prompts)
  return {"seen": seen, "heldout": heldout, "swap": _swap_probes(tokenizer, facts, maps, uids)}


def _swap_probes(tokenizer, facts, maps, uids) -> list[Probe]:
  """Each user's main prompts with the next user's map (uids in a cycle)."""
  if len(uids) < 2 or any(maps[uid] is None for uid in uids):
    return []
  probes = []
  for i, uid in enumerate(uids):
    partner = uids[(i + 1) % len(uids)]
    for key, fact in facts[uid].items():
      other = facts[partner].get(key)
      if other is None or not scoring.answers_distinct(fact.gold, other.gold):
        continue
      probes.append(_probe(tokenizer, "swap", fact, fact.prompt, partner, other.gold))
  return probes


def run_probes(runner: ModelRunner, probes: Sequence[Probe], maps: Mapping[str, OverrideMap | None],
               *, steps: int, batch_size: int, slots: int) -> list[dict]:
  """Decode every probe with its map and score it; one record per probe."""
  if not probes:
    return []
  tokenizer = runner.pre.tokenizer
  per_sequence = [None if p.map_owner is None else maps[p.map_owner] for p in probes]
  result = decode_greedy(runner, [p.prompt_ids for p in probes], per_sequence,
                         [p.gold_first_id for p in probes],
                         [probe_tokens(tokenizer, p) for p in probes], steps=steps,
                         batch_size=batch_size, slots=slots)
  records = []
  for n, probe in enumerate(probes):
    pieces = [tokenizer.decode([int(t)]) for t in result.tokens[n]]
    record = {"split": probe.split, "uid": probe.uid, "key": probe.key, "map_owner": probe.map_owner,
              "prompt": probe.prompt, "gold": probe.gold, "batch": n // batch_size}
    record.update(scoring.score_probe(result.ranks_N[n], pieces, probe.gold))
    if probe.map_gold is not None:
      record["map_gold"] = probe.map_gold
      record["swap_hit"] = scoring.is_leak(record["output"], probe.map_gold, probe.gold)
    records.append(record)
  return records


def leak_checks(seen_records: Sequence[dict], facts: Mapping[str, Mapping[str, FactPrompt]],
                controls: Mapping[str, Mapping[tuple[str, str], str]] | None = None) -> list[dict]:
  """Check every seen output against co-resident users' answers; one record per check.

  `controls` maps a name to other outputs of the same prompts, keyed by (uid,
  prompt): "bare" for the bare model, "alone" for the prompt decoded without
  other users in its batch. Each check records `<name>_leak`, whether that
  output passes the leak test too. A leak that the bare model shares comes from
  the model's prior. A leak that the alone output shares is the user's own map
  giving a wrong answer that another user happens to have.
  """
  by_batch: dict[int, set[str]] = {}
  for r in seen_records:
    if r["map_owner"] is not None:
      by_batch.setdefault(r["batch"], set()).add(r["map_owner"])
  checks = []
  for r in seen_records:
    if r["map_owner"] is None:
      continue
    for other in sorted(by_batch[r["batch"]] - {r["uid"]}):
      other_fact = facts[other].get(r["key"])
      if other_fact is None or not scoring.answers_distinct(other_fact.gold, r["gold"]):
        continue
      check = {"uid": r["uid"], "other": other, "key": r["key"], "output": r["output"],
               "leak": scoring.is_leak(r["output"], other_fact.gold, r["gold"])}
      for name, outputs in (controls or {}).items():
        output = outputs.get((r["uid"], r["prompt"]))
        if output is not None:
          check[f"{name}_leak"] = scoring.is_leak(output, other_fact.gold, r["gold"])
      checks.append(check)
  return checks


def alone_outputs(runner: ModelRunner, probes: Sequence[Probe], maps: Mapping[str, OverrideMap | None],
                  *, steps: int, batch_size: int, slots: int) -> dict[tuple[str, str], str]:
  """Decode each probe in a batch without other users' sequences; (uid, prompt) -> output."""
  outputs = {}
  for probe in probes:
    record = run_probes(runner, [probe], maps, steps=steps, batch_size=batch_size, slots=slots)[0]
    outputs[(probe.uid, probe.prompt)] = record["output"]
  return outputs


def probe_tokens(tokenizer, probe: Probe) -> int:
  """Greedy tokens decoded for a probe: its longest gold in tokens plus EXTRA_DECODE_TOKENS."""
  golds = [probe.gold] + ([probe.map_gold] if probe.map_gold is not None else [])
  return max(len(tokenizer.encode(g)) for g in golds) + EXTRA_DECODE_TOKENS


def decode_steps(tokenizer, facts: Mapping[str, Mapping[str, FactPrompt]]) -> int:
  """Decode buffer capacity: the longest gold of any user in tokens plus EXTRA_DECODE_TOKENS."""
  longest = max(len(tokenizer.encode(fp.gold)) for per_user in facts.values()
                for fp in per_user.values())
  return longest + EXTRA_DECODE_TOKENS

