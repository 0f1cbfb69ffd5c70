"""The output-directory lock: only one run at a time may write an output directory (its
pipeline root, metadata store and serving directory).

A run holds an exclusive `flock` on OUT/.movierec.lock for its whole duration: `movierec
run` in its own process (`held`), an Airflow DAG run in a holder process that its first
task starts and its last task stops (pipeline/airflow_dag.py). The kernel releases the
lock when the holding process dies, so a killed run never leaves the directory locked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os

from pipeline.errors import UserError

LOCK_FILE = ".movierec.lock"


def busy_message(output_dir: str, option: str = "--output-dir") -> str:
    return (f"another movierec run is using {output_dir}; wait for it or choose another "
            f"{option}")


def try_acquire(output_dir: str):
    """An open handle holding the lock, or None when another process holds it. Raises
    UserError when the directory cannot be created or written."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        handle = open(os.path.join(output_dir, LOCK_FILE), "a")
    except OSError as e:
        raise UserError(f"cannot write output directory {output_dir}: {e.strerror}") from e
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        handle.close()
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return handle


def release(handle) -> None:
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


@contextlib.contextmanager
def held(output_dir: str):
    """Holds the lock for the block; UserError (busy_message) when another run holds it."""
    handle = try_acquire(output_dir)
    if handle is None:
        raise UserError(busy_message(output_dir))
    try:
        yield
    finally:
        release(handle)
