"""Metric output: JSON lines, TensorBoard event files and the progress line.

Only process 0 writes; other processes get a writer that does nothing.
"""

import json
import os
import time

import jax
from absl import logging


class MetricWriter:
  """Append metrics to <workdir>/metrics.jsonl and TensorBoard events in <workdir>/tb."""

  def __init__(self, workdir: str, *, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._drop_lines_after(resume_step)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def _drop_lines_after(self, step: int) -> None:
    """On resume, forget metrics of steps the restored checkpoint had not reached."""
    if not os.path.exists(self.path):
      return
    with open(self.path, encoding="utf-8") as f:
      records = [json.loads(line) for line in f if line.strip()]
    kept = [r for r in records if r.get("step", 0) <= step]
    if len(kept) != len(records):
      logging.info("[metrics] dropping %d records after resumed step %d", len(records) - len(kept), step)
      tmp = self.path + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
      os.replace(tmp, self.path)

  def write(self, step: int, values: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in values.items()}}
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)):
        self._tb.add_scalar(key, value, int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def _plain(value):
  if hasattr(value, "item"):
    return value.item()
  return value


class Throughput:
  """Tokens per second and ETA from wall time between progress lines."""

  def __init__(self, tokens_per_step: int, total_steps: int, start_step: int):
    self.tokens_per_step = tokens_per_step
    self.total_steps = total_steps
    self._last_time = time.time()
    self._last_step = start_step

  def update(self, step: int) -> tuple[float, float]:
    """Return (tokens/s, seconds left) since the previous call."""
    now = time.time()
    steps = max(step - self._last_step, 1)
    seconds_per_step = (now - self._last_time) / steps
    self._last_time, self._last_step = now, step
    tokens_per_second = self.tokens_per_step / max(seconds_per_step, 1e-9)
    return tokens_per_second, seconds_per_step * max(self.total_steps - step, 0)


def format_duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
