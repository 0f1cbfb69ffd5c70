"""Trainer module: run_fn (the TFX entry point) and a TFX-free `train_and_export`.

Input: the raw rating examples (splits train/eval), the catalog split, and Transform's
graph. The Transform layer is applied here, once, and the transformed training set is kept
in memory, so epochs cost only the model's own work.
"""

from __future__ import annotations

import ctypes
import glob
import json
import logging
import os
import time

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from trainer import export
from trainer import features as F
from trainer import neighborhood
from trainer.model import HParams, MovieRecModel, Vocab, user_history

_READ_BATCH = 8192


def tfrecord_files(patterns) -> list[str]:
    """Files named by paths, directories (all files inside) or glob patterns."""
    if isinstance(patterns, str):
        patterns = [patterns]
    files = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            pattern = os.path.join(pattern, "*")
        files += glob.glob(pattern)
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {patterns}")
    return sorted(files)


def raw_batches(files, features):
    """Parsed raw examples from gzipped TFRecords, in batches."""
    spec = F.raw_feature_spec(features)
    return (tf.data.TFRecordDataset(files, compression_type="GZIP")
            .batch(_READ_BATCH)
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
    the model reads, looked up per batch."""

    def __init__(self, rows: dict, movies: dict, users: dict):
        self.rows, self.movies, self.users = rows, movies, users

    def __len__(self) -> int:
        return len(self.rows[F.RATING_XF])

    def __getitem__(self, key: str) -> np.ndarray:
        return self.rows[key]

    def take(self, indices) -> "Ratings":
        return Ratings({k: v[indices] for k, v in self.rows.items()}, self.movies, self.users)

    def dataset(self, batch_size: int, shuffle: bool = False, seed: int = 0):
        """Batches of every feature. With `shuffle`, each pass (each iterator: each Keras
        epoch) follows a new seeded permutation of all ratings: a full shuffle whose only
        buffer is one index array."""
        n = len(self)
        rows = {k: tf.constant(v) for k, v in self.rows.items()}
        tables = [(F.MOVIE_ID_XF, {k: tf.constant(v) for k, v in self.movies.items()}),
                  (F.USER_ID_XF, {k: tf.constant(v) for k, v in self.users.items()})]

        def lookup(indices):
            batch = {k: tf.gather(v, indices) for k, v in rows.items()}
            for id_key, table in tables:
                for key, values in table.items():
                    batch[key] = tf.gather(values, batch[id_key])
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


VAL_OBJECTIVE = "val_objective"


class ValidationObjective(tf.keras.callbacks.Callback):
    """Adds val_objective = val_rmse + the validation retrieval loss per example: both
    tasks count (the Tuner minimises it, early stopping watches it)."""

    def __init__(self, batch_size: int):
        super().__init__()
        self._batch = batch_size

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and "val_rmse" in logs:
            logs[VAL_OBJECTIVE] = logs["val_rmse"] + logs["val_retrieval_loss"] / self._batch


def early_stopping(hp: HParams) -> list:
    """Callbacks that stop training when the validation objective stops improving and keep
    the best epoch's weights (when hp.early_stopping_patience > 0)."""
    if hp.early_stopping_patience <= 0:
        return []
    return [ValidationObjective(hp.batch_size),
            tf.keras.callbacks.EarlyStopping(monitor=VAL_OBJECTIVE, mode="min",
                                             patience=hp.early_stopping_patience,
                                             restore_best_weights=True)]


class _LogEpochs(tf.keras.callbacks.Callback):
    """One log line per epoch (the CLI sends logs to the run's log file)."""

    def on_epoch_end(self, epoch, logs=None):
        logging.getLogger("movierec.trainer").info(
            "epoch %d: %s", epoch + 1,
            " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items())))


def build_model(train: Ratings, vocab: Vocab, hp: HParams):
    """(compiled multitask model, rating count per movie_id_xf): the model gets the
    statistics it needs from the training rows (movie sampling probabilities for logQ,
    users' histories, the mean rating)."""
    tf.keras.utils.set_random_seed(hp.seed)
    counts = np.bincount(train[F.MOVIE_ID_XF], minlength=vocab.sizes[F.MOVIE_ID_XF])
    log_prob = np.log((counts + 1.0) / (counts.sum() + len(counts)))
    history = user_history(train[F.USER_ID_XF], train[F.MOVIE_ID_XF], train[F.TIMESTAMP_S_XF],
                           train[F.RATING_XF], vocab.sizes[F.USER_ID_XF], hp.history_len)
    raters = user_history(train[F.MOVIE_ID_XF], train[F.USER_ID_XF], train[F.TIMESTAMP_S_XF],
                          train[F.RATING_XF], vocab.sizes[F.MOVIE_ID_XF],
                          hp.rater_history_len) if hp.rater_history_len else None
    model = MovieRecModel(vocab, hp, movie_log_prob=log_prob,
                          mean_rating=float(np.mean(train[F.RATING_XF])), history=history,
                          raters=raters)
    steps_per_epoch = -(-len(train) // hp.batch_size)
    model.compile(optimizer=hp.make_optimizer(
        steps_per_epoch * hp.epochs_for(len(train))))
    return model, counts


def training_dataset(ratings: Ratings, hp: HParams, shuffle: bool = True):
    return ratings.dataset(hp.batch_size, shuffle=shuffle, seed=hp.seed)


def fit(train: Ratings, vocab: Vocab, hp: HParams, validation: Ratings | None = None,
        callbacks=(), initialize=None):
    """Builds and trains the multitask model on transformed columns. `initialize(model)`,
    when given, runs on the built model before training (warm start)."""
    model, counts = build_model(train, vocab, hp)
    dataset = training_dataset(train, hp)
    if initialize is not None:
        model(next(iter(dataset)))  # creates the variables
        initialize(model)
    steps = {}
    if hp.max_steps:
        dataset, steps = dataset.repeat(), {"steps_per_epoch": hp.max_steps}
    history = model.fit(
        dataset, epochs=1 if hp.max_steps else hp.epochs_for(len(train)),
        verbose=0, **steps,
        validation_data=(training_dataset(validation, hp, shuffle=False)
                         if validation is not None else None),
        callbacks=(early_stopping(hp) if validation is not None else [])
        + [_LogEpochs()] + list(callbacks))
    return model, counts, history.history


def attach_neighborhood(model, train: Ratings, vocab: Vocab, hp: HParams) -> float:
    """Gives the trained model's rating its residual neighbourhood (trainer/neighborhood.py)
    built from its errors on `train`; returns the seconds it took (0 when off)."""
    if not (hp.residual_knn_weight or hp.residual_session_weight):
        return 0.0
    started = time.time()
    separate = hp.rating_tower == "separate"  # the rating path alone: no retrieval towers

    @tf.function
    def rate(batch):
        q = None if separate else model.query_tower(batch, training=False)
        c = None if separate else model.candidate_tower(batch, training=False)
        return model.rating_model(batch, q, c, training=False)

    predicted = np.concatenate([rate(batch).numpy() for batch in train.dataset(_READ_BATCH)])
    users, movies = train[F.USER_ID_XF], train[F.MOVIE_ID_XF]
    similar, similarity = neighborhood.similar_movies(
        users, movies, train[F.RATING_XF], vocab.sizes[F.MOVIE_ID_XF], hp.residual_neighbors)
    model.rating_model.neighborhood = neighborhood.ResidualNeighborhood(
        users, movies, train[F.TIMESTAMP_S_XF], train[F.RATING_XF] - predicted,
        similar, similarity, knn_weight=hp.residual_knn_weight,
        session_weight=hp.residual_session_weight, session_tau=hp.residual_session_tau)
    seconds = time.time() - started
    logging.getLogger("movierec.trainer").info("residual neighbourhood: %.1f s", seconds)
    return seconds


def train_and_export(train_files, catalog_files, transform_output: str, serving_dir: str,
                     hp: HParams, log_dir: str | None = None,
                     base_model: str | None = None) -> dict:
    """Everything run_fn does, callable without TFX: trains on `train_files`, exports the
    SavedModel with the catalog of `catalog_files` to `serving_dir`, and returns the
    training summary (also written to LOG_DIR/training.json): the per-epoch history, the
    hyperparameters, example counts, epochs, catalog size, seconds.
    base_model: an exported model to warm-start from (trainer.warm_start)."""
    started = time.time()
    tft_output = tft.TFTransformOutput(transform_output)
    tft_layer = tft_output.transform_features_layer()
    vocab = Vocab.from_tft_output(tft_output)
    release_free_memory()  # what earlier components of this process freed
    ratings, users = load_ratings(tfrecord_files(train_files), tft_layer)
    release_free_memory()  # the parsed batches
    train, validation = split_validation(ratings, hp.validation_fraction, hp.seed)
    warm = {}

    def initialize(model):
        from trainer.warm_start import warm_start

        warm.update(warm_start(model, base_model, tft_output))

    model, counts, history = fit(train, vocab, hp, validation,
                                 initialize=initialize if base_model else None)
    neighborhood_seconds = attach_neighborhood(model, train, vocab, hp)
    catalog, catalog_xf_ids = load_catalog(tfrecord_files(catalog_files), tft_layer)
    module = export.MovieRecExport(model, tft_layer, catalog, users,
                                   popularity=counts[catalog_xf_ids], index=hp.index)
    export.save(module, serving_dir)
    history = {k: [float(x) for x in v] for k, v in history.items()}
    summary = {"history": history, "hparams": json.loads(hp.to_json()),
               "train_examples": int(len(train)),
               "epochs": hp.epochs_for(len(train)),
               "validation_examples": len(validation) if validation is not None else 0,
               "catalog_size": int(len(catalog_xf_ids)),
               "neighborhood_seconds": round(neighborhood_seconds, 1),
               "warm_start": {"base_model": base_model, **warm} if base_model else None,
               "seconds": round(time.time() - started, 1)}
    if log_dir:
        tf.io.gfile.makedirs(log_dir)
        with tf.io.gfile.GFile(os.path.join(log_dir, "training.json"), "w") as f:
            json.dump(summary, f, indent=1)
    return summary


def _split_dir(train_files, split: str) -> str:
    """The directory of another split of the same Examples artifact."""
    train_dir = os.path.dirname(tfrecord_files(train_files)[0])
    return os.path.join(os.path.dirname(train_dir), f"Split-{split}")


def hparams_for(fn_args) -> HParams:
    """The pipeline's hyperparameters, overridden by the Tuner's best ones when given."""
    values = dict((fn_args.custom_config or {}).get("hparams") or {})
    tuned = fn_args.hyperparameters or {}
    values.update(tuned.get("values", {}))
    return HParams.from_dict(values)


def run_fn(fn_args):
    """TFX Trainer entry point."""
    hp = hparams_for(fn_args)
    train_and_export(
        fn_args.train_files, _split_dir(fn_args.train_files, F.CATALOG_SPLIT),
        fn_args.transform_output, fn_args.serving_model_dir, hp,
        log_dir=fn_args.model_run_dir, base_model=fn_args.base_model or None)
