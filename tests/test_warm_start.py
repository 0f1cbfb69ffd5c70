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
    rec = saved_model.call(model, "recommend", user_id=tf.constant(users))
    rate = saved_model.call(model, "rate", user_id=tf.constant(users), movie_id=tf.constant(movies),
                                    timestamp=tf.zeros([len(users)], tf.int64))
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


class _Holder(tf.keras.layers.Layer):
    """A layer that keeps its table under a name warm start has never heard of."""

    def __init__(self, table, **kwargs):
        super().__init__(**kwargs)
        self.any_name_at_all = table

    def call(self, x):
        return self.any_name_at_all(x)


def _parts(movies, buckets, dense):
    model = tf.Module()
    model.query_tower, model.candidate_tower = _Holder(movies), _Holder(buckets)
    model.rating_model = _Holder(dense)
    model.query_tower(tf.constant([0]))
    model.candidate_tower(tf.constant([0]))
    model.rating_model(tf.zeros([1, 2]))
    return model


def test_tables_are_mapped_by_the_tag_set_where_they_were_made():
    from trainer import features as F
    from trainer.embedding import TaggedEmbedding
    from trainer.warm_start import _variables, transfer

    def movies():  # one padding row, three movies, one OOV bucket
        return TaggedEmbedding(5, 3, tag=F.MOVIE_ID_XF, reserved=1)

    old = _parts(movies(), tf.keras.layers.Embedding(4, 2), tf.keras.layers.Dense(3))
    new = _parts(movies(), tf.keras.layers.Embedding(4, 2), tf.keras.layers.Dense(5))
    old_movies = old.query_tower.any_name_at_all.embeddings.numpy()
    fresh_movies = new.query_tower.any_name_at_all.embeddings.numpy()
    vocabularies = {"old": [b"a", b"b", b"c"], "new": [b"c", b"d", b"a"]}
    asked = []

    def vocabulary(which):
        def lookup(tag):
            asked.append((which, tag))
            return vocabularies[which]
        return lookup

    counts = transfer(new, _variables(old), vocabulary("old"), vocabulary("new"))
    assert set(asked) == {("old", F.MOVIE_ID_XF), ("new", F.MOVIE_ID_XF)}
    # the tagged table: remapped (padding, c, [d is new], a, OOV); the bucket table
    # (untagged, same shape): copied; the dense layer's kernel and bias (new width): fresh
    assert counts == {"remapped": 1, "copied": 1, "fresh": 2}
    got = new.query_tower.any_name_at_all.embeddings.numpy()
    np.testing.assert_array_equal(got[[0, 1, 3, 4]], old_movies[[0, 3, 1, 4]])
    np.testing.assert_array_equal(got[2], fresh_movies[2])
    np.testing.assert_array_equal(new.candidate_tower.any_name_at_all.embeddings.numpy(),
                                  old.candidate_tower.any_name_at_all.embeddings.numpy())


def test_a_models_history_tables_follow_their_movies_across_vocabularies():
    from test_model import _batch, _vocab

    from trainer import features as F
    from trainer.model import MovieRecModel
    from trainer.warm_start import _variables, transfer
    from conftest import SMALL_HPARAMS

    hp = HParams(rater_history_len=2, **SMALL_HPARAMS)
    models = []
    for seed in (1, 2):
        tf.keras.utils.set_random_seed(seed)
        models.append(MovieRecModel(_vocab(), hp))
        models[-1](_batch(n=4))
    old, new = models
    tokens = [b"t%d" % i for i in range(19)]  # 19 tokens and one OOV bucket per table
    movies_old = tokens
    movies_new = tokens[::-1]
    counts = transfer(new, _variables(old),
                      lambda tag: movies_old if tag == F.MOVIE_ID_XF else tokens,
                      lambda tag: movies_new if tag == F.MOVIE_ID_XF else tokens)
    assert counts["fresh"] == 0 and counts["remapped"] > 0 and counts["copied"] > 0

    def table(model, name):
        (layer,) = [m for m in model.query_tower.submodules
                    if isinstance(m, tf.keras.layers.Embedding) and m.name == name]
        return layer.embeddings.numpy()

    # movie t5: old row 1 + 5, new row 1 + 13 (the history tables reserve a padding row)
    for name in ("history_embedding", "rated_embedding", "session_embedding"):
        np.testing.assert_array_equal(table(new, name)[1 + 13], table(old, name)[1 + 5])
        np.testing.assert_array_equal(table(new, name)[0], table(old, name)[0])
    # user ids kept their order: the user table is the old one
    np.testing.assert_array_equal(table(new, f"{F.USER_ID_XF}_embedding"),
                                  table(old, f"{F.USER_ID_XF}_embedding"))


def test_an_export_of_the_layout_before_the_tower_layers_still_warm_starts():
    """Paths as a model exported by the single-class towers holds them (read from one)."""
    from trainer.warm_start import _previous_layout

    before = {
        "query_tower/context/0/mean/embedding/embeddings":
            "query_tower/_history_embedding/embeddings",
        "query_tower/context/0/rated/embedding/embeddings":
            "query_tower/_rated_embedding/embeddings",
        "query_tower/context/0/session/embedding/embeddings":
            "query_tower/_session_embedding/embeddings",
        "query_tower/features/encoders/user_id_xf/embeddings":
            "query_tower/_embeddings/user_id_xf/embeddings",
        "query_tower/projection/layer_with_weights-0/kernel":
            "query_tower/_project/layer_with_weights-0/kernel",
        "rating_model/heads/0/candidate/features/encoders/genres_xf/embedding/embeddings":
            "rating_model/heads/0/candidate/_embeddings/genres_xf/embeddings",
        "rating_model/heads/0/candidate/context/0/mean/embedding/embeddings":
            "rating_model/heads/0/candidate/_rater_embedding/embeddings",
        "rating_model/heads/1/candidate/context/0/rated/embedding/embeddings":
            "rating_model/heads/1/candidate/_rater_rated_embedding/embeddings",
        "rating_model/heads/0/user_bias/embeddings": "rating_model/heads/0/user_bias/embeddings",
        "rating_model/heads/0/head/layer_with_weights-0/bias":
            "rating_model/heads/0/head/layer_with_weights-0/bias",
    }
    assert {new: _previous_layout(new) for new in before} == before
