"""How MovieLensExampleGen divides ratings into train and eval: the split protocols.

  time       the newest share of ratings held out (one global time cutoff), measured by the
             replay protocol (trainer/replay.py): the default, what a production retrain faces
  random     a seeded, deterministic share of ratings held out (the seeds' protocol)
  fold:NAME  a predefined split: NAME.base for train, NAME.test for eval (ml-100k's u1 ... u5,
             ua, ub)

The Examples artifact's split names (train, eval, catalog) are trainer.features'.
"""

from __future__ import annotations

RANDOM = "random"
TIME = "time"
FOLD_PREFIX = "fold:"
DEFAULT = TIME  # the split a production retrain faces: the future
PROTOCOLS = (RANDOM, TIME, FOLD_PREFIX + "NAME")
HELP = (f"{TIME}: newest 20%% held out, measured by the replay protocol (default); "
        f"{RANDOM}: seeded 80/20 (the seeds' protocol); "
        f"{FOLD_PREFIX}NAME: NAME.base/NAME.test (ml-100k's {FOLD_PREFIX}u1 ... "
        f"{FOLD_PREFIX}u5)")


def ratings_sources(split: str) -> list:
    """(ratings file name or None for the layout's own, split it goes to or None) pairs.

    'random' and 'time' split the layout's ratings file; 'fold:NAME' reads NAME.base for
    train and NAME.test for eval. Raises ValueError for anything else."""
    from trainer import features as F  # TensorFlow: not when the CLI only builds its parser

    if split in (RANDOM, TIME):
        return [(None, None)]
    if isinstance(split, str) and split.startswith(FOLD_PREFIX) and split[len(FOLD_PREFIX):]:
        name = split[len(FOLD_PREFIX):]
        return [(f"{name}.base", F.TRAIN_SPLIT), (f"{name}.test", F.EVAL_SPLIT)]
    raise ValueError(f"split must be {', '.join(repr(p) for p in PROTOCOLS[:-1])} or "
                     f"{PROTOCOLS[-1]!r}, not {split!r}")
