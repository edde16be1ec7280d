"""Parameter counts of the reference configs, and the describe command."""

import json
import pathlib
import subprocess
import sys

import pytest

from configs import d8, d12, d20, tiny
from launch import describe

# (config module, variant, total params, scaling params, Engram params)
REFERENCE_TOTALS = [
    (d8, "base", 125_829_546, 41_943_424, 0),
    (d8, "v1", 136_674_698, 41_943_424, 10_845_152),
    (d8, "v2", 178_246_250, 41_943_424, 52_416_704),
    (d12, "v1", 339_205_202, 110_101_344, 52_943_040),
    (d12, "w1280", 625_471_122, 277_874_080, 53_995_712),
    (d20, "optimal", 1_224_735_810, 616_565_568, 54_522_048),
]


@pytest.mark.parametrize("module,variant,total,scaling,engram", REFERENCE_TOTALS)
def test_reference_param_counts(module, variant, total, scaling, engram):
  report = describe.describe(module.get_config(variant))
  assert report["params"]["total"] == total
  assert report["params"]["scaling"] == scaling
  assert report["params"]["engram"] == engram


@pytest.mark.parametrize("preset,slots", [
    ("tiny", 164_434), ("small", 644_798), ("medium", 1_605_126), ("xlarge", 3_206_914)])
def test_preset_slots(preset, slots):
  report = describe.describe(d8.get_config(preset))
  assert report["engram"]["slots_total"] == slots


def test_layer_layout_reported():
  layers = describe.describe(d12.get_config("v1"))["engram"]["layers"]
  assert [layer["layer"] for layer in layers] == [2, 7]
  assert layers[1]["primes"][:3] == [50147, 50153, 50159]
  assert layers[0]["offsets"][:2] == [0, 50021]
  assert layers[0]["slots"] == 801_268


def test_table_padding_not_counted():
  cfg = d8.get_config("v1")
  cfg.engram.table_shards = 7
  report = describe.describe(cfg)
  assert report["params"]["total"] == 136_674_698
  assert report["engram"]["layers"][0]["physical_rows"] % 7 == 0


def test_text_report_mentions_groups():
  text = describe.format_report(describe.describe(tiny.get_config()))
  assert "Engram tables" in text
  assert "scaling" in text


def test_cli_json_d20():
  out = subprocess.run(
      [sys.executable, "-m", "launch.describe", "--config=configs/d20.py", "--json"],
      capture_output=True, text=True, check=True, timeout=120,
      cwd=pathlib.Path(__file__).resolve().parents[1])
  report = json.loads(out.stdout)
  assert report["params"]["total"] == 1_224_735_810
  assert report["params"]["scaling"] == 616_565_568
  assert report["params"]["engram_tables"] == 51_364_032
  assert {"layer", "primes", "offsets", "slots"} <= set(report["engram"]["layers"][0])
