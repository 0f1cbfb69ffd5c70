"""Trainer module: run_fn (the TFX entry point) and a TFX-free `train_and_export`.

Input: the raw rating examples (splits train/eval), the catalog split, and Transform's
graph. The Transform layer is applied here, once, and the transformed training set is kept
in memory, so epochs cost only the model's own work.
"""

from __future__ import annotations

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


def load_ratings(files, tft_layer):
    """Transformed columns of every rating example, plus each user's raw side features."""
    chunks, users = [], {}
    user_keys = F.names((F.QUERY_FEATURES[0],) + F.USER_SIDE_FEATURES)
    for raw in raw_batches(files, F.RATING_EXAMPLE_FEATURES):
        xf = tft_layer(raw)
        chunks.append({k: v.numpy() for k, v in xf.items()})
        cols = _to_numpy({k: raw[k] for k in user_keys})
        for i, uid in enumerate(cols[F.USER_ID]):
            if uid not in users:
                users[uid] = tuple(cols[k][i] for k in user_keys[1:])
    user_table = {F.USER_ID: list(users)}
    for j, key in enumerate(user_keys[1:]):
        user_table[key] = [v[j] for v in users.values()]
    return _concat(chunks), user_table


def load_catalog(files, tft_layer):
    """Raw columns of every catalog movie, and their transformed movie ids."""
    chunks, ids = [], []
    for raw in raw_batches(files, F.MOVIE_FEATURES):
        chunks.append(_to_numpy(raw))
        ids.append(tft_layer({F.MOVIE_ID: raw[F.MOVIE_ID]})[F.MOVIE_ID_XF].numpy().reshape(-1))
    catalog = _concat(chunks)
    catalog[F.MOVIE_GENRES] = [list(g) for g in catalog[F.MOVIE_GENRES]]
    return catalog, np.concatenate(ids)


def split_validation(columns: dict, fraction: float, seed: int):
    """A seeded random `fraction` of the training rows, held out for early stopping."""
    n = len(columns[F.RATING_XF])
    if fraction <= 0:
        return columns, None
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * fraction))
    return ({k: v[order[cut:]] for k, v in columns.items()},
            {k: v[order[:cut]] for k, v in columns.items()})


class _LogEpochs(tf.keras.callbacks.Callback):
    """One log line per epoch (the CLI sends logs to the run's log file)."""

    def on_epoch_end(self, epoch, logs=None):
        logging.getLogger("movierec.trainer").info(
            "epoch %d: %s", epoch + 1,
            " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items())))


def build_model(train: dict, vocab: Vocab, hp: HParams):
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
    steps_per_epoch = -(-len(train[F.RATING_XF]) // hp.batch_size)
    model.compile(optimizer=hp.make_optimizer(
        steps_per_epoch * hp.epochs_for(len(train[F.RATING_XF]))))
    return model, counts


def training_dataset(columns: dict, hp: HParams, shuffle: bool = True):
    ds = tf.data.Dataset.from_tensor_slices(columns)
    if shuffle:
        n = len(next(iter(columns.values())))
        ds = ds.shuffle(min(n, 1_000_000), seed=hp.seed, reshuffle_each_iteration=True)
    return ds.batch(hp.batch_size).prefetch(tf.data.AUTOTUNE)


def fit(train: dict, vocab: Vocab, hp: HParams, validation: dict | None = None,
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
        dataset, epochs=1 if hp.max_steps else hp.epochs_for(len(train[F.RATING_XF])),
        verbose=0, **steps,
        validation_data=training_dataset(validation, hp, shuffle=False) if validation
        else None,
        callbacks=[_LogEpochs()] + list(callbacks))
    return model, counts, history.history


def train_and_export(train_files, catalog_files, transform_output: str, serving_dir: str,
                     hp: HParams, log_dir: str | None = None,
                     base_model: str | None = None) -> dict:
    """Everything run_fn does, callable without TFX. Returns the training history.
    base_model: an exported model to warm-start from (trainer.warm_start)."""
    started = time.time()
    tft_output = tft.TFTransformOutput(transform_output)
    tft_layer = tft_output.transform_features_layer()
    vocab = Vocab.from_tft_output(tft_output, hp.timestamp_buckets)
    columns, users = load_ratings(tfrecord_files(train_files), tft_layer)
    train, validation = split_validation(columns, hp.validation_fraction, hp.seed)
    warm = {}

    def initialize(model):
        from trainer.warm_start import warm_start

        warm.update(warm_start(model, base_model, tft_output))

    model, counts, history = fit(train, vocab, hp, validation,
                                 initialize=initialize if base_model else None)
    catalog, catalog_xf_ids = load_catalog(tfrecord_files(catalog_files), tft_layer)
    module = export.MovieRecExport(model, tft_layer, catalog, users,
                                   popularity=counts[catalog_xf_ids], index=hp.index)
    export.save(module, serving_dir)
    history = {k: [float(x) for x in v] for k, v in history.items()}
    summary = {"history": history, "hparams": json.loads(hp.to_json()),
               "train_examples": int(len(train[F.RATING_XF])),
               "epochs": hp.epochs_for(len(train[F.RATING_XF])),
               "validation_examples": int(len(validation[F.RATING_XF])) if validation else 0,
               "catalog_size": int(len(catalog_xf_ids)),
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
        fn_args.train_files, _split_dir(fn_args.train_files, "catalog"),
        fn_args.transform_output, fn_args.serving_model_dir, hp,
        log_dir=fn_args.model_run_dir, base_model=fn_args.base_model or None)
