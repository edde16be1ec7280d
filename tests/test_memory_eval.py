"""Memory evaluation: metrics on hand-made cases and one small run on a random-init model."""

import dataclasses
import math
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from engram_jax import hashing
from engram_jax import tokenizer as tokenizer_lib
from engram_jax.memory import make_map, model_fingerprint
from engram_jax.model.gpt import GPT
from engram_jax.train.pretrained import Pretrained
from engram_jax.users import FactPrompt, generate_users, persona_documents
from evals import locality, map_store, memory_eval, recall, report, scoring, stats
from evals.decode import ModelRunner

import configs.tiny as tiny_config

# ---------------------------------------------------------------------------
# Ranks and first-token scores
# ---------------------------------------------------------------------------


def test_rank_counts_strictly_greater():
  logits = np.array([1.0, 3.0, 3.0, 0.0])
  assert scoring.gold_rank(logits, 1) == 0


def test_rank_of_low_logit():
  logits = np.array([1.0, 3.0, 3.0, 0.0])
  assert scoring.gold_rank(logits, 3) == 3


def test_ranks_from_batch_logits():
  logits = np.array([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])
  assert scoring.ranks_from_logits(logits, np.array([2, 2])).tolist() == [1, 1]


def test_rank_rejects_gold_outside_vocab():
  with pytest.raises(ValueError, match="outside the vocabulary"):
    scoring.gold_rank(np.zeros(4), 4)


def test_rank_summary_topk_and_median():
  summary = scoring.rank_summary([0, 3, 7, 20])
  assert summary == {"top1": 0.25, "top5": 0.5, "top10": 0.75, "median_rank": 5.0}


def test_first_token_hit_but_answer_wrong():
  logits = np.zeros(8)
  logits[5] = 4.0  # token 5 is " T", the first token of " Tulsa"
  record = scoring.score_probe(scoring.gold_rank(logits, 5), [" T", "ampa", "."], " Tulsa")
  assert record["first_token_top1"]
  assert not record["exact_match"]


def test_full_answer_then_sentence_end():
  assert scoring.states_answer([" Harper", " Nguyen", ".", " I"], " Harper Nguyen")


def test_answer_glued_to_longer_word():
  assert not scoring.states_answer([" Harper", " Nguyen", "son"], " Harper Nguyen")


def test_number_prefix_of_decimal():
  assert not scoring.states_answer([" 29", ".5"], " 29")


def test_decimal_answer_then_words():
  assert scoring.states_answer([" 29", ".5", " years"], " 29.5")


def test_answer_at_end_of_budget():
  assert scoring.states_answer([" Portland"], " Portland")


def test_answer_later_in_output_is_not_exact():
  assert not scoring.states_answer([" in", " Portland"], " Portland")


# ---------------------------------------------------------------------------
# Word-boundary matching, leaks and swaps
# ---------------------------------------------------------------------------


def test_no_is_not_found_in_know():
  assert not scoring.is_leak("I know", " no", " yes")


def test_leak_when_other_answer_stated():
  assert scoring.is_leak(" no, never", " no", " yes")


def test_no_leak_when_own_answer_also_stated():
  assert not scoring.is_leak(" Tulsa and Boise", " Tulsa", " Boise")


def test_three_is_not_found_in_thirteen():
  assert not scoring.is_leak(" 13", " 3", " 7")


def test_equal_answers_are_not_distinct():
  assert not scoring.answers_distinct(" Portland", " portland")


def _fact(uid: str, key: str, answer: str) -> FactPrompt:
  return FactPrompt(user_uid=uid, key=key, prompt=f"My {key} is", gold=" " + answer,
                    phrasings=[f"My {key} is"], heldout_prompts=[], used_fallback=False)


def _seen(uid: str, key: str, gold: str, output: str, batch: int) -> dict:
  return {"uid": uid, "map_owner": uid, "key": key, "gold": gold, "output": output,
          "batch": batch, "prompt": f"My {key} is"}


