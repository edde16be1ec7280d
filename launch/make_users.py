"""Write synthetic users as one JSON file per user, named by uid (s0000.json, ...).

  python -m launch.make_users --out=/tmp/users --num_users=20 --seed=0

The files load back with `engram_jax.users.load_users(DIR)`.
"""

import pathlib

from absl import app
from absl import flags
from absl import logging

from engram_jax.users import generate_users
from engram_jax.users import save_user

_OUT = flags.DEFINE_string("out", None, "Directory to write the user files into.", required=True)
_NUM_USERS = flags.DEFINE_integer("num_users", 20, "Number of users to generate.")
_SEED = flags.DEFINE_integer("seed", 0, "Generator seed (non-negative).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace user files that already exist.")


def write_users(out: pathlib.Path, num_users: int, seed: int,
                overwrite: bool) -> list[pathlib.Path]:
  """Generate the users and write them under `out`; return the written paths."""
  users = generate_users(num_users, seed)
  paths = [out / f"{user.uid}.json" for user in users]
  existing = [str(p) for p in paths if p.exists()]
  if existing and not overwrite:
    raise FileExistsError(f"{len(existing)} user files already exist, first {existing[0]}; "
                          "pass --overwrite to replace them or choose another --out")
  for user, path in zip(users, paths):
    save_user(user, path)
  return paths


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  paths = write_users(pathlib.Path(_OUT.value), _NUM_USERS.value, _SEED.value, _OVERWRITE.value)
  logging.info("[make_users] wrote %d users (seed %d) to %s", len(paths), _SEED.value, _OUT.value)


if __name__ == "__main__":
  app.run(main)
