"""The towers' small layers, each alone, checked against numpy: the poolings
(trainer/pooling.py), the stored history (trainer/history.py), the tagged embeddings
(trainer/embedding.py) and the blocks the towers compose (trainer/towers.py)."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import SMALL_HPARAMS as SMALL
from test_model import _batch, _vocab

from trainer import features as F
from trainer import history as H
from trainer.embedding import TaggedEmbedding, table_tags
from trainer.model import HParams, MovieRecModel
from trainer.pooling import MeanPooling, RatingWeightedPooling, SessionPooling
from trainer.towers import candidate_tower, query_tower

TABLE = np.random.default_rng(3).normal(size=(10, 4)).astype(np.float32)
IDS = np.array([[1, 2, 3, 0], [4, 4, 9, 5], [0, 0, 0, 0], [7, 8, 0, 0]], dtype=np.int32)
KEEP = np.array([[1, 1, 1, 0], [1, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
RATINGS = np.array([[1.0, -0.5, 2.0, 0.0], [0.5, 1.0, -1.0, 0.25], [0.0] * 4, [3.0, 1.0, 0, 0]],
                   dtype=np.float32)


def _table():
    return tf.keras.layers.Embedding(
        TABLE.shape[0], TABLE.shape[1],
        embeddings_initializer=tf.keras.initializers.Constant(TABLE))


def test_mean_pooling_is_the_mean_over_kept_positions():
    pooled = MeanPooling(_table())(tf.constant(IDS), keep=tf.constant(KEEP)).numpy()
    assert pooled.shape == (4, 4)
    for row in range(2):
        np.testing.assert_allclose(pooled[row], TABLE[IDS[row][KEEP[row]]].mean(axis=0),
                                   rtol=1e-6)
    # nothing kept: zeros, even where the ids name real rows (row 3)
    np.testing.assert_array_equal(pooled[2:], 0.0)


def test_rating_weighted_pooling_is_svdpp_normalised():
    pooled = RatingWeightedPooling(_table())(
        tf.constant(IDS), ratings=tf.constant(RATINGS), keep=tf.constant(KEEP)).numpy()
    for row in range(2):
        kept = KEEP[row]
        expected = (RATINGS[row][kept, None] * TABLE[IDS[row][kept]]).sum(axis=0) \
            / np.sqrt(kept.sum())
        np.testing.assert_allclose(pooled[row], expected, rtol=1e-5)
    np.testing.assert_array_equal(pooled[2:], 0.0)


def test_session_pooling_weights_by_closeness_in_time():
    times = np.array([[90.0, 50.0, 1000.0, 0.0], [0.0, 10.0, 95.0, 99.0], [0.0] * 4,
                      [100.0, 100.0, 0, 0]], dtype=np.float32)
    now = np.array([100.0, 100.0, 100.0, 100.0], dtype=np.float32)
    tau = 30.0
    pooled = SessionPooling(_table(), tau)(
        tf.constant(IDS), times=tf.constant(times), now=tf.constant(now),
        keep=tf.constant(KEEP)).numpy()
    for row in range(2):
        w = np.exp(-np.abs(times[row] - now[row]) / tau) * KEEP[row]
        expected = (w[:, None] * TABLE[IDS[row]]).sum(axis=0) / (w.sum() + 1e-3)
        np.testing.assert_allclose(pooled[row], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pooled[2:], 0.0)
    with pytest.raises(ValueError, match="tau"):
        SessionPooling(_table(), 0.0)


def test_session_pooling_follows_the_nearer_rating():
    # two movies with orthogonal embeddings, rated 10 s and 1000 s before the query
    table = tf.keras.layers.Embedding(
        3, 2, embeddings_initializer=tf.keras.initializers.Constant([[0, 0], [1, 0], [0, 1]]))
    pool = SessionPooling(table, tau=100.0)
    ids, keep = tf.constant([[1, 2]]), tf.constant([[True, True]])

    def pooled(first, second):
        return pool(ids, times=tf.constant([[first, second]]), now=tf.constant([2000.0]),
                    keep=keep).numpy()[0]

    near_first = pooled(1990.0, 1000.0)
    assert near_first[0] > 0.9 and near_first[1] < 1e-3
    near_second = pooled(1000.0, 1990.0)
    np.testing.assert_allclose(near_second, near_first[::-1], rtol=1e-6)
    # an unordered time (a history after the query) counts by its distance alike
    np.testing.assert_allclose(pooled(2010.0, 1000.0), near_first, rtol=1e-6)


def test_stored_history_reads_each_keys_rows():
    movies, times, centred = H.user_history(
        np.array([0, 0, 2]), np.array([5, 6, 1]), np.array([1.0, 3.0, 2.0]),
        np.array([5.0, 4.0, 3.0]), num_users=3, length=2)
    stored = H.StoredHistory(movies, centred, times)
    assert stored.length == 2 and not stored.trainable_weights
    out = stored(tf.constant([2, 0, 1]))
    assert set(out) == {H.IDS, H.RATINGS, H.TIMES}
    np.testing.assert_array_equal(out[H.IDS], movies[[2, 0, 1]])
    np.testing.assert_array_equal(out[H.RATINGS], centred[[2, 0, 1]])
    np.testing.assert_array_equal(out[H.TIMES], times[[2, 0, 1]])
    assert set(stored(tf.constant([0]), fields=(H.IDS,))) == {H.IDS}
    assert H.TIMES not in H.StoredHistory(movies, centred)(tf.constant([0]))


def test_history_block_pools_the_inputs_history_through_its_layers():
    hp = HParams(history_len=3, recency_taus=(5.0,), **SMALL)
    vocab = _vocab()
    tables = H.user_history(np.array([3, 3, 3]), np.array([5, 9, 2]),
                            np.array([10, 20, 30]), np.array([1.0, 5.0, 3.0]),
                            vocab.sizes[F.USER_ID_XF], hp.history_len)
    tower = query_tower(vocab, hp)
    batch = {k: v[:1] for k, v in _batch(n=1).items()}
    batch[F.USER_ID_XF] = tf.constant([3])
    batch[F.MOVIE_ID_XF] = tf.constant([9])  # hidden from its own history
    batch[F.TIMESTAMP_XF] = tf.constant([25], tf.int64)
    batch[F.HISTORY_IDS_XF] = tf.constant(tables[0][[3]])
    batch[F.HISTORY_TIMES_XF] = tf.constant(tables[1][[3]])
    batch[F.HISTORY_RATINGS_XF] = tf.constant(tables[2][[3]])
    tower(batch)
    block = tower.context[0]
    parts = block(batch)
    assert len(parts) == 5  # mean, rating-weighted, recency, session, statistics
    ids = tf.constant(tables[0][[3]])
    keep = tf.constant(tables[0][[3]] != 0) & tf.not_equal(ids, 10)
    np.testing.assert_allclose(parts[0], block.mean(ids, keep=keep), rtol=1e-6)
    np.testing.assert_allclose(
        parts[1], block.rated(ids, ratings=tf.constant(tables[2][[3]]), keep=keep), rtol=1e-6)
    np.testing.assert_allclose(parts[2], block.recent[0](ids, keep=keep), rtol=1e-6)
    np.testing.assert_allclose(
        parts[3], block.session(ids, times=tf.constant(tables[1][[3]]),
                                now=tf.constant([25], tf.int64), keep=keep), rtol=1e-6)
    # two movies kept (the third is the example's own): log(1 + 2), centred sum / (2 + 5)
    centred = tables[2][3][tables[0][3] != 10].sum()
    np.testing.assert_allclose(parts[4], [[np.log(3.0), centred / 7.0]], rtol=1e-6)
    no_time = {k: v for k, v in batch.items() if k != F.TIMESTAMP_XF}
    assert len(block(no_time)) == 4  # no time, no session
    empty = {k: v for k, v in batch.items() if k not in F.HISTORY_XF}
    np.testing.assert_allclose(block(empty)[-1], [[0.0, 0.0]])  # no history: empty
    off = query_tower(vocab, HParams(history_len=3, history_ratings=False, session_tau=0.0,
                                     recency_taus=(), **SMALL))
    off(batch)
    assert len(off.context[0](batch)) == 2


@pytest.mark.parametrize("head", ["history", "separate"])
def test_every_vocabulary_table_is_tagged_where_it_is_made(head):
    hp = HParams(rater_history_len=2, rating_tower=head, **SMALL)
    model = MovieRecModel(_vocab(), hp)
    model(_batch(n=4))
    tags = {}
    for layer in model.submodules:
        if isinstance(layer, tf.keras.layers.Embedding):
            tags.setdefault(layer.name, set()).add(getattr(layer, "tag", None))
    assert tags["history_embedding"] == tags["rated_embedding"] == tags["recent_0_embedding"] \
        == tags["session_embedding"] == tags["movie_bias"] == {F.MOVIE_ID_XF}
    if head == "history":  # trainer/asymmetric.py's tables
        assert tags["movie_factor"] == tags["history_rated_factor"] \
            == tags["history_seen_factor"] == {F.MOVIE_ID_XF}
        assert tags["user_factor"] == {F.USER_ID_XF}
        return
    assert tags["rater_embedding"] == tags["user_bias"] == {F.USER_ID_XF}
    for key in F.VOCABS:
        assert tags[f"{key}_embedding"] == {key}
    for key in (F.TIMESTAMP_BUCKET_XF, F.YEAR_BUCKET_XF, F.AGE_BUCKET_XF):
        assert tags[f"{key}_embedding"] == {None}  # buckets: the same rows every run
    by_variable = table_tags(model)
    reserved = {layer.name: by_variable[layer.embeddings.ref()][1]
                for layer in model.submodules if isinstance(layer, TaggedEmbedding)}
    assert reserved["history_embedding"] == reserved["rater_embedding"] == 1
    assert reserved[f"{F.GENRES_XF}_embedding"] == 1  # 0-padded ids
    assert reserved[f"{F.USER_ID_XF}_embedding"] == reserved["movie_bias"] == 0
    with pytest.raises(ValueError, match="unknown embedding tag"):
        TaggedEmbedding(3, 2, tag="nope")


def test_candidate_tower_without_raters_has_no_context():
    hp = HParams(rater_history_len=2, **SMALL)
    assert not candidate_tower(_vocab(), hp).context
    assert not query_tower(_vocab(), HParams(history_len=0, **SMALL)).context
