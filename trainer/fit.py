"""Fitting: the multitask model built from the training ratings' statistics, trained with
Keras (optionally under a tf.distribute strategy, trainer/distribution.py), early stopping
on a validation split, and the residual neighbourhood fitted after training."""

from __future__ import annotations

import logging
import time

import numpy as np
import tensorflow as tf

from trainer import distribution
from trainer import features as F
from trainer.data import READ_BATCH, Ratings, training_dataset
from trainer.history import CausalHistory
from trainer.neighborhood import similar_movies
from trainer.model import HParams, MovieRecModel, Vocab, user_history

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
    users' histories, the mean rating). Under a strategy's scope, its variables are
    mirrored."""
    tf.keras.utils.set_random_seed(hp.seed)
    counts = np.bincount(train[F.MOVIE_ID_XF], minlength=vocab.sizes[F.MOVIE_ID_XF])
    log_prob = np.log((counts + 1.0) / (counts.sum() + len(counts)))
    mean = float(np.mean(train[F.RATING_XF]))
    history = user_history(train[F.USER_ID_XF], train[F.MOVIE_ID_XF], train[F.TIMESTAMP_XF],
                           train[F.RATING_XF], vocab.sizes[F.USER_ID_XF], hp.history_len,
                           mean=mean)
    movies = np.flatnonzero(counts)
    candidates = {F.MOVIE_ID_XF: movies.astype(np.int64),
                  **{k: train.movies[k][movies] for k in F.MOVIE_LEVEL_XF}}
    raters = user_history(train[F.MOVIE_ID_XF], train[F.USER_ID_XF], train[F.TIMESTAMP_S_XF],
                          train[F.RATING_XF], vocab.sizes[F.MOVIE_ID_XF],
                          hp.rater_history_len) if hp.rater_history_len else None
    neighbors = None
    if hp.rating_tower == "history" and hp.history_neighbors > 0:
        neighbors = similar_movies(train[F.USER_ID_XF], train[F.MOVIE_ID_XF],
                                   train[F.RATING_XF], vocab.sizes[F.MOVIE_ID_XF],
                                   hp.history_neighbors)
    model = MovieRecModel(vocab, hp, movie_log_prob=log_prob, mean_rating=mean,
                          history=history, raters=raters, candidates=candidates,
                          neighbors=neighbors,
                          rating_range=(float(np.min(train[F.RATING_XF])),
                                        float(np.max(train[F.RATING_XF]))))
    # one step per global batch, however many replicas share it
    steps_per_epoch = -(-len(train) // hp.batch_size)
    model.compile(optimizer=hp.make_optimizer(
        steps_per_epoch * hp.epochs_for(len(train))))
    return model, counts


def with_causal_history(train: Ratings, validation: Ratings | None, hp: HParams):
    """The training (and validation) ratings, each example with its user's latest
    hp.history_len training ratings strictly before its time (trainer/history.py)."""
    if not hp.history_len:
        return train, validation
    store = CausalHistory(train[F.USER_ID_XF], train[F.MOVIE_ID_XF], train[F.TIMESTAMP_XF],
                          train[F.RATING_XF], hp.history_len,
                          mean=float(np.mean(train[F.RATING_XF])))
    return (train.with_history(store),
            validation.with_history(store) if validation is not None else None)


def fit(train: Ratings, vocab: Vocab, hp: HParams, validation: Ratings | None = None,
        callbacks=(), initialize=None):
    """Builds and trains the multitask model on transformed columns, under
    hp.distribution's strategy when one is set. `initialize(model)`, when given, runs on
    the built model before training (warm start)."""
    strategy = distribution.strategy(hp.distribution)
    with distribution.scope(strategy):
        model, counts = build_model(train, vocab, hp)
    train, validation = with_causal_history(train, validation, hp)
    dataset = training_dataset(train, hp)
    if initialize is not None:
        with distribution.scope(strategy):
            model(next(iter(dataset)))  # creates the variables
        initialize(model)  # assigns them (on every replica)
    steps = {}
    if hp.max_steps:
        dataset, steps = dataset.repeat(), {"steps_per_epoch": hp.max_steps}
    validation_data = (training_dataset(validation, hp, shuffle=False)
                       if validation is not None else None)
    if strategy is not None:
        dataset = distribution.shard_by_data(dataset, strategy)
        if validation_data is not None:
            validation_data = distribution.shard_by_data(validation_data, strategy)
    history = model.fit(
        dataset, epochs=1 if hp.max_steps else hp.epochs_for(len(train)),
        verbose=0, **steps,
        validation_data=validation_data,
        callbacks=(early_stopping(hp) if validation is not None else [])
        + [_LogEpochs()] + list(callbacks))
    return model, counts, history.history


def fit_factorization(model, train: Ratings, vocab: Vocab) -> float:
    """Fits the trained model's factorization (trainer/factorization.py, a layer of its
    rating model) on `train`; returns the seconds it took (0 when the model has none).
    Plain numpy, the same on every worker."""
    layer = model.rating_model.factorization
    if layer is None:
        return 0.0
    return layer.fit(train[F.USER_ID_XF], train[F.MOVIE_ID_XF], train[F.TIMESTAMP_XF],
                     train[F.RATING_XF], vocab.sizes[F.USER_ID_XF],
                     vocab.sizes[F.MOVIE_ID_XF], model.mean_rating)


def fit_neighborhood(model, train: Ratings, vocab: Vocab) -> float:
    """Fits the trained model's residual neighbourhood (trainer/neighborhood.py, a layer of
    its rating model) to its errors on `train`; returns the seconds it took (0 when the
    model has none). Plain numpy and one traced function, outside any strategy: every
    worker computes the same (the trained weights are the same on all of them)."""
    layer = model.rating_model.neighborhood
    if layer is None:
        return 0.0
    started = time.time()
    train, _ = with_causal_history(train, None, model.hp)
    separate = model.hp.rating_tower != "shared"  # the rating path alone: no towers

    @tf.function
    def rate(batch):
        q = None if separate else model.query_tower(batch, training=False)
        c = None if separate else model.candidate_tower(batch, training=False)
        return model.rating_model.factor_rating(batch, q, c, training=False)

    predicted = np.concatenate([rate(batch).numpy() for batch in train.dataset(READ_BATCH)])
    layer.fit(train[F.USER_ID_XF], train[F.MOVIE_ID_XF], train[F.TIMESTAMP_S_XF],
              train[F.RATING_XF], train[F.RATING_XF] - predicted, vocab.sizes[F.MOVIE_ID_XF])
    seconds = time.time() - started
    logging.getLogger("movierec.trainer").info("residual neighbourhood: %.1f s", seconds)
    return seconds