def test_leak_checks_count_coresident_users_only():
  facts = {"a": {"city": _fact("a", "city", "Tulsa")}, "b": {"city": _fact("b", "city", "Boise")},
           "c": {"city": _fact("c", "city", "Reno")}}
  records = [_seen("a", "city", " Tulsa", " Boise.", 0), _seen("b", "city", " Boise", " Boise", 0),
             _seen("c", "city", " Reno", " Reno", 1)]
  checks = recall.leak_checks(records, facts)
  assert [(c["uid"], c["other"], c["leak"]) for c in checks] == [("a", "b", True), ("b", "a", False)]


def test_leak_checks_skip_shared_answers():
  facts = {"a": {"city": _fact("a", "city", "Tulsa")}, "b": {"city": _fact("b", "city", "Tulsa")}}
  records = [_seen("a", "city", " Tulsa", " Tulsa", 0), _seen("b", "city", " Tulsa", " Tulsa", 0)]
  assert recall.leak_checks(records, facts) == []


def test_leak_checks_record_controls():
  facts = {"a": {"city": _fact("a", "city", "Tulsa")}, "b": {"city": _fact("b", "city", "Boise")}}
  records = [_seen("a", "city", " Tulsa", " Boise", 0), _seen("b", "city", " Boise", " Boise", 0)]
  controls = {"bare": {("a", "My city is"): " Reno"}, "alone": {("a", "My city is"): " Boise"}}
  check = recall.leak_checks(records, facts, controls)[0]
  assert (check["leak"], check["bare_leak"], check["alone_leak"]) == (True, False, True)


def test_swap_hit_follows_map_content():
  # A's prompt with B's map: the output states B's answer and not A's own.
  assert scoring.is_leak(" Boise", map_owner_gold=" Boise", prompt_owner_gold=" Tulsa")


