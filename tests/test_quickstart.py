"""The quickstart command end to end on a reduced budget, in a subprocess.

A depth-2 model with a 512-token vocabulary pretrains for 20 steps on
self-made persona documents (no download), then two synthetic users get
Joint OPT, UNEMBED_P and RANDOM maps for one seed, and the report is written.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from engram_jax.memory import load_map
from engram_jax.users import persona_documents

REPO = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

REQUIRED = ("recall.seen.first_token_top1", "recall.seen.exact_match",
            "recall.heldout.first_token_top1", "recall.heldout.exact_match", "locality.delta_bpb",
            "leakage.rate", "leakage.swap_control_rate", "storage.bytes_per_fact",
            "write.seconds_per_fact")
STRATEGIES = ("joint_opt", "unembed_p", "random")


def _config_flags(corpus: pathlib.Path) -> list[str]:
  values = {
      "model.depth": 2, "model.sequence_len": 64, "model.vocab_size": 512,
      "engram.layer_ids": "(0,1)", "data.source": "files", "data.paths": f"('{corpus}',)",
      "data.val_permille": 100, "train.device_batch_size": 8, "train.total_batch_tokens": 1024,
      "train.eval_tokens": 2048, "train.log_every": 10,
  }
  return ["--config=configs/tiny.py"] + [f"--config.{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
  root = tmp_path_factory.mktemp("quickstart")
  corpus = root / "corpus"
  corpus.mkdir()
  docs = persona_documents(600, seed=3)
  (corpus / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
  workdir = root / "run"
  command = [sys.executable, "-m", "launch.quickstart", f"--workdir={workdir}", *_config_flags(corpus),
             "--pretrain_steps=20", "--num_users=2", "--seeds=0", f"--strategies={','.join(STRATEGIES)}",
             "--joint_max_steps=60", "--eval_tokens=2048", "--batch_size=16"]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  return workdir / "quickstart"


def _lookup(tree: dict, dotted: str):
  for part in dotted.split("."):
    tree = tree[part]
  return tree


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("field", REQUIRED)
def test_report_json_metric(quickstart, strategy, field):
  report = json.loads((quickstart / "report.json").read_text())
  assert set(_lookup(report["strategies"][strategy], field)) >= {"mean", "ci95"}


def test_report_json_users_and_seeds(quickstart):
  report = json.loads((quickstart / "report.json").read_text())
  assert (report["users"], report["seeds"]) == (["s0000", "s0001"], [0])


def test_report_markdown_written(quickstart):
  assert "| joint_opt |" in (quickstart / "report.md").read_text()


def test_plot_is_png(quickstart):
  assert (quickstart / "recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_map_file_per_user_strategy_seed(quickstart):
  files = sorted(p.relative_to(quickstart / "maps").as_posix()
                 for p in (quickstart / "maps").rglob("*.safetensors"))
  assert files == sorted(f"{s}/seed0/{u}.safetensors" for s in STRATEGIES for u in ("s0000", "s0001"))


@pytest.fixture(scope="module")
def commands(quickstart, tmp_path_factory):
  """write_memory then eval_memory on the quickstart's checkpoint and users."""
  out = tmp_path_factory.mktemp("commands")
  workdir, users = quickstart.parent, quickstart / "users"
  write = [sys.executable, "-m", "launch.write_memory", f"--workdir={workdir}", f"--users={users}",
           f"--maps_dir={out / 'maps'}", "--strategies=unembed_p", "--seeds=0,1"]
  evaluate = [sys.executable, "-m", "launch.eval_memory", f"--workdir={workdir}", f"--users={users}",
              f"--maps_dir={out / 'maps'}", f"--out_dir={out / 'eval'}", "--eval_tokens=2048",
              "--skip_base"]
  keep = [sys.executable, "-m", "launch.write_memory", f"--workdir={workdir}", f"--users={users}",
          f"--maps_dir={out / 'kept'}", "--strategies=joint_opt", "--seeds=0", "--keep_weight=1",
          "--keep_tokens=4096", "--value_dtype=float32", "--continuation=all",
          "--joint_max_steps=8"]
  for command in (keep, write, evaluate):
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
  return out, result.stdout


def test_quickstart_maps_stored_as_bfloat16(quickstart):
  m = load_map(quickstart / "maps" / "joint_opt" / "seed0" / "s0000.safetensors")
  assert m.value_dtype == "bfloat16"


def test_write_command_float32_values(commands):
  m = load_map(commands[0] / "kept" / "joint_opt" / "seed0" / "s0000.safetensors")
  assert m.value_dtype == "float32"


def test_write_command_keep_term_recorded(commands):
  m = load_map(commands[0] / "kept" / "joint_opt" / "seed0" / "s0000.safetensors")
  assert m.settings["keep_weight"] == 1.0
  assert m.settings["keep_hits"] > 0


def test_eval_command_prints_table(commands):
  assert "| unembed_p |" in commands[1]


def test_eval_command_covers_written_seeds(commands):
  report = json.loads((commands[0] / "eval" / "report.json").read_text())
  assert report["strategies"]["unembed_p"]["seeds"] == [0, 1]


def test_eval_command_writes_predictions(commands):
  lines = (commands[0] / "eval" / "predictions.jsonl").read_text().splitlines()
  assert {json.loads(line)["strategy"] for line in lines} == {"unembed_p"}
