"""MovieLensExampleGen's executor: raw MovieLens files -> gzipped TFRecords of tf.Examples.

Output: one Examples artifact with three splits
  train, eval  one example per rating, joined with its movie and (where the layout has a user
               file) its user: every feature of trainer.features.RATING_EXAMPLE_FEATURES;
  catalog      one example per movie in the catalog file, rated or not (MOVIE_FEATURES).

Ratings stream through Beam (never one in-memory frame); movies and users, which are small,
are read once and joined in the workers. Before Beam starts, movielens.preflight checks the
files, the catalog, the users and the first lines of the ratings, so most bad input fails
at once with one line naming the file and line.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List

import apache_beam as beam
import numpy as np
import tensorflow as tf
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils

from components.movielens_example_gen import movielens, splits
from components.movielens_example_gen.splits import ratings_sources
from trainer import examples as ex
from trainer import features as F

TRAIN, EVAL, CATALOG = F.TRAIN_SPLIT, F.EVAL_SPLIT, F.CATALOG_SPLIT
_NAMESPACE = "movierec.example_gen"


def movie_values(movie: movielens.Movie) -> dict:
    """A movie's raw features (F.MOVIE_FEATURES): what the catalog and its ratings hold."""
    return {F.MOVIE_ID: movie.movie_id, F.MOVIE_TITLE: movie.title,
            F.MOVIE_GENRES: list(movie.genres), F.MOVIE_YEAR: movie.release_year}


def user_values(user: movielens.User | None) -> dict:
    """A user's side features (F.USER_SIDE_FEATURES); empty values where the layout has
    no user file."""
    return {F.USER_AGE: user.age if user else 0,
            F.USER_GENDER: user.gender if user else "",
            F.USER_OCCUPATION: user.occupation if user else "",
            F.USER_ZIP: user.zip_code if user else ""}


def catalog_example(movie: movielens.Movie) -> bytes:
    """The serialized catalog example of a movie."""
    return ex.serialize(movie_values(movie))


class ExampleEncoder:
    """Serialized rating examples (query + movie + label, F.RATING_EXAMPLE_FEATURES): each
    movie's and each user's map entries are serialized once and reused, and per rating only
    its own three entries (user id, timestamp, rating) are written (trainer/examples.py)."""

    def __init__(self, movies: dict, users: dict):
        self._movies, self._users = movies, users
        self._movie_bytes: dict = {}
        self._user_bytes: dict = {}

    def encode(self, rating: movielens.Rating) -> bytes:
        movie = self._movie_bytes.get(rating.movie_id)
        if movie is None:
            movie = self._movie_bytes[rating.movie_id] = ex.entries(
                movie_values(self._movies[rating.movie_id]))
        user = self._user_bytes.get(rating.user_id)
        if user is None:
            user = self._user_bytes[rating.user_id] = ex.entries(
                {F.USER_ID: rating.user_id, **user_values(self._users.get(rating.user_id))})
        return ex.example(user, ex.entry(F.TIMESTAMP, rating.timestamp),
                          ex.entry(F.RATING, rating.rating), movie)


def rating_examples(data_dir: str, layout: str | None = None, file_name: str | None = None):
    """Every rating of a MovieLens directory as a serialized, joined tf.Example, streamed.

    A movie missing from the catalog, or a user missing from the user file, raises
    DataError naming the ratings file and the rating's line."""
    layout = layout or movielens.detect_layout(data_dir)
    movies = movielens.read_movies(data_dir, layout)
    users = movielens.read_users(data_dir, layout)
    files = movielens.layout_files(layout)
    if file_name:
        files = {**files, "ratings": file_name}
    encoder = ExampleEncoder(movies, users)
    for rating in movielens.iter_ratings(data_dir, layout, file_name):
        movielens.check_references(rating, movies, users, files)
        yield encoder.encode(rating)


def random_bucket(rating: movielens.Rating, seed: int) -> float:
    """A deterministic uniform [0, 1) number per rating: the seeded random split."""
    key = f"{seed}|{rating.user_id}|{rating.movie_id}|{rating.timestamp}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2.0**64


def split_of(rating: movielens.Rating, fixed_split: str | None, protocol: str, seed: int,
             eval_fraction: float, cutoff: int) -> str:
    """The split (F.TRAIN_SPLIT or F.EVAL_SPLIT) a rating goes to: its file's (a fold's
    .base / .test), else by the protocol: from the time cutoff on (time), or a seeded
    share (random)."""
    if fixed_split:
        return fixed_split
    if protocol == splits.TIME:
        return EVAL if rating.timestamp >= cutoff else TRAIN
    return EVAL if random_bucket(rating, seed) < eval_fraction else TRAIN


