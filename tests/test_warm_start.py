"""Warm start: a model initialized from an earlier export serves what that export served
before any training, and embedding rows follow their tokens when vocabularies change."""

import numpy as np
import tensorflow as tf
from conftest import SMALL_HPARAMS

from trainer import saved_model
from trainer.model import HParams
from trainer.run import train_and_export
from trainer.warm_start import row_map


def _answers(model, users, movies):
    rec = model.signatures["recommend"](user_id=tf.constant(users))
    rate = model.signatures["rate"](user_id=tf.constant(users), movie_id=tf.constant(movies))
    return rec["movie_ids"].numpy(), rate["rating"].numpy()


def test_untrained_warm_start_reproduces_the_base_model(trained_model, example_files,
                                                        transform_dir, tmp_path):
    base_dir, _ = trained_model
    summary = train_and_export(
        [example_files["train"]], [example_files["catalog"]], transform_dir,
        str(tmp_path / "warm"), HParams(**{**SMALL_HPARAMS, "epochs": 0}),
        base_model=str(base_dir))
    counts = summary["warm_start"]
    assert counts["fresh"] == 0 and counts["copied"] > 0 and counts["remapped"] > 0
    users, movies = ["1", "2", "3", "7"], ["1", "5", "9", "12"]
    base_rec, base_rate = _answers(saved_model.load(str(base_dir)), users, movies)
    warm_rec, warm_rate = _answers(saved_model.load(str(tmp_path / "warm")), users, movies)
    np.testing.assert_allclose(warm_rate, base_rate, rtol=1e-5, atol=1e-5)
    assert (warm_rec == base_rec).all()


def test_cold_model_differs_from_the_base_model(trained_model, example_files, transform_dir,
                                                tmp_path):
    """The check above can fail: without warm start, an untrained model answers otherwise."""
    base_dir, _ = trained_model
    train_and_export([example_files["train"]], [example_files["catalog"]], transform_dir,
                     str(tmp_path / "cold"), HParams(**{**SMALL_HPARAMS, "epochs": 0}))
    users, movies = ["1", "2", "3", "7"], ["1", "5", "9", "12"]
    _, base_rate = _answers(saved_model.load(str(base_dir)), users, movies)
    _, cold_rate = _answers(saved_model.load(str(tmp_path / "cold")), users, movies)
    assert np.max(np.abs(cold_rate - base_rate)) > 1e-3


def test_rows_follow_their_tokens_across_vocabularies():
    old = [b"a", b"b", b"c"]
    new = [b"c", b"d", b"a"]  # new frequency order, one new token, one gone
    # one padding row, three tokens, one OOV bucket
    mapping = row_map(old, new, shift=1, rows=5)
    assert mapping.tolist() == [0, 3, -1, 1, 4]
    assert row_map(old, new, shift=0, rows=4).tolist() == [2, -1, 0, 3]
