"""Override maps: storage counter, files, validation, composition, overlap and batching."""

import os

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.flax
import safetensors.numpy

from configs import tiny
from engram_jax import hashing, memory
from engram_jax.memory import map_files
from engram_jax.model import factory
from engram_jax.model.overrides import UNUSED_ROW

FINGERPRINT = "f" * 64
WIDTH = 4


def _map(rows, values=None, *, owner="u1", layer=2, width=WIDTH, seed=0, dtype=np.float32,
         fingerprint=FINGERPRINT, settings=None, **kwargs):
  rows = np.asarray(rows)
  if values is None:
    values = np.random.default_rng(seed).normal(size=(rows.size, width)).astype(dtype)
  return memory.make_map(
      layer, rows, values, owner=owner, fact_keys=(f"{owner}/doctor",), strategy="joint_opt",
      settings=settings or {"lr": 0.5, "steps": 1000}, model_fingerprint=fingerprint, **kwargs)


def _constant_map(rows, value: float, owner: str):
  return _map(rows, np.full((len(rows), WIDTH), value, np.float32), owner=owner)


# Storage counter.


def test_storage_bytes_formula():
  assert memory.storage_bytes(10, 8, "float32") == 10 * (8 * 4 + 4)


@pytest.mark.parametrize("rows, dtype, expected", [
    (704, "float32", 92_928), (704, "bfloat16", 47_872), (496, "float32", 65_472)])
def test_storage_reference_examples(rows, dtype, expected):
  assert memory.storage_bytes(rows, 32, dtype) == expected


def test_storage_accepts_numpy_dtype():
  assert memory.storage_bytes(3, 2, ml_dtypes.bfloat16) == 3 * (2 * 2 + 4)


def test_storage_rejects_float16():
  with pytest.raises(ValueError, match="not supported"):
    memory.storage_bytes(3, 2, "float16")


def test_map_storage_uses_counter():
  m = _map([5, 1, 9], dtype=ml_dtypes.bfloat16)
  assert m.storage_bytes() == memory.storage_bytes(3, WIDTH, "bfloat16")


# make_map and the dataclass.


def test_make_map_sorts_rows():
  m = _map([9, 1, 5])
  assert m.rows.tolist() == [1, 5, 9]


def test_make_map_moves_values_with_rows():
  values = np.arange(12, dtype=np.float32).reshape(3, WIDTH)
  m = _map([9, 1, 5], values)
  np.testing.assert_array_equal(m.values, values[[1, 2, 0]])


def test_duplicates_rejected_by_default():
  with pytest.raises(ValueError, match=r"rows \[4\] occur more than once"):
    _map([4, 2, 4])


def test_duplicates_last_rule():
  values = np.array([[1.0] * WIDTH, [2.0] * WIDTH, [3.0] * WIDTH], np.float32)
  m = _map([4, 2, 4], values, duplicate_rule="last")
  np.testing.assert_array_equal(m.values[1], values[2])


def test_duplicates_mean_rule():
  values = np.array([[1.0] * WIDTH, [2.0] * WIDTH, [4.0] * WIDTH], np.float32)
  m = _map([4, 2, 4], values, duplicate_rule="mean")
  np.testing.assert_array_equal(m.values[1], np.full(WIDTH, 2.5, np.float32))


def test_duplicates_merge_to_distinct_rows():
  m = _map([4, 2, 4], duplicate_rule="mean")
  assert m.rows.tolist() == [2, 4]


def test_make_map_float64_becomes_float32():
  m = _map([1], np.ones((1, WIDTH), np.float64))
  assert m.value_dtype == "float32"


@pytest.mark.parametrize("rows, values, error, match", [
    ([-1], np.ones((1, WIDTH)), ValueError, "outside"),
    ([2**31 - 1], np.ones((1, WIDTH)), ValueError, "outside"),
    ([2**40], np.ones((1, WIDTH)), ValueError, "outside"),
    ([1.0], np.ones((1, WIDTH)), TypeError, "integer"),
    ([1], np.ones((1, WIDTH), np.int32), TypeError, "float"),
    ([1, 2], np.ones((1, WIDTH)), ValueError, "one value row per row id"),
    ([1], np.full((1, WIDTH), np.nan), ValueError, "NaN"),
])
def test_make_map_rejects(rows, values, error, match):
  with pytest.raises(error, match=match):
    _map(rows, values)


