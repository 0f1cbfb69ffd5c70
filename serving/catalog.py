"""`movierec catalog add`: new movies in the served model without retraining.

The newest version under a serving base (serving/versions.py) is loaded, the new movies
(read from a MovieLens movie file, u.item, movies.dat or movies.csv, by pipeline/cli.py
with components/movielens_example_gen/movielens.py's read_movie_file: this layer reads no
data files) are appended to its catalog by the model's own `add_movies` (trainer/export.py:
each movie embedded from its title tokens, genres and year through the candidate tower;
its id is outside the Transform vocabulary, so its id embedding is the out-of-vocabulary
one), and the model is saved as a new version, numbered after the newest, in the Pusher's
layout (BASE/NAME/<version>/). The existing movies keep their rows and embeddings bit for
bit, and every signature is the one of the version it came from; `movierec serve` picks
the new version up as it picks up a pushed one.

The version is written to a hidden directory next to the versions (not a number: neither
the server nor versions.on_disk sees it), loaded back and checked, then renamed into place,
so that a failed add leaves no version, partial or whole. A movie id already in the
catalog is a one-line error (UserError) and writes nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from pipeline.errors import UserError
from serving import versions
from trainer import storage

_TEMP_PREFIX = ".catalog-add-"


def _load_newest(base: str):
    from trainer import saved_model
    from trainer import signatures as S

    def check(model):
        missing = set(S.ALL) - set(model.signatures)
        if missing:
            return f"not a movierec model (no signature {sorted(missing)[0]})"
        return None

    return versions.load_newest(base, saved_model.load, check=check)


def named(ids: list[str], limit: int = 5) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def movie_inputs(movies) -> dict:
    """add_movies' inputs (trainer/signatures.py's ADD_MOVIES) for movies as the
    MovieLens readers give them (movie_id, title, genres, release_year): genres as a
    [batch, G] matrix padded with "" (G >= 1)."""
    import numpy as np

    from trainer import features as F

    movies = list(movies)
    width = max([1] + [len(m.genres) for m in movies])
    genres = np.full((len(movies), width), "", dtype=object)
    for i, movie in enumerate(movies):
        genres[i, :len(movie.genres)] = movie.genres
    return {
        F.MOVIE_ID: np.array([m.movie_id for m in movies], dtype=object),
        F.MOVIE_TITLE: np.array([m.title for m in movies], dtype=object),
        F.MOVIE_GENRES: genres,
        F.MOVIE_YEAR: np.array([m.release_year for m in movies], dtype=np.int64),
    }


def add(model_base: str, movies: dict, model_name: str = versions.MODEL_NAME) -> dict:
    """Adds `movies` ({id: movie}, in order; each with movie_id, title, genres and
    release_year, as movielens.read_movie_file gives them) to the newest version under
    `model_base` (a serving base, or a model's base), as a new version. Returns
    {"version", "path", "from_version", "added" (ids), "catalog_size"}. Raises UserError
    (no movies, a movie already in the catalog, no usable model, a version that appeared
    meanwhile, ...); nothing is written then."""
    import tensorflow as tf

    from serving.model import movie_catalog
    from trainer import signatures as S

    if storage.is_uri(model_base):
        raise UserError(f"--model-base {model_base}: catalog add writes a local serving "
                        f"base only (a version is renamed into place, which an object "
                        f"store cannot do at once)")
    if not os.path.isdir(model_base):
        raise UserError(f"--model-base {model_base} is not a directory")
    if versions.is_version_dir(model_base):
        raise UserError(f"--model-base {model_base} is a version directory: give the "
                        f"serving base that holds the versions")
    if not movies:
        raise UserError("no movies to add")
    base = versions.model_base(model_base, model_name)
    model, model_dir = _load_newest(base)
    if not hasattr(model, S.ADD_MOVIES):
        raise UserError(f"{model_dir} was exported before `catalog add` existed (it has "
                        f"no {S.ADD_MOVIES}): push a model trained with this movierec")
    ids, _ = movie_catalog(model)
    known = set(ids)
    present = [m for m in movies if m in known]
    if present:
        raise UserError(f"{'movie' if len(present) == 1 else 'movies'} {named(present)} "
                        f"{'is' if len(present) == 1 else 'are'} already in the catalog of "
                        f"{model_dir}; nothing written")
    inputs = movie_inputs(movies.values())
    getattr(model, S.ADD_MOVIES)(**{k: tf.constant(v) for k, v in inputs.items()})

    version = max(versions.on_disk(base)) + 1
    target = os.path.join(base, str(version))
    try:
        temp = tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{version}-", dir=base)
    except OSError as e:
        raise UserError(f"cannot write in {base}: {e.strerror or e}") from e
    try:
        options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])  # ScaNN index
        try:
            tf.saved_model.save(model, temp, signatures=dict(model.signatures),
                                options=options)
        except (OSError, tf.errors.OpError) as e:
            raise UserError(f"cannot write the new version in {base}: "
                            f"{(str(e).strip() or type(e).__name__).splitlines()[0]}") from e
        _check_saved(temp, ids + list(movies))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o777 & ~umask)  # mkdtemp's 0700, as a directory made by the Pusher
        if os.path.exists(target):
            raise UserError(f"version {version} appeared in {base} while the movies were "
                            f"added; nothing written (run catalog add again)")
        try:
            os.rename(temp, target)  # the version appears whole, or not at all
        except OSError as e:
            raise UserError(f"cannot put version {version} in place in {base} "
                            f"({e.strerror or e}); nothing written") from e
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return {"version": version, "path": target,
            "from_version": int(os.path.basename(model_dir)), "added": list(movies),
            "catalog_size": len(ids) + len(movies)}


def _check_saved(path: str, expected_ids: list[str]) -> None:
    """The saved version loads, its catalog is `expected_ids` and its embeddings one per
    movie (else UserError: the version is not put in place)."""
    from serving.model import movie_catalog
    from trainer import saved_model

    try:
        model = saved_model.load(path)
        ids, _ = movie_catalog(model)
        rows = model.candidate_embeddings.numpy().shape[0]
    except Exception as e:  # noqa: BLE001 - one line for the user
        raise UserError(f"the new version does not load back ({str(e).splitlines()[0]}); "
                        f"nothing written") from e
    if ids != expected_ids or rows != len(expected_ids):
        raise UserError(f"the new version's catalog is not the old one and the new "
                        f"movies ({len(ids)} ids, {rows} embeddings, expected "
                        f"{len(expected_ids)}); nothing written")

