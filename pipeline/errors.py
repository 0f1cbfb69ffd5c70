"""Errors that reach the user: every layer may raise them, `pipeline/cli.py` prints them.

The CLI prints such an error as one line (`movierec: error: ...`) and exits with status 2
(1 when the pipeline itself failed, where the message names the run's full log). The
server answers a bad request with HTTP 400 and `{"error": message}` (serving.model's
RequestError). Domain errors that the CLI also prints this way live with their concept:
`components.movielens_example_gen.movielens.DataError` (bad input files) and
`pipeline.metadata.MetadataError` (no metadata store, no such run).
"""

from __future__ import annotations

import os
import sys


class UserError(Exception):
    """A problem the user can fix (a bad option, a missing path, ...); one line."""


def exit_now(rc: int):
    """Flushes stdout and stderr and ends the process with `rc` at once, before the
    interpreter tears TensorFlow down: its function objects print "Exception ignored in
    AtomicFunction.__del__" noise there, and the teardown can crash after every result is
    written. A reader that has gone (`movierec inspect runs | head`) is not an error."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        rc = 0
    os._exit(rc)