def test_make_map_rejects_unknown_rule():
  with pytest.raises(ValueError, match="duplicate_rule"):
    _map([1], duplicate_rule="first")


def test_fact_keys_string_rejected():
  with pytest.raises(TypeError, match="fact_keys"):
    memory.make_map(2, [1], np.ones((1, WIDTH)), owner="u", fact_keys="doctor", strategy="opt",
                    settings={}, model_fingerprint=FINGERPRINT)


def test_settings_must_be_json():
  with pytest.raises(TypeError, match="JSON"):
    memory.make_map(2, [1], np.ones((1, WIDTH)), owner="u", fact_keys=(), strategy="opt",
                    settings={"rng": object()}, model_fingerprint=FINGERPRINT)


def test_unsorted_rows_rejected_by_dataclass():
  with pytest.raises(ValueError, match="not sorted"):
    memory.OverrideMap(2, np.array([3, 1], np.int32), np.ones((2, WIDTH), np.float32), "u", (),
                       "opt", {}, FINGERPRINT)


def test_map_arrays_read_only():
  m = _map([1, 2])
  with pytest.raises(ValueError):
    m.values[0, 0] = 1.0


def test_map_copies_caller_arrays():
  rows = np.array([1, 2], np.int32)
  m = memory.OverrideMap(2, rows, np.ones((2, WIDTH), np.float32), "u", (), "opt", {}, FINGERPRINT)
  rows[0] = 7
  assert m.rows[0] == 1


def test_to_dtype_bfloat16_round_trip():
  m = _map([1, 2], dtype=ml_dtypes.bfloat16)
  assert m.to_dtype("float32").to_dtype("bfloat16") == m


def test_map_properties():
  m = _map([1, 2, 3], width=6)
  assert (m.num_rows, m.row_width, m.value_dtype) == (3, 6, "float32")


# Model fingerprint.


@pytest.fixture(scope="module")
def small_cfg():
  cfg = tiny.get_config()
  cfg.model.sequence_len = 32
  return cfg


def test_fingerprint_is_stable(small_cfg):
  layout = factory.hash_layout(small_cfg)
  first = memory.model_fingerprint(small_cfg, "tok", layout)
  assert first == memory.model_fingerprint(small_cfg, "tok", factory.hash_layout(small_cfg))


def test_fingerprint_covers_tokenizer(small_cfg):
  layout = factory.hash_layout(small_cfg)
  assert memory.model_fingerprint(small_cfg, "tok", layout) != memory.model_fingerprint(
      small_cfg, "tok2", layout)


def test_fingerprint_covers_layout(small_cfg):
  layout = factory.hash_layout(small_cfg)
  other = factory.hash_layout(small_cfg, num_canonical=5000)
  assert memory.model_fingerprint(small_cfg, "tok", layout) != memory.model_fingerprint(
      small_cfg, "tok", other)


def test_fingerprint_covers_config(small_cfg):
  layout = factory.hash_layout(small_cfg)
  other_cfg = small_cfg.copy_and_resolve_references()
  other_cfg.model.logit_softcap = 30.0
  assert memory.model_fingerprint(small_cfg, "tok", layout) != memory.model_fingerprint(
      other_cfg, "tok", layout)


# Files.


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_round_trip_bit_exact(tmp_path, dtype):
  m = _map([7, 3, 11], dtype=dtype)
  path = memory.save_map(tmp_path / "m.safetensors", m)
  assert memory.load_map(path) == m


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_round_trip_values_dtype(tmp_path, dtype):
  m = _map([7, 3, 11], dtype=dtype)
  path = memory.save_map(tmp_path / "m.safetensors", m)
  assert memory.load_map(path).values.dtype == np.dtype(dtype)


def test_round_trip_metadata(tmp_path):
  m = _map([7, 3], owner="org:acme")
  loaded = memory.load_map(memory.save_map(tmp_path / "m.safetensors", m))
  assert (loaded.owner, loaded.fact_keys, loaded.strategy, loaded.settings, loaded.layer) == (
      "org:acme", ("org:acme/doctor",), "joint_opt", {"lr": 0.5, "steps": 1000}, 2)


