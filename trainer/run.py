"""Trainer module: run_fn (the TFX entry point) and a TFX-free `train_and_export`, which
composes the Trainer's rooms:

- trainer/data.py: input (examples read through tf.io.gfile, the Transform layer applied
  once, the training ratings held in memory);
- trainer/fit.py: the model built and trained (optionally distributed,
  trainer/distribution.py), the residual neighbourhood after training;
- trainer/export.py: the exported SavedModel and its signatures.
"""

from __future__ import annotations

import json
import os
import time

import tensorflow as tf
import tensorflow_transform as tft

from trainer import data, distribution, export
from trainer import features as F
from trainer import popularity
from trainer.fit import fit, fit_factorization, fit_neighborhood
from trainer.model import HParams, Vocab


def train_and_export(train_files, catalog_files, transform_output: str, serving_dir: str,
                     hp: HParams, log_dir: str | None = None,
                     base_model: str | None = None) -> dict:
    """Everything run_fn does, callable without TFX: trains on `train_files`, exports the
    SavedModel with the catalog of `catalog_files` to `serving_dir`, and returns the
    training summary (also written to LOG_DIR/training.json): the per-epoch history, the
    hyperparameters, example counts, epochs, catalog size, replicas, seconds.
    base_model: an exported model to warm-start from (trainer.warm_start).
    With hp.distribution, every worker runs this; only the chief writes serving_dir and
    log_dir."""
    started = time.time()
    # first: a multi-worker strategy configures TensorFlow's runtime before anything runs
    strategy = distribution.strategy(hp.distribution)
    tft_output = tft.TFTransformOutput(transform_output)
    tft_layer = tft_output.transform_features_layer()
    vocab = Vocab.from_tft_output(tft_output)
    data.release_free_memory()  # what earlier components of this process freed
    ratings, users = data.load_ratings(data.tfrecord_files(train_files), tft_layer)
    data.release_free_memory()  # the parsed batches
    train, validation = data.split_validation(ratings, hp.validation_fraction, hp.seed)
    warm = {}

    def initialize(model):
        from trainer.warm_start import warm_start

        warm.update(warm_start(model, base_model, tft_output))

    model, counts, history = fit(train, vocab, hp, validation,
                                 initialize=initialize if base_model else None)
    neighborhood_seconds = fit_neighborhood(model, train, vocab)
    factorization_seconds = fit_factorization(model, train, vocab)
    catalog, catalog_xf_ids = data.load_catalog(data.tfrecord_files(catalog_files), tft_layer)
    chief = distribution.is_chief(strategy)
    if chief:
        edges, table = popularity.time_buckets(train[F.MOVIE_ID_XF], train[F.TIMESTAMP_XF],
                                               vocab.sizes[F.MOVIE_ID_XF])
        module = export.MovieRecExport(model, tft_layer, catalog, users,
                                       popularity=counts[catalog_xf_ids], index=hp.index,
                                       recent=(edges, table[:, catalog_xf_ids]))
        export.save(module, serving_dir)
    history = {k: [float(x) for x in v] for k, v in history.items()}
    summary = {"history": history, "hparams": json.loads(hp.to_json()),
               "train_examples": int(len(train)),
               "epochs": hp.epochs_for(len(train)),
               "validation_examples": len(validation) if validation is not None else 0,
               "catalog_size": int(len(catalog_xf_ids)),
               "replicas": distribution.replicas(strategy),
               "neighborhood_seconds": round(neighborhood_seconds, 1),
               "factorization_seconds": round(factorization_seconds, 1),
               "warm_start": {"base_model": base_model, **warm} if base_model else None,
               "seconds": round(time.time() - started, 1)}
    if log_dir and chief:
        tf.io.gfile.makedirs(log_dir)
        with tf.io.gfile.GFile(os.path.join(log_dir, "training.json"), "w") as f:
            json.dump(summary, f, indent=1)
    distribution.barrier(strategy)  # the other workers wait for the chief's export
    return summary


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
        fn_args.train_files, data.split_dir(fn_args.train_files, F.CATALOG_SPLIT),
        fn_args.transform_output, fn_args.serving_model_dir, hp,
        log_dir=fn_args.model_run_dir, base_model=fn_args.base_model or None)
