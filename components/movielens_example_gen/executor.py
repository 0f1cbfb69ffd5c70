"""MovieLensExampleGen's executor: raw MovieLens files -> gzipped TFRecords of tf.Examples.

Output: one Examples artifact with three splits
  train, eval  one example per rating, joined with its movie and (where the layout has a user
               file) its user: every feature of trainer.features.RATING_EXAMPLE_FEATURES;
               on a time split, each eval example also carries its request context
               (F.HISTORY_FEATURES): what a replay request at its time knows, its user's
               CONTEXT_LENGTH latest ratings strictly before it, in train or eval
               (trainer/replay.py's protocol), grouped by user in Beam;
  catalog      one example per movie in the catalog file, rated or not (MOVIE_FEATURES).

Ratings stream through Beam (never one in-memory frame): a splittable DoFn reads each ratings
file in byte ranges (a range owns the lines that start in it), so a runner spreads one file
over its workers; movies and users, which are small, are read once and joined in the
workers. Before Beam starts, movielens.preflight checks the files, the catalog, the users
and the first lines of the ratings, so most bad input fails at once with one line naming the
file and line. Past the first range a bad line is named by its byte offset, quoted.

The Examples artifact records, besides the split counts, how the reading was spread:
`read_ranges` (byte ranges read) and `ratings_per_worker` (JSON: host/pid -> ratings).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import socket
from typing import Any, Dict, List

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
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
from trainer import replay
from trainer import signatures as S
from trainer import storage

TRAIN, EVAL, CATALOG = F.TRAIN_SPLIT, F.EVAL_SPLIT, F.CATALOG_SPLIT
KNOWN = "known"  # _ReadJoinAndSplit's output of every rating as (user, context entry)
#: The most ratings an eval example's request context holds (its user's latest before it):
#: the longest history a request may bring (trainer/signatures.py), so that the Evaluator
#: sees what the RetrievalEvaluator's replay requests pass.
CONTEXT_LENGTH = S.MAX_HISTORY
_NAMESPACE = "movierec.example_gen"
# Counters of the ratings read per worker process (named by worker_name()) and of the byte
# ranges read (RANGES).
_READ_NAMESPACE = "movierec.example_gen.read"
RANGES = "ranges"


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
        return ex.example(self.entries(rating))

    def entries(self, rating: movielens.Rating) -> bytes:
        """The rating's example's map entries (an example once ex.example wraps them)."""
        movie = self._movie_bytes.get(rating.movie_id)
        if movie is None:
            movie = self._movie_bytes[rating.movie_id] = ex.entries(
                movie_values(self._movies[rating.movie_id]))
        user = self._user_bytes.get(rating.user_id)
        if user is None:
            user = self._user_bytes[rating.user_id] = ex.entries(
                {F.USER_ID: rating.user_id, **user_values(self._users.get(rating.user_id))})
        return b"".join((user, ex.entry(F.TIMESTAMP, rating.timestamp),
                         ex.entry(F.RATING, rating.rating), movie))


def with_context(element, length: int = CONTEXT_LENGTH):
    """(user, {KNOWN: [(timestamp, movie, rating)], EVAL: [(timestamp, entries)]}) -> the
    user's eval examples, each with its request context: the user's `length` latest known
    ratings strictly before its timestamp (equal times count as not before), oldest first,
    ties by movie id."""
    _, groups = element
    known = sorted(groups[KNOWN])
    times = [stamp for stamp, _, _ in known]
    for stamp, entries in sorted(groups[EVAL], key=lambda e: e[0]):
        end = bisect.bisect_left(times, stamp)
        earlier = known[max(0, end - length):end]
        yield ex.example(entries, ex.entries({
            F.HISTORY_MOVIE_IDS: [movie for _, movie, _ in earlier],
            F.HISTORY_RATINGS: [rating for _, _, rating in earlier],
            F.HISTORY_TIMESTAMPS: [t for t, _, _ in earlier]}))


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
        return EVAL if replay.is_held_out(rating.timestamp, cutoff) else TRAIN
    return EVAL if random_bucket(rating, seed) < eval_fraction else TRAIN


def time_cutoff(data_dir: str, layout: str, eval_fraction: float) -> int:
    """The timestamp from which the newest `eval_fraction` of ratings start
    (trainer.replay.time_cutoff of the layout's ratings)."""
    return replay.time_cutoff(np.fromiter(
        (r.timestamp for r in movielens.iter_ratings(data_dir, layout)), dtype=np.int64),
        eval_fraction)


#: Byte ranges a ratings file is first split into (runners split further while they read):
#: about RANGES_PER_FILE of them, each at least MIN_RANGE_BYTES and at most MAX_RANGE_BYTES
#: (Beam's text source reads 64 MiB bundles), so that small files stay one range.
RANGES_PER_FILE = 16
MIN_RANGE_BYTES = 1 << 20
MAX_RANGE_BYTES = 64 << 20


def range_bytes(size: int) -> int:
    """The size of the byte ranges a ratings file of `size` bytes is first split into."""
    return min(MAX_RANGE_BYTES, max(MIN_RANGE_BYTES, -(-size // RANGES_PER_FILE)))


def ratings_source(data_dir: str, layout: str, file_name: str | None,
                   fixed_split: str | None) -> tuple:
    """What _ReadJoinAndSplit reads: (file name or None for the layout's own, the split its
    ratings go to or None, path, size in bytes, bytes per initial range). Beam's
    filesystems find the size, so the same works for any path they understand."""
    path = storage.join(data_dir, file_name or movielens.layout_files(layout)["ratings"])
    size = FileSystems.get_filesystem(path).size(path)
    return file_name, fixed_split, path, size, range_bytes(size)


class _ByteRanges(beam.transforms.core.RestrictionProvider):
    """A ratings source's restriction: the byte offsets [0, size) of its file, split in
    ranges of the source's bytes per range; a runner may split a range further while it
    is read (dynamic work rebalancing)."""

    def initial_restriction(self, source):
        return OffsetRange(0, source[3])

    def create_tracker(self, restriction):
        return OffsetRestrictionTracker(restriction)

    def split(self, source, restriction):
        yield from restriction.split(source[4])

    def restriction_size(self, source, restriction):
        return restriction.size()


def worker_name() -> str:
    """This process, as the read statistics name it: host/pid."""
    return f"{socket.gethostname()}/{os.getpid()}"


class _ReadJoinAndSplit(beam.DoFn):
    """A splittable DoFn: ratings source -> the serialized examples of the ratings whose
    lines start in its byte range, joined with their movie and user, tagged with their
    split. movielens.read_ratings parses each line as iter_ratings does (a range that does
    not start at byte 0 names a bad line by its offset); counters say how many ratings
    each worker process read and how many ranges there were. On a time split it also
    emits every rating to KNOWN, and its eval ratings as (user, (timestamp, entries)), for
    with_context."""

    def __init__(self, data_dir, layout, split, seed, eval_fraction, cutoff):
        self._args = (data_dir, layout)
        self._split, self._seed = split, seed
        self._eval_fraction, self._cutoff = eval_fraction, cutoff
        self._context = split == splits.TIME

    def setup(self):
        self._movies = movielens.read_movies(*self._args)
        self._users = movielens.read_users(*self._args)
        self._files = movielens.layout_files(self._args[1])
        self._encoder = ExampleEncoder(self._movies, self._users)
        self._counters = {s: beam.metrics.Metrics.counter(_NAMESPACE, s) for s in F.SPLITS}
        self._read = beam.metrics.Metrics.counter(_READ_NAMESPACE, worker_name())
        self._ranges = beam.metrics.Metrics.counter(_READ_NAMESPACE, RANGES)

    def process(self, source, tracker=beam.DoFn.RestrictionParam(_ByteRanges())):
        file_name, fixed_split, path, _, _ = source
        files = {**self._files, "ratings": file_name} if file_name else self._files
        restriction = tracker.current_restriction()
        counts = {s: 0 for s in F.SPLITS}
        self._ranges.inc()
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            for rating in movielens.read_ratings(
                    f, files["ratings"], self._args[1], restriction.start, restriction.stop,
                    tracker.try_claim, (self._movies, self._users, files)):
                split = split_of(rating, fixed_split, self._split, self._seed,
                                 self._eval_fraction, self._cutoff)
                counts[split] += 1
                if self._context:
                    yield beam.pvalue.TaggedOutput(KNOWN, (rating.user_id, (
                        rating.timestamp, rating.movie_id, rating.rating)))
                    if split == EVAL:
                        yield beam.pvalue.TaggedOutput(EVAL, (rating.user_id, (
                            rating.timestamp, self._encoder.entries(rating))))
                        continue
                yield beam.pvalue.TaggedOutput(split, self._encoder.encode(rating))
        for split, count in counts.items():
            if count:
                self._counters[split].inc(count)
        self._read.inc(sum(counts.values()))


class RatingExamples(beam.PTransform):
    """The ratings files of `sources` (splits.ratings_sources) -> {TRAIN, EVAL}: their
    ratings as serialized examples, joined with movies and users and split by `split`,
    read in byte ranges by _ReadJoinAndSplit (the files' sizes are looked up at
    construction); on a time split the eval examples get their request context, grouped
    by user (with_context). read_statistics(result) says how the reading was spread."""

    def __init__(self, data_dir, layout, sources, split, seed, eval_fraction, cutoff):
        super().__init__()
        self._sources = [ratings_source(data_dir, layout, *source) for source in sources]
        self._fn = _ReadJoinAndSplit(data_dir, layout, split, seed, eval_fraction, cutoff)
        self._context = split == splits.TIME

    def expand(self, pbegin):
        read = (pbegin
                | "Sources" >> beam.Create(self._sources)
                | "ReadJoinAndSplit" >> beam.ParDo(self._fn).with_outputs(TRAIN, EVAL, KNOWN))
        if not self._context:
            return {TRAIN: read[TRAIN], EVAL: read[EVAL]}
        return {TRAIN: read[TRAIN],
                EVAL: ({KNOWN: read[KNOWN], EVAL: read[EVAL]}
                       | "GroupByUser" >> beam.CoGroupByKey()
                       | "WithContext" >> beam.FlatMap(with_context))}


def read_statistics(result) -> dict:
    """{"ranges": byte ranges read, "ratings_per_worker": {worker: ratings}} of a finished
    pipeline that ran _ReadJoinAndSplit."""
    stats = {"ranges": 0, "ratings_per_worker": {}}
    for counter in result.metrics().query(
            beam.metrics.MetricsFilter().with_namespace(_READ_NAMESPACE))["counters"]:
        value = counter.committed or counter.attempted
        if counter.key.metric.name == RANGES:
            stats["ranges"] += value
        else:
            workers = stats["ratings_per_worker"]
            workers[counter.key.metric.name] = workers.get(counter.key.metric.name, 0) + value
    return stats


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
        rated = pipeline | "Ratings" >> RatingExamples(
            data_dir, layout, sources, split, seed, eval_fraction, cutoff)
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
        read = read_statistics(result)
        logging.info("MovieLensExampleGen read %d ratings in %d byte ranges: %s",
                     counts[TRAIN] + counts[EVAL], read["ranges"],
                     json.dumps(read["ratings_per_worker"], sort_keys=True))
        if counts[TRAIN] == 0 or counts[EVAL] == 0:
            raise movielens.DataError(
                f"the {split} split left {counts[TRAIN]} train and {counts[EVAL]} eval "
                f"ratings; need some of each")
        examples.set_string_custom_property("layout", layout)
        examples.set_string_custom_property("input_dir", storage.absolute(data_dir))
        examples.set_string_custom_property("input_fingerprint",
                                            exec_properties.get("input_fingerprint", ""))
        examples.set_string_custom_property("split_counts", json.dumps(counts))
        examples.set_int_custom_property("read_ranges", read["ranges"])
        examples.set_string_custom_property(
            "ratings_per_worker", json.dumps(read["ratings_per_worker"], sort_keys=True))
        for name, count in counts.items():
            examples.set_int_custom_property(f"num_{name}", count)