def test_empty_map_round_trip(tmp_path):
  m = _map(np.zeros((0,), np.int32))
  assert memory.load_map(memory.save_map(tmp_path / "m.safetensors", m)) == m


def test_file_readable_by_plain_safetensors(tmp_path):
  m = _map([7, 3], dtype=ml_dtypes.bfloat16)
  path = memory.save_map(tmp_path / "m.safetensors", m)
  tensors = safetensors.flax.load_file(str(path))
  np.testing.assert_array_equal(np.asarray(tensors["rows"]), m.rows)


def test_file_metadata_readable_by_plain_safetensors(tmp_path):
  path = memory.save_map(tmp_path / "m.safetensors", _map([7, 3]))
  with safetensors.safe_open(str(path), framework="flax") as f:
    assert f.metadata()["format"] == "engram-jax-override-map/1"


def test_save_leaves_no_temporary_file(tmp_path):
  memory.save_map(tmp_path / "m.safetensors", _map([1]))
  assert os.listdir(tmp_path) == ["m.safetensors"]


def test_save_refuses_other_map(tmp_path):
  memory.save_map(tmp_path / "m.safetensors", _map([1]))
  with pytest.raises(FileExistsError, match="overwrite=True"):
    memory.save_map(tmp_path / "m.safetensors", _map([2]))


def test_save_same_map_again_allowed(tmp_path):
  memory.save_map(tmp_path / "m.safetensors", _map([1]))
  assert memory.save_map(tmp_path / "m.safetensors", _map([1])).exists()


def test_save_overwrite_replaces(tmp_path):
  memory.save_map(tmp_path / "m.safetensors", _map([1]))
  memory.save_map(tmp_path / "m.safetensors", _map([2]), overwrite=True)
  assert memory.load_map(tmp_path / "m.safetensors").rows.tolist() == [2]


def test_save_refuses_foreign_file(tmp_path):
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(FileExistsError):
    memory.save_map(tmp_path / "notes.txt", _map([1]))


# Saving again: write timings do not count, everything else does.


def _timed_map(seconds: float, compile_seconds: float = 0.5, *, write_seed: int = 0, lr: float = 0.5,
               **kwargs):
  write = {"seed": write_seed, "seconds": seconds, "compile_seconds": compile_seconds,
           "multi_trigger": False}
  return _map([3, 7], settings={"lr": lr, "steps": 1000, "write": write}, **kwargs)


def test_save_again_ignores_write_seconds(tmp_path):
  memory.save_map(tmp_path / "m.safetensors", _timed_map(1.0))
  assert memory.save_map(tmp_path / "m.safetensors", _timed_map(2.5, 0.7)).exists()


def test_save_again_keeps_first_timings(tmp_path):
  memory.save_map(tmp_path / "m.safetensors", _timed_map(1.0))
  memory.save_map(tmp_path / "m.safetensors", _timed_map(2.5, 0.7))
  assert memory.load_map(tmp_path / "m.safetensors").settings["write"]["seconds"] == 1.0


@pytest.mark.parametrize("changes, field", [
    ({"write_seed": 1}, r"settings\['write'\]"),
    ({"lr": 0.25}, r"settings\['lr'\]"),
    ({"seed": 9}, "values"),
    ({"dtype": ml_dtypes.bfloat16}, "value_dtype"),
    ({"owner": "u2"}, "owner"),
    ({"fingerprint": "e" * 64}, "model_fingerprint"),
])
def test_save_again_names_difference(tmp_path, changes, field):
  memory.save_map(tmp_path / "m.safetensors", _timed_map(1.0))
  with pytest.raises(FileExistsError, match=f"differs in {field}"):
    memory.save_map(tmp_path / "m.safetensors", _timed_map(1.0, **changes))


def test_save_again_names_other_rows(tmp_path):
  memory.save_map(tmp_path / "m.safetensors", _timed_map(1.0))
  with pytest.raises(FileExistsError, match="differs in rows"):
    memory.save_map(tmp_path / "m.safetensors", _map([3, 8], settings=_timed_map(1.0).settings))


def test_save_conflict_names_overwrite_flag(tmp_path):
  memory.save_map(tmp_path / "m.safetensors", _map([1]))
  with pytest.raises(FileExistsError, match="launch.write_memory` with --overwrite"):
    memory.save_map(tmp_path / "m.safetensors", _map([2]))


