"""Pretrain an Engram GPT.

  python -m launch.pretrain --config=configs/tiny.py [--workdir=runs/tiny]
  python -m launch.pretrain --config=configs/d20.py --config.optim.matrix_lr=0.03

On TPU pods and GPU clusters start the same command on every host; JAX's
multi-controller runtime finds its peers from the environment. Re-running the
command with the same workdir resumes from the newest checkpoint.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/tiny.py[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default runs/<config name>).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Call jax.distributed.initialize: on, off, or auto (when a coordinator flag or a cluster "
    "environment is present).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for manual multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a manual multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a manual multi-process run.")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", None, "Simulated CPU devices in this process (testing).")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print every config field with its value (and --config.FIELD override name), then exit.")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "On a configuration or data error, show the full traceback.")

# Environment variables that mean a cluster launcher started this process.
_CLUSTER_ENV = ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS",
                "MEGASCALE_COORDINATOR_ADDRESS")


class _QuietLibraries(logging.logging.Filter):
  """Drop library INFO records that bury the progress lines.

  Orbax logs several lines per save, and JAX reports at INFO that it probed
  for TPU and GPU backends that this machine lacks.
  """

  def filter(self, record) -> bool:
    if record.levelno >= logging.logging.WARNING:
      return True
    return "/orbax/" not in record.pathname and "xla_bridge" not in record.pathname


def init_runtime() -> None:
  """Configure devices and, for multi-process runs, JAX's distributed runtime."""
  import jax  # pylint: disable=g-import-not-at-top
  if _CPU_DEVICES.value:
    jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
  manual = _COORDINATOR.value is not None
  wanted = _DISTRIBUTED.value == "on" or (
      _DISTRIBUTED.value == "auto" and (manual or any(v in os.environ for v in _CLUSTER_ENV)))
  if not wanted:
    return
  # Cross-process collectives of the CPU backend go through gloo; the setting
  # does not affect GPU or TPU backends. The backend must not start before
  # jax.distributed.initialize, so it is set without asking which one runs.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if manual:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  else:
    jax.distributed.initialize()
  logging.info("[dist] process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/tiny.py")
  if _PRINT_CONFIG.value:
    print(_CONFIG.value)
    return
  logging.get_absl_handler().addFilter(_QuietLibraries())
  init_runtime()
  import jax  # pylint: disable=g-import-not-at-top
  from engram_jax.train import loop  # pylint: disable=g-import-not-at-top
  cfg = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join("runs", cfg.name)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  try:
    final = loop.train(cfg, workdir)
  except KeyboardInterrupt:
    logging.error("[stop] interrupted; rerun the same command to resume from the last checkpoint in %s",
                  os.path.join(workdir, "checkpoints"))
    sys.exit(130)
  except (ValueError, TypeError, FileNotFoundError, FileExistsError, FloatingPointError) as error:
    if _TRACEBACK.value:
      raise
    logging.error("[error] %s: %s", type(error).__name__, error)
    logging.error("[error] (rerun with --traceback for the full stack)")
    sys.exit(1)
  if final:
    logging.info("[done] %s", " ".join(f"{k}={v:.4f}" for k, v in final.items() if isinstance(v, float)))


if __name__ == "__main__":
  app.run(main)