# ---------------------------------------------------------------------------
# Intervals
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("successes,trials,low,high", [
    (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (81, 263, 0.2553, 0.3662)])
def test_wilson_known_values(successes, trials, low, high):
  assert stats.wilson_interval(successes, trials) == pytest.approx((low, high), abs=1e-4)


def test_wilson_rejects_zero_trials():
  with pytest.raises(ValueError, match="at least one trial"):
    stats.wilson_interval(0, 0)


def test_bootstrap_constant_values():
  assert stats.bootstrap_interval([2.5] * 20) == (2.5, 2.5)


def test_bootstrap_normal_mean_matches_theory():
  values = np.random.default_rng(0).normal(10.0, 2.0, size=400)
  half = 1.96 * values.std() / math.sqrt(values.size)
  low, high = stats.bootstrap_interval(values, resamples=4000)
  assert (low, high) == pytest.approx((values.mean() - half, values.mean() + half), abs=0.03)


def test_grouped_bootstrap_resamples_users():
  # Two users with constant values 0 and 1: a resample contains 0, 1 or 2 copies of user 1.
  low, high = stats.bootstrap_grouped([[0.0] * 5, [1.0] * 5], resamples=2000)
  assert (low, high) == (0.0, 1.0)


def test_proportion_summary_without_trials():
  assert stats.proportion_summary({})["mean"] is None


# ---------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------


def _map(rows, width=8, dtype=np.float32, owner="u"):
  values = np.ones((len(rows), width), dtype)
  return make_map(2, np.asarray(rows, np.int32), values, owner=owner, fact_keys=["k"],
                  strategy="hand", settings={}, model_fingerprint="f")


def test_storage_bytes_float32():
  assert _map([3, 1, 7]).storage_bytes() == 3 * (8 * 4 + 4)


def test_storage_bytes_per_fact_in_report():
  result = {"seed": 0, "probes": [], "leak_checks": [],
            "users": {"u": {"storage_bytes": 108, "num_facts": 2, "num_rows": 3,
                            "value_dtype": "float32", "delta_bpb": 0.0}}}
  summary = report.aggregate_strategy([result])
  assert summary["storage"]["bytes_per_fact"]["mean"] == 54.0


def test_residual_change_mean_of_user_maxima():
  result = {"seed": 0, "probes": [], "leak_checks": [],
            "users": {"a": {"offtrigger_change": 1.0}, "b": {"offtrigger_change": 3.0}}}
  locality_summary = report.aggregate_strategy([result])["locality"]
  assert locality_summary["mean_user_max_residual_change_off_trigger"]["mean"] == 2.0


def test_residual_change_max_has_no_interval():
  result = {"seed": 0, "probes": [], "leak_checks": [],
            "users": {"a": {"offtrigger_change": 1.0}, "b": {"offtrigger_change": 3.0}}}
  locality_summary = report.aggregate_strategy([result])["locality"]
  assert locality_summary["max_residual_change_off_trigger"] == {"max": 3.0, "n": 2}


def _settings_map(uid, dtype=np.float32, **settings):
  return make_map(2, np.array([1], np.int32), np.ones((1, 8), dtype), owner=uid, fact_keys=["k"],
                  strategy="joint_opt", settings=settings, model_fingerprint="f")


def test_writer_settings_distinct_values():
  maps = {"a": _settings_map("a", init="table", anchor_weight=1e-4, continuation_heads=[1, 3]),
          "b": _settings_map("b", init="table", anchor_weight=1e-3, continuation_heads=[1, 3])}
  found = report.writer_settings([{"maps": maps}])
  assert found == {"continuation_heads": [[1, 3]], "init": ["table"], "anchor_weight": [1e-4, 1e-3],
                   "value_dtype": ["float32"]}


def test_writer_settings_across_seeds():
  first = {"maps": {"a": _settings_map("a", learning_rate=4.0)}}
  second = {"maps": {"a": _settings_map("a", learning_rate=2.0)}}
  assert report.writer_settings([first, second])["learning_rate"] == [4.0, 2.0]


def test_writer_settings_without_maps():
  assert report.writer_settings([{"maps": {"a": None}}, {"users": {}}]) == {}


# ---------------------------------------------------------------------------
# Evaluation settings and map labels
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size=0 is invalid"),
    ({"batch_size": -4}, "batch_size=-4 is invalid"),
    ({"eval_tokens": 0}, "eval_tokens=0 is invalid"),
    ({"eval_tokens": -100}, "eval_tokens=-100 is invalid"),
    ({"val_batch_rows": 0}, "val_batch_rows=0 is invalid"),
])
def test_eval_settings_rejects(kwargs, match):
  with pytest.raises(ValueError, match=match):
    memory_eval.EvalSettings(**kwargs)


def test_eval_settings_names_flag():
  with pytest.raises(ValueError, match="--batch_size=32"):
    memory_eval.EvalSettings(batch_size=0)


@pytest.mark.parametrize("kwargs", [{"batch_size": True}, {"batch_size": 8.0}, {"eval_tokens": "512"}])
def test_eval_settings_rejects_non_integer(kwargs):
  with pytest.raises(TypeError, match="is not an integer"):
    memory_eval.EvalSettings(**kwargs)


def test_eval_settings_accepts_whole_split():
  assert memory_eval.EvalSettings(batch_size=1, eval_tokens=None).eval_tokens is None


def _labelled_map(owner: str, strategy: str):
  return make_map(2, np.array([1], np.int32), np.ones((1, 8), np.float32), owner=owner,
                  fact_keys=["k"], strategy=strategy, settings={}, model_fingerprint="f")


def test_map_labels_wrong_owner():
  runs = {"random": {0: {"u001": _labelled_map("u002", "random")}}}
  with pytest.raises(ValueError, match="belongs to user 'u002', not 'u001'"):
    memory_eval.check_map_labels(runs)


def test_map_labels_wrong_owner_names_fix():
  runs = {"random": {0: {"u001": _labelled_map("u002", "random")}}}
  with pytest.raises(ValueError, match="launch.write_memory` with --strategies=random --seeds=0"):
    memory_eval.check_map_labels(runs)