def test_save_over_truncated_file_rejected(tmp_path):
  path = memory.save_map(tmp_path / "m.safetensors", _map([1]))
  path.write_bytes(path.read_bytes()[:-6])
  with pytest.raises(FileExistsError, match="not a readable override map"):
    memory.save_map(path, _map([1]))


def test_truncated_file_names_write_command(tmp_path):
  path = memory.save_map(tmp_path / "m.safetensors", _map([1]))
  path.write_bytes(path.read_bytes()[:-6])
  with pytest.raises(memory.InvalidMapFileError, match="python -m launch.write_memory --overwrite"):
    memory.load_map(path)


def test_truncated_file_says_truncated(tmp_path):
  path = memory.save_map(tmp_path / "m.safetensors", _map([1]))
  path.write_bytes(path.read_bytes()[:-6])
  with pytest.raises(memory.InvalidMapFileError, match="is truncated"):
    memory.load_map(path)


# Broken files: each case edits the tensors or the metadata of a valid map.


def _valid_parts(dtype=np.float32):
  m = _map([3, 7, 11], dtype=dtype)
  metadata = {
      "format": map_files.FORMAT, "owner": "u1", "layer": "2", "fact_keys": '["u1/doctor"]',
      "strategy": "joint_opt", "settings": '{"lr": 0.5}', "model_fingerprint": FINGERPRINT,
      "value_dtype": m.value_dtype}
  return {"rows": np.array(m.rows), "values": np.array(m.values)}, metadata


def _write_raw(path, tensors, metadata):
  safetensors.numpy.save_file(tensors, str(path), metadata=metadata)
  return path


def _values(rows: int, width: int = WIDTH, dtype=np.float32):
  return np.ones((rows, width), dtype)


BROKEN_CASES = {
    "format_missing": ({}, {"format": None}, "'format'"),
    "format_wrong": ({}, {"format": "other/1"}, "expected 'engram-jax-override-map/1'"),
    "owner_missing": ({}, {"owner": None}, r"lacks \['owner'\]"),
    "layer_text": ({}, {"layer": "two"}, "'layer'"),
    "layer_float": ({}, {"layer": "1.5"}, "'layer'"),
    "fact_keys_not_json": ({}, {"fact_keys": "[doctor"}, "'fact_keys' is not valid JSON"),
    "fact_keys_not_list": ({}, {"fact_keys": '"doctor"'}, "'fact_keys' must be a JSON list"),
    "settings_not_dict": ({}, {"settings": "[1]"}, "'settings' must be a JSON dict"),
    "value_dtype_mismatch": ({}, {"value_dtype": "bfloat16"}, "'value_dtype' is 'bfloat16'"),
    "rows_int64": ({"rows": np.array([3, 7, 11], np.int64)}, {}, "expected int32"),
    "rows_2d": ({"rows": np.array([[3, 7, 11]], np.int32)}, {}, "expected one dimension"),
    "rows_unsorted": ({"rows": np.array([7, 3, 11], np.int32)}, {}, "not sorted"),
    "rows_duplicated": ({"rows": np.array([3, 3, 11], np.int32)}, {}, "duplicated"),
    "rows_negative": ({"rows": np.array([-3, 7, 11], np.int32)}, {}, "outside the table rows"),
    "values_1d": ({"values": np.ones((3,), np.float32)}, {}, "expected two dimensions"),
    "values_count": ({"values": _values(2)}, {}, "values have 2 rows but there are 3 row ids"),
    "values_int": ({"values": np.ones((3, WIDTH), np.int32)}, {}, "expected float32 or bfloat16"),
    "values_float64": ({"values": _values(3, dtype=np.float64)}, {}, "expected float32 or bfloat16"),
    "values_nan": ({"values": np.full((3, WIDTH), np.nan, np.float32)}, {}, "NaN or infinite"),
    "values_inf": ({"values": np.full((3, WIDTH), np.inf, np.float32)}, {}, "NaN or infinite"),
    "tensor_missing": ({"values": None}, {}, r"tensors \['rows'\]"),
    "tensor_extra": ({"extra": np.ones(2, np.float32)}, {}, "expected exactly"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CASES))
