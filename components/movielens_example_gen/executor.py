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
import struct
from typing import Any, Dict, List

import apache_beam as beam
import numpy as np
import tensorflow as tf
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils

from components.movielens_example_gen import movielens
from trainer import features as F

TRAIN, EVAL, CATALOG = "train", "eval", "catalog"
SPLITS = (TRAIN, EVAL, CATALOG)
_NAMESPACE = "movierec.example_gen"
_FLOAT = struct.Struct("<f")


def _bytes(*values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[v.encode("utf-8") for v in values]))


def _int(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _float(value):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))


def movie_features(movie: movielens.Movie) -> dict:
    return {
        F.MOVIE_ID: _bytes(movie.movie_id),
        F.MOVIE_TITLE: _bytes(movie.title),
        F.MOVIE_GENRES: _bytes(*movie.genres),
        F.MOVIE_YEAR: _int(movie.release_year),
    }


def user_features(user: movielens.User | None) -> dict:
    return {
        F.USER_AGE: _int(user.age if user else 0),
        F.USER_GENDER: _bytes(user.gender if user else ""),
        F.USER_OCCUPATION: _bytes(user.occupation if user else ""),
        F.USER_ZIP: _bytes(user.zip_code if user else ""),
    }


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 on the wire: negatives as ten-byte two's complement
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (tag byte = field number << 3 | 2)."""
    return bytes((tag,)) + _varint(len(payload)) + payload


def _entry(key: bytes, feature: bytes) -> bytes:
    """One entry of tf.train.Features' map: key (field 1) and Feature (field 2)."""
    return _field(0x0A, _field(0x0A, key) + _field(0x12, feature))


class ExampleEncoder:
    """Serialized rating examples that parse to exactly `rating_example(...)`, several
    times faster than building the protobuf for every rating.

    A serialized tf.train.Features is the concatenation of its map entries, so each movie's
    and each user's entries are serialized once (with protobuf) and reused; per rating the
    three entries of its own (user id, timestamp, rating) are written in protobuf's wire
    format, and the Example's one field (features) around them all. The test
    tests/test_example_gen.py checks the parsed examples equal the protobuf-built ones."""

    _USER_ID, _TIMESTAMP, _RATING = (k.encode() for k in (F.USER_ID, F.TIMESTAMP, F.RATING))

    def __init__(self, movies: dict, users: dict):
        self._movies, self._users = movies, users
        self._movie_bytes: dict = {}
        self._user_bytes: dict = {}

    @staticmethod
    def _features(feature: dict) -> bytes:
        return tf.train.Features(feature=feature).SerializeToString()

    def encode(self, rating: movielens.Rating) -> bytes:
        movie = self._movie_bytes.get(rating.movie_id)
        if movie is None:
            movie = self._movie_bytes[rating.movie_id] = self._features(
                movie_features(self._movies[rating.movie_id]))
        user = self._user_bytes.get(rating.user_id)
        if user is None:
            user = self._user_bytes[rating.user_id] = (
                _entry(self._USER_ID, _field(0x0A, _field(0x0A, rating.user_id.encode())))
                + self._features(user_features(self._users.get(rating.user_id))))
        body = b"".join((
            user,
            # Feature.int64_list (field 3) holding Int64List.value, packed (field 1)
            _entry(self._TIMESTAMP, _field(0x1A, _field(0x0A, _varint(rating.timestamp)))),
            # Feature.float_list (field 2) holding FloatList.value, packed (field 1)
            _entry(self._RATING, _field(0x12, _field(0x0A, _FLOAT.pack(rating.rating)))),
            movie))
        return _field(0x0A, body)  # Example.features (field 1)


