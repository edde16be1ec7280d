"""Shared command-line behaviour: input errors as one line, the stack on request."""

import sys
from collections.abc import Callable

from absl import logging

# Errors that our code raises for bad flags, user files, checkpoints and map files.
# Their messages name the value and the fix, so a command prints one line, not the stack.
INPUT_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, IsADirectoryError)


def run_reporting_errors(body: Callable[[], None], show_traceback: bool) -> None:
  """Run `body`; on an input error log it in one line and exit with status 1.

  With `show_traceback` the error propagates with its full stack.
  """
  try:
    body()
  except INPUT_ERRORS as error:
    if show_traceback:
      raise
    logging.error("[error] %s: %s", type(error).__name__, error)
    logging.error("[error] (rerun with --traceback for the full stack)")
    sys.exit(1)
