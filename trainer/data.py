"""The Trainer's input: rating and catalog examples read from an Examples artifact, the
Transform layer applied once, and the transformed training ratings held in memory
(`Ratings`), so that epochs cost only the model's own work.

Every file access goes through tf.io.gfile, so artifact URIs on gs://, s3:// or hdfs://
read as local paths do.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
import tensorflow as tf

from trainer import features as F

READ_BATCH = 8192


def tfrecord_files(patterns) -> list[str]:
    """Files named by paths, directories (all files inside) or glob patterns, on any file
    system tf.io.gfile knows."""
    if isinstance(patterns, str):
        patterns = [patterns]
    files = []
    for pattern in patterns:
        if tf.io.gfile.isdir(pattern):
            pattern = os.path.join(pattern, "*")
        files += tf.io.gfile.glob(pattern)
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {patterns}")
    return sorted(files)


def split_dir(train_files, split: str) -> str:
    """The directory of another split of the same Examples artifact."""
    train_dir = os.path.dirname(tfrecord_files(train_files)[0])
    return os.path.join(os.path.dirname(train_dir), f"Split-{split}")


def raw_batches(files, features):
    """Parsed raw examples from gzipped TFRecords, in batches."""
    spec = F.raw_feature_spec(features)
    return (tf.data.TFRecordDataset(files, compression_type="GZIP")
            .batch(READ_BATCH)
            .map(lambda x: tf.io.parse_example(x, spec), num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def _concat(chunks: list[dict]) -> dict:
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}


def _to_numpy(tensors: dict) -> dict:
    out = {}
    for key, value in tensors.items():
        if isinstance(value, tf.SparseTensor):
            value = tf.RaggedTensor.from_sparse(value)
        if isinstance(value, tf.RaggedTensor):
            out[key] = np.array([[v.decode() for v in row] for row in value.to_list()],
                                dtype=object)
        elif value.dtype == tf.string:
            out[key] = np.array([v.decode() for v in value.numpy().reshape(-1)], dtype=object)
        else:
            out[key] = value.numpy().reshape(-1)
    return out


def release_free_memory() -> None:
    """Hands memory that the process freed back to the OS (glibc keeps it otherwise). The
    local runner runs every component in one process, so the Trainer starts with the Beam
    components' freed heap still counted in the process's RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class Ratings:
    """Transformed training ratings, held compactly: per rating only its ids, time and
    label (`rows`); the movie-level and user-level features once per movie and per user
    (`movies`, `users`: arrays indexed by movie_id_xf / user_id_xf). At 10M ratings this
    is ~40 bytes per rating instead of ~250 (title tokens and genres repeated per rating).

    `ratings[key]` is a per-rating column; `dataset()` yields batches with every feature
    the model reads, looked up per batch. With a `history` (trainer/history.py's
    CausalHistory of the training ratings, `with_history`), each example also gets its
    user's history before its time (F.HISTORY_XF), built per batch."""

    def __init__(self, rows: dict, movies: dict, users: dict, history=None):
        self.rows, self.movies, self.users = rows, movies, users
        self.history = history

    def with_history(self, history) -> "Ratings":
        return Ratings(self.rows, self.movies, self.users, history)

    def __len__(self) -> int:
        return len(self.rows[F.RATING_XF])

    def __getitem__(self, key: str) -> np.ndarray:
        return self.rows[key]

    def take(self, indices) -> "Ratings":
        return Ratings({k: v[indices] for k, v in self.rows.items()}, self.movies, self.users,
                       self.history)

    def dataset(self, batch_size: int, shuffle: bool = False, seed: int = 0):
        """Batches of every feature. With `shuffle`, each pass (each iterator: each Keras
        epoch) follows a new seeded permutation of all ratings: a full shuffle whose only
        buffer is one index array."""
        n = len(self)
        columns = dict(self.rows)
        if self.history is not None:
            columns["_start"], columns["_end"] = self.history.slices(
                self.rows[F.USER_ID_XF], self.rows[F.TIMESTAMP_XF])
        rows = {k: tf.constant(v) for k, v in columns.items()}
        tables = [(F.MOVIE_ID_XF, {k: tf.constant(v) for k, v in self.movies.items()}),
                  (F.USER_ID_XF, {k: tf.constant(v) for k, v in self.users.items()})]

        def lookup(indices):
            batch = {k: tf.gather(v, indices) for k, v in rows.items()}
            for id_key, table in tables:
                for key, values in table.items():
                    batch[key] = tf.gather(values, batch[id_key])
            if self.history is not None:
                batch.update(self.history.batch(batch.pop("_start"), batch.pop("_end")))
            return batch

        if shuffle:
            rng = np.random.default_rng(seed)

            def permuted():
                order = rng.permutation(n)
                for start in range(0, n, batch_size):
                    yield order[start:start + batch_size]

            indices = tf.data.Dataset.from_generator(
                permuted, output_signature=tf.TensorSpec([None], tf.int64))
        else:
            indices = tf.data.Dataset.range(0, n, batch_size).map(
                lambda start: tf.range(start, tf.minimum(start + batch_size, n)))
        return indices.map(lookup).prefetch(tf.data.AUTOTUNE)