def test_map_labels_wrong_strategy_names_both():
  runs = {"joint_opt": {2: {"u001": _labelled_map("u001", "random")}}}
  with pytest.raises(ValueError, match="strategy 'random', but its folder names strategy 'joint_opt'"):
    memory_eval.check_map_labels(runs)


def test_map_labels_wrong_strategy_names_file(tmp_path):
  runs = {"joint_opt": {2: {"u001": _labelled_map("u001", "random")}}}
  path = tmp_path / "joint_opt" / "seed2" / "u001.safetensors"
  with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: "):
    memory_eval.check_map_labels(runs, tmp_path)


def test_map_labels_accept_matching_maps():
  runs = {"random": {0: {"u001": _labelled_map("u001", "random"), "u002": None}}}
  assert memory_eval.check_map_labels(runs) is None


# ---------------------------------------------------------------------------
# Command-line errors: one line without a stack, unless --traceback
# ---------------------------------------------------------------------------

REPO = pathlib.Path(__file__).resolve().parents[1]


def _launch(module: str, *flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO, capture_output=True,
                        text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def zero_batch(tmp_path_factory):
  missing = tmp_path_factory.mktemp("cli") / "no_workdir"
  return _launch("launch.eval_memory", f"--workdir={missing}", f"--users={missing}", "--batch_size=0")


def test_cli_bad_batch_size_fails(zero_batch):
  assert zero_batch.returncode == 1


def test_cli_bad_batch_size_names_value(zero_batch):
  assert "ValueError: batch_size=0 is invalid" in zero_batch.stderr


def test_cli_bad_batch_size_has_no_stack(zero_batch):
  assert "Traceback" not in zero_batch.stderr


@pytest.fixture(scope="module")
def missing_workdir(tmp_path_factory):
  missing = tmp_path_factory.mktemp("cli") / "no_workdir"
  return missing, _launch("launch.write_memory", f"--workdir={missing}", f"--users={missing}")


def test_cli_missing_workdir_fails(missing_workdir):
  assert missing_workdir[1].returncode == 1


def test_cli_missing_workdir_one_line(missing_workdir):
  missing, result = missing_workdir
  assert f"FileNotFoundError: {missing}/checkpoints does not exist" in result.stderr


def test_cli_missing_workdir_has_no_stack(missing_workdir):
  assert "Traceback" not in missing_workdir[1].stderr


def test_cli_traceback_flag_shows_stack(tmp_path):
  result = _launch("launch.eval_memory", f"--workdir={tmp_path}", f"--users={tmp_path}",
                   "--eval_tokens=-1", "--traceback")
  assert "Traceback" in result.stderr


# ---------------------------------------------------------------------------
# A small real run: random-init tiny model, hand-written and empty maps
# ---------------------------------------------------------------------------

FACTS_PER_USER = 3


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  docs = list(persona_documents(400, seed=1))
  tok = tokenizer_lib.train_bpe(docs, 1024)
  cmap = tokenizer_lib.build_canonical_map(tok)
  cfg = tiny_config.get_config()
  cfg.model.sequence_len, cfg.model.vocab_size = 64, 1024
  layout = hashing.layout_from_config(cfg.engram, cmap.num_canonical)
  model = GPT(cfg, engram_table_rows=layout.table_rows, rngs=nnx.Rngs(0))
  byte_lengths = np.asarray(tok.byte_lengths("raw"), np.int32)
  workdir = str(tmp_path_factory.mktemp("random_init"))
  pre = Pretrained(cfg, model, tok, cmap, layout, byte_lengths, 0, workdir)
  ids = np.concatenate([tok.encode(d, prepend_bos=True) for d in docs[:40]])
  rows = 16
  inputs = ids[:rows * 64].reshape(rows, 64)
  targets = ids[1:rows * 64 + 1].reshape(rows, 64)
  return pre, locality.validation_from_arrays(pre, inputs, targets, batch_rows=8)


def _trigger_rows(pre, users) -> dict[str, np.ndarray]:
  """Each user's hand-written rows: the memory-layer rows at each fact prompt's last token."""
  facts = recall.user_fact_prompts(users)
  index = pre.layout.layer_ids.index(pre.memory_layer)
  out = {}
  for uid, per_user in facts.items():
    rows = [pre.hash_rows(np.array([pre.tokenizer.encode(f.prompt, prepend_bos=True)]))[index, 0, -1]
            for f in per_user.values()]
    out[uid] = np.unique(np.concatenate(rows)).astype(np.int32)
  return out


@pytest.fixture(scope="module")
def evaluated(pretrained):
  pre, val = pretrained
  users = [dataclasses.replace(u, facts=u.facts[:FACTS_PER_USER]) for u in generate_users(2, seed=5)]
  fingerprint = model_fingerprint(pre.cfg, pre.tokenizer.fingerprint, pre.layout)
  width = pre.model.blocks[pre.memory_layer].engram.row_width

  def build(uid, rows, values, strategy):
    return make_map(pre.memory_layer, rows, values, owner=uid, strategy=strategy, settings={},
                    fact_keys=[f.key for f in users[0].facts], model_fingerprint=fingerprint)

  rng = np.random.default_rng(0)
  hand = {uid: build(uid, rows, 30.0 * rng.standard_normal((rows.size, width)), "hand")
          for uid, rows in _trigger_rows(pre, users).items()}
  empty = {u.uid: build(u.uid, np.zeros(0, np.int32), np.zeros((0, width), np.float32), "empty")
           for u in users}
  runs = {"hand": {0: hand, 1: hand}, "empty": {0: empty}}
  return memory_eval.evaluate_memory(pre, users, runs, val, memory_eval.EvalSettings(batch_size=8))


REQUIRED = ("recall.seen.first_token_top1", "recall.seen.exact_match",
            "recall.heldout.first_token_top1", "recall.heldout.exact_match", "locality.delta_bpb",
            "leakage.rate", "leakage.swap_control_rate", "storage.bytes_per_fact",
            "write.seconds_per_fact")


def _lookup(tree: dict, dotted: str):
  for part in dotted.split("."):
    tree = tree[part]
  return tree


@pytest.mark.parametrize("field", REQUIRED)
def test_report_has_metric_objects(evaluated, field):
  metric = _lookup(evaluated[0]["strategies"]["hand"], field)
  assert set(metric) >= {"mean", "ci95"}


def test_report_lists_users_and_seeds(evaluated):
  assert (evaluated[0]["users"], evaluated[0]["seeds"]) == (["s0000", "s0001"], [0, 1])


def test_hand_map_recall_is_a_rate(evaluated):
  rate = evaluated[0]["strategies"]["hand"]["recall"]["seen"]["first_token_top1"]["mean"]
  assert 0.0 <= rate <= 1.0


def test_hand_map_changes_bpb(evaluated):
  assert evaluated[0]["strategies"]["hand"]["locality"]["delta_bpb"]["mean"] != 0.0


def test_empty_map_delta_bpb_is_zero(evaluated):
  assert evaluated[0]["strategies"]["empty"]["locality"]["delta_bpb"]["mean"] == 0.0


def test_empty_map_has_zero_leakage(evaluated):
  leakage = evaluated[0]["strategies"]["empty"]["leakage"]["rate"]
  assert (leakage["mean"], leakage["n"] > 0) == (0.0, True)


def test_empty_map_outputs_equal_bare_model(evaluated):
  _, results = evaluated
  bare = [(p["prompt"], p["output"]) for p in results["none"][0]["probes"]]
  empty = [(p["prompt"], p["output"]) for p in results["empty"][0]["probes"] if p["split"] != "swap"]
  assert empty == bare


def test_hand_map_storage_per_fact(evaluated):
  pre_rows = evaluated[0]["strategies"]["hand"]["storage"]["rows_per_user"]["mean"]
  per_fact = evaluated[0]["strategies"]["hand"]["storage"]["bytes_per_fact"]["mean"]
  assert per_fact == pytest.approx(pre_rows * (8 * 4 + 4) / FACTS_PER_USER)


def test_report_files_written(evaluated, tmp_path):
  paths = report.write_report(evaluated[0], tmp_path)
  assert all(p.stat().st_size > 0 for p in paths.values())


def test_mixed_batch_equals_alone(pretrained, evaluated):
  pre, _ = pretrained
  _, results = evaluated
  seen = [p for p in results["hand"][0]["probes"] if p["split"] == "seen"]
  first_batch = [p for p in seen if p["batch"] == 0]
  assert len({p["uid"] for p in first_batch}) == 2
  probe = first_batch[-1]
  users = [dataclasses.replace(u, facts=u.facts[:FACTS_PER_USER]) for u in generate_users(2, seed=5)]
  facts = recall.user_fact_prompts(users)
  maps = {probe["uid"]: results["hand"][0]["maps"][probe["uid"]]}
  alone = [p for p in recall.build_probes(pre.tokenizer, {probe["uid"]: facts[probe["uid"]]}, maps)["seen"]
           if p.key == probe["key"]]
  runner = ModelRunner(pre)
  record = recall.run_probes(runner, alone, maps, steps=results["hand"][0]["steps"], batch_size=1,
                             slots=results["hand"][0]["slots"])[0]
  assert (record["output"], record["rank"]) == (probe["output"], probe["rank"])


def test_run_missing_user_rejected(pretrained):
  pre, val = pretrained
  users = generate_users(2, seed=5)
  with pytest.raises(ValueError, match="has maps for"):
    memory_eval.evaluate_memory(pre, users, {"hand": {0: {users[0].uid: None}}}, val)


def test_run_strategy_name_mismatch_rejected(pretrained, evaluated):
  pre, val = pretrained
  _, results = evaluated
  users = [dataclasses.replace(u, facts=u.facts[:FACTS_PER_USER]) for u in generate_users(2, seed=5)]
  match = "strategy 'hand', but its folder names strategy 'renamed'"
  with pytest.raises(ValueError, match=match):
    memory_eval.evaluate_memory(pre, users, {"renamed": {0: results["hand"][0]["maps"]}}, val)


def test_report_records_writer_settings(evaluated):
  assert evaluated[0]["strategies"]["hand"]["writer_settings"] == {"value_dtype": ["float32"]}


def test_report_base_has_no_writer_settings(evaluated):
  assert evaluated[0]["strategies"]["none"]["writer_settings"] == {}


def test_markdown_lists_writer_settings(evaluated):
  assert "- hand: value_dtype float32" in report.format_markdown(evaluated[0])


def test_report_residual_change_fields(evaluated):
  locality_summary = evaluated[0]["strategies"]["hand"]["locality"]
  mean = locality_summary["mean_user_max_residual_change_off_trigger"]["mean"]
  assert mean <= locality_summary["max_residual_change_off_trigger"]["max"]


# ---------------------------------------------------------------------------
# Writing maps twice with the same command, then reading them back
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def written(pretrained, tmp_path_factory):
  pre, _ = pretrained
  users = [dataclasses.replace(u, facts=u.facts[:FACTS_PER_USER]) for u in generate_users(2, seed=5)]
  maps_dir = tmp_path_factory.mktemp("maps")
  map_store.write_maps(pre, users, strategies=["random"], seeds=[0], maps_dir=maps_dir)
  return pre, users, maps_dir


def test_write_maps_rerun_same_command(written):
  pre, users, maps_dir = written
  runs = map_store.write_maps(pre, users, strategies=["random"], seeds=[0], maps_dir=maps_dir)
  assert sorted(runs["random"][0]) == [u.uid for u in users]


def test_copied_map_folder_names_file(written, tmp_path):
  pre, users, maps_dir = written
  shutil.copytree(maps_dir / "random", tmp_path / "joint_opt")
  runs = map_store.load_run_maps(pre, tmp_path, users)
  path = tmp_path / "joint_opt" / "seed0" / f"{users[0].uid}.safetensors"
  with pytest.raises(ValueError, match=re.escape(str(path))):
    memory_eval.check_map_labels(runs, tmp_path)
