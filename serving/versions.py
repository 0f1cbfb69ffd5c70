"""Model versions in TF Serving's layout (BASE/NAME/<integer version>/saved_model.pb): which
exist, which one a command means, and the newest one that loads.

Used by `movierec recommend` / `rate` / `evaluate`, the server (serving/server.py) and the
benchmarks, so that a "model" argument means the same everywhere: a version directory
itself, or a model's base (its newest version, or a given number), or a serving base that
holds the model's base under its name.
"""

from __future__ import annotations

import os
import sys

from pipeline.errors import UserError
from trainer import storage

MODEL_NAME = "movierec"
SAVED_MODEL = "saved_model.pb"


def is_version_dir(path: str) -> bool:
    return storage.isfile(storage.join(path, SAVED_MODEL))


def on_disk(base: str) -> dict[int, str]:
    """{version: directory} of the integer version directories under a model's base.
    Raises OSError when the base cannot be listed."""
    out = {}
    for name in storage.listdir(base):
        path = storage.join(base, name)
        if name.isdigit() and storage.isdir(path):
            out[int(name)] = path
    return out


def model_base(path: str, name: str = MODEL_NAME) -> str:
    """A model's base for `path`: `path` itself when it holds integer versions (or is a
    version directory), else BASE/NAME, the model's base under a serving base (TF
    Serving's --model_base_path is that directory; it may not exist yet)."""
    if is_version_dir(path):
        return path
    try:
        if on_disk(path):
            return path
    except OSError:
        pass
    return storage.join(path, name)


def candidates(path: str, version: int | None = None) -> list[str]:
    """Version directories `path` may mean, the preferred first: `path` itself when it is
    one; else the given version, or every version newest first. Raises UserError when
    there is none."""
    if is_version_dir(path):
        if version is not None:
            raise UserError(f"{path} is a version directory: give its base to choose a "
                            f"version")
        return [path]
    base = model_base(path)
    try:
        found = on_disk(base)
    except OSError:
        found = {}
    if version is not None:
        if version not in found:
            known = ", ".join(str(v) for v in sorted(found)) or "none"
            raise UserError(f"no version {version} in {base} (versions: {known})")
        return [found[version]]
    if not found:
        raise UserError(f"no SavedModel in {path} (expected {SAVED_MODEL} or <version>/)")
    return [found[v] for v in sorted(found, reverse=True)]


def resolve(path: str, version: int | None = None) -> str:
    """The version directory `path` means: itself, the given version, or the newest."""
    return candidates(path, version)[0]


def load_newest(path: str, load, version: int | None = None, check=None):
    """(loaded model, its directory): the newest version under `path` that loads with
    `load(dir)` and passes `check(model)` (which returns None or why the model is not
    usable); a broken newer version is named on stderr and skipped. Raises UserError
    naming the newest failure when none loads."""
    failures = []
    for model_dir in candidates(path, version):
        try:
            model = load(model_dir)
        except Exception as e:  # noqa: BLE001 - one line for the user
            failures.append((model_dir, (str(e).strip() or type(e).__name__).splitlines()[0]))
            continue
        why = check(model) if check else None
        if why:
            failures.append((model_dir, why))
            continue
        for bad, reason in failures:
            print(f"movierec: warning: version {os.path.basename(bad)} does not load "
                  f"({reason}); using {model_dir}", file=sys.stderr)
        return model, model_dir
    bad, reason = failures[0]
    raise UserError(f"cannot load the model in {bad}: {reason}")
