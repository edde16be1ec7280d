"""End-to-end pretraining runs through `python -m launch.pretrain` in subprocesses.

A small model (depth 2, width 128, vocab 512, sequence 64) trains on self-made
text. The runs check resume after a kill, and that 1 device, 8 simulated
devices and 2 processes x 4 devices give the same losses.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from engram_jax.users import synth

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 12
# Sharded runs sum gradients in another order than one device does; over 12
# Muon steps that moves the loss by up to a few parts in 10^4.
SHARDED_REL_TOL = 1e-3

pytestmark = pytest.mark.slow


def _overrides(shared: pathlib.Path, **extra) -> list[str]:
  values = {
      "model.depth": 2, "model.sequence_len": 64, "model.vocab_size": 512,
      "engram.layer_ids": "(0,1)", "data.source": "files", "data.paths": f"('{shared / 'corpus'}',)",
      "data.dir": str(shared / "data"), "tokenizer.path": str(shared / "tokenizer"),
      "data.val_permille": 100, "train.device_batch_size": 8, "train.total_batch_tokens": 1024,
      "train.num_iterations": STEPS, "train.log_every": 1, "train.eval_every": 6,
      "train.eval_tokens": 2048, "train.checkpoint_every": 3, "train.sample_every": 0,
  }
  values.update(extra)
  flags = ["--config=configs/tiny.py"]
  flags += [f"--config.{key}={value}" for key, value in values.items()]
  flags.append("--config.model.aspect_ratio=64")
  return flags


def _command(workdir, shared, *flags, **extra) -> list[str]:
  return [sys.executable, "-m", "launch.pretrain", f"--workdir={workdir}", *_overrides(shared, **extra), *flags]


def _run(workdir, shared, *flags, **extra) -> subprocess.CompletedProcess:
  result = subprocess.run(_command(workdir, shared, *flags, **extra), cwd=REPO, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _losses(workdir) -> dict[int, float]:
  records = [json.loads(line) for line in open(pathlib.Path(workdir) / "metrics.jsonl")]
  return {r["step"]: r["train_loss"] for r in records if "train_loss" in r}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
  """Corpus files plus the tokenizer and shards every run of this module reuses."""
  root = tmp_path_factory.mktemp("pretrain_shared")
  corpus = root / "corpus"
  corpus.mkdir()
  docs = list(synth.persona_documents(600, seed=3))
  (corpus / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
  return root


@pytest.fixture(scope="module")
def reference_losses(shared, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  _run(workdir, shared, "--cpu_devices=1")
  return _losses(workdir)


def test_tiny_run_learns(reference_losses):
  assert sorted(reference_losses) == list(range(1, STEPS + 1))
  assert reference_losses[STEPS] < reference_losses[1] - 0.5


def test_run_writes_metrics_and_checkpoints(shared, reference_losses, tmp_path):
  _run(tmp_path, shared, "--cpu_devices=1")
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  evals = [r for r in records if "val_bpb" in r]
  assert [r["step"] for r in evals] == [0, 6, 12]
  assert evals[-1]["val_bpb"] < evals[0]["val_bpb"]
  assert all("val_bpb_suppressed" in r for r in evals)
  assert (tmp_path / "checkpoints" / str(STEPS)).is_dir()
  assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_rerun_of_finished_run_resumes(shared, reference_losses, tmp_path):
  _run(tmp_path, shared, "--cpu_devices=1")
  result = _run(tmp_path, shared, "--cpu_devices=1")
  assert f"restored step {STEPS}" in result.stderr


def test_kill_and_resume_matches(shared, reference_losses, tmp_path):
  process = subprocess.Popen(_command(tmp_path, shared, "--cpu_devices=1"), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (tmp_path / "checkpoints" / "6").is_dir():
    assert process.poll() is None, "the run ended before its step-6 checkpoint"
    assert time.time() < deadline, "no checkpoint within 300 s"
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  _run(tmp_path, shared, "--cpu_devices=1")
  resumed = _losses(tmp_path)
  assert sorted(resumed) == sorted(reference_losses)
  for step, loss in reference_losses.items():
    assert resumed[step] == pytest.approx(loss, rel=1e-5), f"step {step}"


def test_eight_devices_match(shared, reference_losses, tmp_path):
  _run(tmp_path, shared, "--cpu_devices=8", **{"mesh.data": 4, "mesh.table": 2, "engram.table_shards": 2})
  losses = _losses(tmp_path)
  for step, loss in reference_losses.items():
    assert losses[step] == pytest.approx(loss, rel=SHARDED_REL_TOL), f"step {step}"


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def test_two_processes_match(shared, reference_losses, tmp_path):
  address = f"127.0.0.1:{_free_port()}"
  flags = ["--cpu_devices=4", f"--coordinator_address={address}", "--num_processes=2"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  processes = [
      subprocess.Popen(_command(tmp_path, shared, *flags, f"--process_id={i}"), cwd=REPO, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  errors = [p.communicate(timeout=600)[1] for p in processes]
  for process, error in zip(processes, errors):
    assert process.returncode == 0, error[-3000:]
  losses = _losses(tmp_path)
  for step, loss in reference_losses.items():
    assert losses[step] == pytest.approx(loss, rel=SHARDED_REL_TOL), f"step {step}"


def test_load_pretrained_reproduces_eval(shared, reference_losses, tmp_path):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from engram_jax.train.pretrained import load_pretrained  # pylint: disable=g-import-not-at-top
  _run(tmp_path, shared, "--cpu_devices=1")
  pretrained = load_pretrained(str(tmp_path))
  assert pretrained.step == STEPS
  ids = np.asarray([[pretrained.tokenizer.bos_id] + pretrained.tokenizer.encode("My name is")], np.int32)
  logits = pretrained.model(jnp.asarray(ids), jnp.asarray(pretrained.hash_rows(ids)))
  assert logits.shape == (1, ids.shape[1], 512)
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_missing_checkpoint_reported(tmp_path):
  from engram_jax.train.pretrained import load_pretrained  # pylint: disable=g-import-not-at-top
  with pytest.raises(FileNotFoundError, match="launch.pretrain"):
    load_pretrained(str(tmp_path))