def test_broken_file_rejected(tmp_path, case):
  tensor_edits, metadata_edits, match = BROKEN_CASES[case]
  tensors, metadata = _valid_parts()
  tensors = {k: v for k, v in {**tensors, **tensor_edits}.items() if v is not None}
  metadata = {k: v for k, v in {**metadata, **metadata_edits}.items() if v is not None}
  path = _write_raw(tmp_path / f"{case}.safetensors", tensors, metadata)
  with pytest.raises(memory.InvalidMapFileError, match=match):
    memory.load_map(path)


def test_broken_file_error_names_file(tmp_path):
  tensors, metadata = _valid_parts()
  path = _write_raw(tmp_path / "user42.safetensors", tensors, {**metadata, "layer": "x"})
  with pytest.raises(memory.InvalidMapFileError, match="user42.safetensors"):
    memory.load_map(path)


def test_valid_raw_file_loads(tmp_path):
  tensors, metadata = _valid_parts()
  path = _write_raw(tmp_path / "m.safetensors", tensors, metadata)
  assert memory.load_map(path).rows.tolist() == [3, 7, 11]


def test_missing_file_rejected(tmp_path):
  with pytest.raises(FileNotFoundError, match="absent.safetensors"):
    memory.load_map(tmp_path / "absent.safetensors")


def test_not_safetensors_rejected(tmp_path):
  (tmp_path / "m.safetensors").write_bytes(b"this is a plain text file, not tensors")
  with pytest.raises(memory.InvalidMapFileError, match="not a safetensors file"):
    memory.load_map(tmp_path / "m.safetensors")


def test_fingerprint_mismatch_names_both(tmp_path):
  path = memory.save_map(tmp_path / "m.safetensors", _map([1]))
  with pytest.raises(memory.MapFingerprintError, match=f"{FINGERPRINT}.*{'e' * 64}"):
    memory.load_map(path, expected_fingerprint="e" * 64)


def test_fingerprint_mismatch_says_other_model(tmp_path):
  path = memory.save_map(tmp_path / "m.safetensors", _map([1]))
  with pytest.raises(memory.MapFingerprintError, match="another model/tokenizer/table layout"):
    memory.load_map(path, expected_fingerprint="e" * 64)


def test_rows_beyond_table_rejected(tmp_path):
  path = memory.save_map(tmp_path / "m.safetensors", _map([5, 100]))
  with pytest.raises(memory.InvalidMapFileError, match=r"outside the table rows \[0, 100\)"):
    memory.load_map(path, table_rows=100)


def test_width_mismatch_rejected(tmp_path):
  path = memory.save_map(tmp_path / "m.safetensors", _map([5]))
  with pytest.raises(memory.InvalidMapFileError, match="row width 4; expected 8"):
    memory.load_map(path, row_width=8)


def test_table_rows_tuple_rejected(tmp_path):
  path = memory.save_map(tmp_path / "m.safetensors", _map([5]))
  with pytest.raises(TypeError, match="table_rows"):
    memory.load_map(path, table_rows=(100, 100))


def test_matching_checks_pass(tmp_path):
  path = memory.save_map(tmp_path / "m.safetensors", _map([5, 99]))
  m = memory.load_map(path, expected_fingerprint=FINGERPRINT, table_rows=100, row_width=WIDTH)
  assert m.num_rows == 2


# Composition and overlap.


def test_compose_last_wins_order_matters():
  a, b = _constant_map([1, 2, 3], 1.0, "a"), _constant_map([3, 4], 2.0, "b")
  ab, _ = memory.compose([a, b])
  ba, _ = memory.compose([b, a])
  differs = np.any(ab.values != ba.values, axis=1)
  assert ab.rows[differs].tolist() == [3]


def test_compose_last_wins_takes_later_value():
  a, b = _constant_map([1, 2, 3], 1.0, "a"), _constant_map([3, 4], 2.0, "b")
  ab, _ = memory.compose([a, b])
  np.testing.assert_array_equal(ab.values[ab.rows.tolist().index(3)], np.full(WIDTH, 2.0))


def test_compose_same_rows_either_order():
  a, b = _map([1, 2, 3], seed=1), _map([3, 4], seed=2)
  assert memory.compose([a, b])[0].rows.tolist() == memory.compose([b, a])[0].rows.tolist()