def training_dataset(ratings: Ratings, hp, shuffle: bool = True):
    """The batches the model trains (or validates) on: hp.batch_size ratings each, the
    global batch when training is distributed (trainer/distribution.py)."""
    return ratings.dataset(hp.batch_size, shuffle=shuffle, seed=hp.seed)


def _first_rows(ids: np.ndarray, columns: dict) -> tuple:
    """(unique ids, each column at each id's first row)."""
    unique, first = np.unique(ids, return_index=True)
    return unique, {k: v[first] for k, v in columns.items()}


def _table(parts: list) -> dict:
    """Per-id arrays (row = id) from (ids, columns) parts; ids never seen stay zero."""
    if not parts:
        return {}
    size = int(max(ids.max() for ids, _ in parts)) + 1
    table = {k: np.zeros((size,) + v.shape[1:], v.dtype) for k, v in parts[0][1].items()}
    for ids, columns in parts:
        for k, v in columns.items():
            table[k][ids] = v
    return table


def load_ratings(files, tft_layer):
    """(Ratings of every example, raw side features of each user: the users' table the
    export serves from)."""
    rows, movie_parts, user_parts, raw_users = [], [], [], []
    user_keys = F.names((F.QUERY_FEATURES[0],) + F.USER_SIDE_FEATURES)
    for raw in raw_batches(files, F.RATING_EXAMPLE_FEATURES):
        xf = {k: v.numpy() for k, v in tft_layer(raw).items()}
        movie_parts.append(_first_rows(xf[F.MOVIE_ID_XF],
                                       {k: xf.pop(k) for k in F.MOVIE_LEVEL_XF}))
        user_parts.append(_first_rows(xf[F.USER_ID_XF],
                                      {k: xf.pop(k) for k in F.USER_LEVEL_XF}))
        rows.append(xf)
        _, first = np.unique(raw[F.USER_ID].numpy().reshape(-1), return_index=True)
        raw_users.append(_to_numpy({k: tf.gather(raw[k], first) for k in user_keys}))
    users = {}
    for cols in raw_users:
        for i, uid in enumerate(cols[F.USER_ID]):
            users.setdefault(uid, tuple(cols[k][i] for k in user_keys[1:]))
    user_table = {F.USER_ID: list(users)}
    for j, key in enumerate(user_keys[1:]):
        user_table[key] = [v[j] for v in users.values()]
    return Ratings(_concat(rows), _table(movie_parts), _table(user_parts)), user_table


def load_catalog(files, tft_layer):
    """Raw columns of every catalog movie, and their transformed movie ids."""
    chunks, ids = [], []
    for raw in raw_batches(files, F.MOVIE_FEATURES):
        chunks.append(_to_numpy(raw))
        ids.append(tft_layer({F.MOVIE_ID: raw[F.MOVIE_ID]})[F.MOVIE_ID_XF].numpy().reshape(-1))
    catalog = _concat(chunks)
    catalog[F.MOVIE_GENRES] = [list(g) for g in catalog[F.MOVIE_GENRES]]
    return catalog, np.concatenate(ids)


def split_validation(ratings: Ratings, fraction: float, seed: int):
    """A seeded random `fraction` of the training rows, held out for early stopping."""
    if fraction <= 0:
        return ratings, None
    order = np.random.default_rng(seed).permutation(len(ratings))
    cut = int(round(len(ratings) * fraction))
    return ratings.take(order[cut:]), ratings.take(order[:cut])