def rating_example(rating: movielens.Rating, movie: movielens.Movie,
                   user: movielens.User | None) -> tf.train.Example:
    feature = {
        F.USER_ID: _bytes(rating.user_id),
        F.TIMESTAMP: _int(rating.timestamp),
        F.RATING: _float(rating.rating),
        **movie_features(movie),
        **user_features(user),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def catalog_example(movie: movielens.Movie) -> tf.train.Example:
    return tf.train.Example(features=tf.train.Features(feature=movie_features(movie)))


def join(rating: movielens.Rating, movies: dict, users: dict, files: dict) -> tf.train.Example:
    """The rating's example, with its movie and (where the layout has users) its user.

    A movie missing from the catalog, or a user missing from the user file, raises
    DataError naming the ratings file (files["ratings"]) and the rating's line."""
    movielens.check_references(rating, movies, users, files)
    return rating_example(rating, movies[rating.movie_id], users.get(rating.user_id))


def rating_examples(data_dir: str, layout: str | None = None, file_name: str | None = None):
    """Every rating of a MovieLens directory as a joined tf.Example, streamed."""
    layout = layout or movielens.detect_layout(data_dir)
    movies = movielens.read_movies(data_dir, layout)
    users = movielens.read_users(data_dir, layout)
    files = movielens.layout_files(layout)
    if file_name:
        files = {**files, "ratings": file_name}
    for rating in movielens.iter_ratings(data_dir, layout, file_name):
        yield join(rating, movies, users, files)


def random_bucket(rating: movielens.Rating, seed: int) -> float:
    """A deterministic uniform [0, 1) number per rating: the seeded random split."""
    key = f"{seed}|{rating.user_id}|{rating.movie_id}|{rating.timestamp}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2.0**64


def time_cutoff(data_dir: str, layout: str, eval_fraction: float) -> int:
    """The timestamp from which the newest `eval_fraction` of ratings start."""
    stamps = np.fromiter((r.timestamp for r in movielens.iter_ratings(data_dir, layout)),
                         dtype=np.int64)
    stamps.sort()
    return int(stamps[min(len(stamps) - 1, int(len(stamps) * (1.0 - eval_fraction)))])


def ratings_sources(split: str) -> list:
    """(ratings file name or None for the layout's own, split it goes to or None) pairs.

    'random' and 'time' split the layout's ratings file; 'fold:NAME' reads a predefined
    split, NAME.base for train and NAME.test for eval (ml-100k's u1 ... u5, ua, ub)."""
    if split in ("random", "time"):
        return [(None, None)]
    if split.startswith("fold:") and split[5:]:
        name = split[5:]
        return [(f"{name}.base", TRAIN), (f"{name}.test", EVAL)]
    raise ValueError(f"split must be 'random', 'time' or 'fold:NAME', not {split!r}")


class _JoinAndSplit(beam.DoFn):
    """Rating -> serialized example, joined with its movie and user, tagged with its
    split."""

    def __init__(self, data_dir, layout, split, seed, eval_fraction, cutoff):
        self._args = (data_dir, layout)
        self._split, self._seed = split, seed
        self._eval_fraction, self._cutoff = eval_fraction, cutoff
        self._counters = {s: beam.metrics.Metrics.counter(_NAMESPACE, s) for s in SPLITS}

    def setup(self):
        self._movies = movielens.read_movies(*self._args)
        self._users = movielens.read_users(*self._args)
        self._files = movielens.layout_files(self._args[1])
        self._encoder = ExampleEncoder(self._movies, self._users)

    def process(self, item):
        (file_name, fixed_split), rating = item
        files = {**self._files, "ratings": file_name} if file_name else self._files
        movielens.check_references(rating, self._movies, self._users, files)
        if fixed_split:
            split = fixed_split
        elif self._split == "time":
            split = EVAL if rating.timestamp >= self._cutoff else TRAIN
        else:
            split = EVAL if random_bucket(rating, self._seed) < self._eval_fraction else TRAIN
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
        cutoff = time_cutoff(data_dir, layout, eval_fraction) if split == "time" else 0

        examples = artifact_utils.get_single_instance(output_dict["examples"])
        examples.split_names = artifact_utils.encode_split_names(list(SPLITS))
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
         | "CatalogExample" >> beam.Map(lambda m: catalog_example(m).SerializeToString())
         | "WriteCatalog" >> beam.io.WriteToTFRecord(
             os.path.join(examples.uri, f"Split-{CATALOG}", "data_tfrecord"),
             file_name_suffix=".gz"))
        result = pipeline.run()
        result.wait_until_finish()

        counts = {s: 0 for s in SPLITS}
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