def test_disjoint_maps_commute():
  a, b = _map([1, 5, 9], seed=1, owner="a"), _map([2, 6], seed=2, owner="b")
  ab, ba = memory.compose([a, b])[0], memory.compose([b, a])[0]
  np.testing.assert_array_equal(ab.values, ba.values)


def test_shared_row_keeps_other_rows_intact():
  a, b = _map([1, 2, 3], seed=1, owner="a"), _map([3, 4, 5], seed=2, owner="b")
  composed, _ = memory.compose([a, b])
  np.testing.assert_array_equal(composed.values[:2], a.values[:2])
  np.testing.assert_array_equal(composed.values[3:], b.values[1:])


def test_compose_sum_rule():
  a, b = _constant_map([1, 3], 1.0, "a"), _constant_map([3, 4], 2.5, "b")
  composed, _ = memory.compose([a, b], rule="sum")
  np.testing.assert_array_equal(composed.values[:, 0], [1.0, 3.5, 2.5])


def test_compose_keeps_bfloat16():
  a, b = _map([1], dtype=ml_dtypes.bfloat16), _map([2], dtype=ml_dtypes.bfloat16)
  assert memory.compose([a, b])[0].value_dtype == "bfloat16"


def test_compose_mixed_dtypes_give_float32():
  a, b = _map([1], dtype=ml_dtypes.bfloat16), _map([2])
  assert memory.compose([a, b])[0].value_dtype == "float32"


def test_compose_records_parts():
  composed, _ = memory.compose([_map([1], owner="org:acme"), _map([2], owner="u7")])
  assert (composed.owner, composed.fact_keys, composed.strategy) == (
      "org:acme+u7", ("org:acme/doctor", "u7/doctor"), "composed")


def test_compose_settings_list_parts():
  composed, _ = memory.compose([_map([1], owner="org:acme"), _map([2], owner="u7")])
  assert [part["owner"] for part in composed.settings["parts"]] == ["org:acme", "u7"]


@pytest.mark.parametrize("field, kwargs", [
    ("layer", {"layer": 1}), ("row_width", {"width": 8}), ("model_fingerprint", {"fingerprint": "x"})])
def test_compose_rejects_mismatch(field, kwargs):
  with pytest.raises(ValueError, match=field):
    memory.compose([_map([1]), _map([2], **kwargs)])


def test_compose_rejects_empty_list():
  with pytest.raises(ValueError, match="at least one map"):
    memory.compose([])


def test_compose_rejects_unknown_rule():
  with pytest.raises(ValueError, match="rule"):
    memory.compose([_map([1])], rule="first_wins")


def test_compose_leaves_inputs_unchanged():
  a, b = _map([1, 2], seed=1), _map([2], seed=2)
  before = np.array(a.values)
  memory.compose([a, b])
  np.testing.assert_array_equal(a.values, before)


def test_overlap_hand_made():
  a, b = _map([1, 2, 3, 4]), _map([3, 4, 5, 6, 7, 8])
  assert memory.overlap(a, b) == {"shared_rows": 2, "union_rows": 8,
                                  "intersection_over_union": 0.25,
                                  "intersection_over_smaller": 0.5}


def test_overlap_of_empty_maps_is_zero():
  empty = _map(np.zeros((0,), np.int32))
  assert memory.overlap(empty, empty)["intersection_over_union"] == 0.0


def test_overlap_rejects_other_layer():
  with pytest.raises(ValueError, match="layer"):
    memory.overlap(_map([1]), _map([1], layer=1))


def test_report_pairs():
  maps = [_map([1, 2, 3, 4]), _map([3, 4, 5, 6, 7, 8]), _map([9])]
  _, report = memory.compose(maps)
  assert [(p.first, p.second, p.shared_rows) for p in report.pairs] == [(0, 1, 2), (0, 2, 0), (1, 2, 0)]


def test_report_counts():
  _, report = memory.compose([_map([1, 2, 3, 4]), _map([3, 4, 5, 6, 7, 8])])
  assert (report.part_rows, report.composed_rows, report.contested_rows) == ((4, 6), 8, 2)


def test_report_mean_over_smaller():
  _, report = memory.compose([_map([1, 2]), _map([2, 3]), _map([4])])
  assert report.mean_intersection_over_smaller == pytest.approx(0.5 / 3)