def time_cutoff(data_dir: str, layout: str, eval_fraction: float) -> int:
    """The timestamp from which the newest `eval_fraction` of ratings start."""
    stamps = np.fromiter((r.timestamp for r in movielens.iter_ratings(data_dir, layout)),
                         dtype=np.int64)
    stamps.sort()
    return int(stamps[min(len(stamps) - 1, int(len(stamps) * (1.0 - eval_fraction)))])


class _JoinAndSplit(beam.DoFn):
    """Rating -> serialized example, joined with its movie and user, tagged with its
    split."""

    def __init__(self, data_dir, layout, split, seed, eval_fraction, cutoff):
        self._args = (data_dir, layout)
        self._split, self._seed = split, seed
        self._eval_fraction, self._cutoff = eval_fraction, cutoff
        self._counters = {s: beam.metrics.Metrics.counter(_NAMESPACE, s) for s in F.SPLITS}

    def setup(self):
        self._movies = movielens.read_movies(*self._args)
        self._users = movielens.read_users(*self._args)
        self._files = movielens.layout_files(self._args[1])
        self._encoder = ExampleEncoder(self._movies, self._users)

    def process(self, item):
        (file_name, fixed_split), rating = item
        files = {**self._files, "ratings": file_name} if file_name else self._files
        movielens.check_references(rating, self._movies, self._users, files)
        split = split_of(rating, fixed_split, self._split, self._seed, self._eval_fraction,
                         self._cutoff)
        self._counters[split].inc()
        yield beam.pvalue.TaggedOutput(split, self._encoder.encode(rating))


class Executor(base_beam_executor.BaseBeamExecutor):
    """Reads a MovieLens directory, writes train/eval/catalog splits."""

    def Do(self, input_dict: Dict[str, List[Any]], output_dict: Dict[str, List[Any]],
           exec_properties: Dict[str, Any]) -> None:
        data_dir = exec_properties["data_dir"]
        layout = exec_properties["layout"] or movielens.detect_layout(data_dir)
        split = exec_properties["split"]
        seed = int(exec_properties["seed"])
        eval_fraction = float(exec_properties["eval_fraction"])
        sources = ratings_sources(split)
        # Fail early, before Beam: files, catalog, users and the ratings' first lines.
        movielens.preflight(data_dir, layout, [file_name for file_name, _ in sources])
        movies = movielens.read_movies(data_dir, layout)
        cutoff = time_cutoff(data_dir, layout, eval_fraction) if split == splits.TIME else 0

        examples = artifact_utils.get_single_instance(output_dict["examples"])
        examples.split_names = artifact_utils.encode_split_names(list(F.SPLITS))
        examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(examples, "tfrecords_gzip")
        pipeline = self._make_beam_pipeline()
        rated = (pipeline
                 | "Sources" >> beam.Create(sources)
                 | "ReadRatings" >> beam.FlatMap(
                     lambda src: ((src, r) for r in movielens.iter_ratings(
                         data_dir, layout, src[0])))
                 | "JoinAndSplit" >> beam.ParDo(_JoinAndSplit(
                     data_dir, layout, split, seed, eval_fraction, cutoff)).with_outputs(
                         TRAIN, EVAL))
        for name in (TRAIN, EVAL):
            (rated[name]
             | f"Write{name}" >> beam.io.WriteToTFRecord(
                 os.path.join(examples.uri, f"Split-{name}", "data_tfrecord"),
                 file_name_suffix=".gz"))
        (pipeline
         | "Catalog" >> beam.Create(sorted(movies.values(), key=lambda m: m.movie_id))
         | "CatalogExample" >> beam.Map(catalog_example)
         | "WriteCatalog" >> beam.io.WriteToTFRecord(
             os.path.join(examples.uri, f"Split-{CATALOG}", "data_tfrecord"),
             file_name_suffix=".gz"))
        result = pipeline.run()
        result.wait_until_finish()

        counts = {s: 0 for s in F.SPLITS}
        for counter in result.metrics().query(
                beam.metrics.MetricsFilter().with_namespace(_NAMESPACE))["counters"]:
            counts[counter.key.metric.name] += counter.committed or counter.attempted
        counts[CATALOG] = len(movies)
        if counts[TRAIN] == 0 or counts[EVAL] == 0:
            raise movielens.DataError(
                f"the {split} split left {counts[TRAIN]} train and {counts[EVAL]} eval "
                f"ratings; need some of each")
        examples.set_string_custom_property("layout", layout)
        examples.set_string_custom_property("input_dir", os.path.abspath(data_dir))
        examples.set_string_custom_property("input_fingerprint",
                                            exec_properties.get("input_fingerprint", ""))
        examples.set_string_custom_property("split_counts", json.dumps(counts))
        for name, count in counts.items():
            examples.set_int_custom_property(f"num_{name}", count)