# Batching into RowOverrides.


def test_stack_pads_rows_with_unused():
  stacked = memory.stack_overrides([_map([4, 2]), None])
  assert np.asarray(stacked.rows_BK).tolist() == [[2, 4] + [UNUSED_ROW] * 6, [UNUSED_ROW] * 8]


def test_stack_pads_values_with_zero():
  stacked = memory.stack_overrides([_map([4, 2]), None])
  assert not np.any(np.asarray(stacked.values_BKW)[:, 2:])


def test_stack_dtypes():
  stacked = memory.stack_overrides([_map([1], dtype=ml_dtypes.bfloat16)])
  assert (stacked.rows_BK.dtype, stacked.values_BKW.dtype) == (jnp.int32, jnp.float32)


def test_stack_bfloat16_values_exact():
  m = _map([1, 2], dtype=ml_dtypes.bfloat16)
  stacked = memory.stack_overrides([m])
  np.testing.assert_array_equal(np.asarray(stacked.values_BKW)[0, :2], m.values.astype(np.float32))


def test_stack_default_slots_round_up():
  stacked = memory.stack_overrides([_map(range(11)), _map(range(5))])
  assert stacked.values_BKW.shape == (2, 16, WIDTH)


def test_stack_explicit_slots():
  assert memory.stack_overrides([_map([1, 2])], slots=3).rows_BK.shape == (1, 3)


def test_stack_rejects_too_few_slots():
  with pytest.raises(ValueError, match="at least 3"):
    memory.stack_overrides([None, _map([1, 2, 3])], slots=2)


def test_stack_composes_lists():
  org, user = _constant_map([1, 2], 1.0, "org"), _constant_map([2, 3], 2.0, "u")
  stacked = memory.stack_overrides([[org, user]])
  np.testing.assert_array_equal(np.asarray(stacked.values_BKW)[0, :3, 0], [1.0, 2.0, 2.0])


def test_stack_rejects_mixed_layers():
  with pytest.raises(ValueError, match="layer"):
    memory.stack_overrides([_map([1]), _map([1], layer=1)])


def test_stack_mismatch_names_sequence():
  with pytest.raises(ValueError, match=r"per_sequence\[2\]"):
    memory.stack_overrides([_map([1]), None, _map([1], width=8)])


def test_stack_all_empty_needs_width():
  with pytest.raises(ValueError, match="row_width"):
    memory.stack_overrides([None, []])


def test_stack_all_empty_with_width():
  assert memory.stack_overrides([None, []], row_width=WIDTH).values_BKW.shape == (2, 8, WIDTH)


def test_stack_rejects_bare_map():
  with pytest.raises(TypeError, match="one entry per batch sequence"):
    memory.stack_overrides(_map([1]))


# Real tiny model: batched users and composed maps in the forward pass.

LENGTH = 12


@pytest.fixture(scope="module")
def model_setup(small_cfg):
  layout = factory.hash_layout(small_cfg)
  model = factory.create_model(small_cfg, layout=layout, seed=0)
  ids = np.random.default_rng(1).integers(0, 500, size=(3, LENGTH)).astype(np.int32)
  ids[1, :6] = ids[0, :6]  # sequences 0 and 1 share a prefix, so their early rows coincide
  rows = hashing.hash_rows_np(ids, layout)
  layer = small_cfg.engram.layer_ids[-1]
  width = model.blocks[layer].engram.row_width
  fingerprint = memory.model_fingerprint(small_cfg, "test-tokenizer", layout)
  return model, jnp.asarray(ids), rows, layer, width, fingerprint


def _trigger_map(setup, sequence: int, position: int, owner: str, seed: int):
  """Write random values (scale 5) into the last layer's rows at one position of one sequence."""
  model, _, rows, layer, width, fingerprint = setup
  target = rows[-1, sequence, position]
  values = np.random.default_rng(seed).normal(size=(target.size, width)).astype(np.float32) * 5
  return memory.make_map(layer, target, values, owner=owner, fact_keys=(f"{owner}/fact",),
                         strategy="random", settings={"scale": 5}, model_fingerprint=fingerprint)


def _forward(setup, per_sequence, batch=slice(None)):
  model, ids, rows, layer, width, _ = setup
  overrides = {layer: memory.stack_overrides(per_sequence, row_width=width)}
  return np.asarray(model(ids[batch], jnp.asarray(rows[:, batch]), overrides=overrides))


def _user_maps(setup):
  # Users 0 and 1 both write the rows at position 4 of the shared prefix, with different values.
  return [_trigger_map(setup, 0, 4, "u0", 10), _trigger_map(setup, 1, 4, "u1", 11),
          _trigger_map(setup, 2, 7, "u2", 12)]


def test_users_share_rows(model_setup):
  u0, u1, _ = _user_maps(model_setup)
  assert memory.overlap(u0, u1)["shared_rows"] == u0.num_rows


@pytest.mark.parametrize("user", [0, 1, 2])
def test_mixed_batch_equals_user_alone(model_setup, user):
  maps = _user_maps(model_setup)
  mixed = _forward(model_setup, maps)
  alone = _forward(model_setup, [maps[user]], slice(user, user + 1))
  np.testing.assert_allclose(mixed[user], alone[0], atol=1e-5)


def test_shared_rows_give_each_user_own_value(model_setup):
  mixed = _forward(model_setup, _user_maps(model_setup))
  assert not np.allclose(mixed[0, 4], mixed[1, 4])


def _write_in_place(model, layer, m):
  table = model.blocks[layer].engram.table
  table[...] = table[...].at[jnp.asarray(m.rows)].set(jnp.asarray(m.values))


def _partly_shared_map(setup, org, owner: str, seed: int):
  """Write half of the organisation's rows plus the rows looked up at position 5 of sequence 0."""
  _, _, rows, layer, width, fingerprint = setup
  target = np.concatenate([org.rows[:org.num_rows // 2], rows[-1, 0, 5]])
  values = np.random.default_rng(seed).normal(size=(target.size, width)).astype(np.float32) * 5
  return memory.make_map(layer, target, values, owner=owner, fact_keys=(f"{owner}/fact",),
                         strategy="random", settings={"scale": 5}, model_fingerprint=fingerprint,
                         duplicate_rule="last")


def test_composed_map_equals_sequential_writes(model_setup):
  model, _, _, layer, _, _ = model_setup
  org = _trigger_map(model_setup, 0, 4, "org", 20)
  user = _partly_shared_map(model_setup, org, "u0", 21)
  batched = _forward(model_setup, [[org, user]], slice(0, 1))
  original = model.blocks[layer].engram.table[...]
  try:
    # The reference applies maps by writing the table in order: organisation first, user last.
    _write_in_place(model, layer, org)
    _write_in_place(model, layer, user)
    written = _forward(model_setup, [None], slice(0, 1))
  finally:
    model.blocks[layer].engram.table[...] = original
  np.testing.assert_allclose(batched, written, atol=1e-5)


def test_composed_map_equals_writing_its_rows(model_setup):
  model, _, _, layer, _, _ = model_setup
  org = _trigger_map(model_setup, 0, 4, "org", 20)
  composed, _ = memory.compose([org, _partly_shared_map(model_setup, org, "u0", 21)])
  batched = _forward(model_setup, [composed], slice(0, 1))
  original = model.blocks[layer].engram.table[...]
  try:
    _write_in_place(model, layer, composed)
    written = _forward(model_setup, [None], slice(0, 1))
  finally:
    model.blocks[layer].engram.table[...] = original
  np.testing.assert_allclose(batched, written, atol=1e-5)


def test_composed_list_equals_composed_map(model_setup):
  org = _trigger_map(model_setup, 2, 7, "org", 30)
  user = _trigger_map(model_setup, 2, 7, "u2", 31)
  composed, _ = memory.compose([org, user])
  from_list = _forward(model_setup, [[org, user]], slice(2, 3))
  from_map = _forward(model_setup, [composed], slice(2, 3))
  np.testing.assert_array_equal(from_list, from_map)


def test_check_map_fits_fingerprint():
  with pytest.raises(memory.MapFingerprintError, match="another model"):
    memory.check_map_fits(_map([1]), expected_fingerprint="e" * 64)


def test_check_map_fits_table_rows():
  with pytest.raises(ValueError, match="outside the table rows"):
    memory.check_map_fits(_map([1, 50]), table_rows=50)
