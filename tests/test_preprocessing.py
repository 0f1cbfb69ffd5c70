"""preprocessing_fn on tiny data: what the model and the serving signatures will see."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from trainer import features as F


@pytest.fixture(scope="module")
def tft_output(transform_dir):
    return tft.TFTransformOutput(transform_dir)


@pytest.fixture(scope="module")
def transformed(tft_output, example_files):
    from trainer.data import raw_batches

    layer = tft_output.transform_features_layer()
    batch = next(iter(raw_batches([example_files["train"]], F.RATING_EXAMPLE_FEATURES)))
    return batch, {k: v.numpy() for k, v in layer(batch).items()}


def test_outputs_cover_every_transformed_feature(transformed):
    _, xf = transformed
    assert set(xf) == set(F.QUERY_XF) | set(F.CANDIDATE_XF) | set(F.CONTEXT_XF) | {F.RATING_XF}
    n = len(xf[F.RATING_XF])
    assert xf[F.GENRES_XF].shape == (n, F.GENRES_LEN)
    assert xf[F.TITLE_TOKENS_XF].shape == (n, F.TITLE_TOKENS_LEN)


def test_vocabularies_index_ids_and_reserve_padding(tft_output, transformed, synth_data):
    raw, xf = transformed
    users = tft_output.vocabulary_size_by_name(F.VOCABS[F.USER_ID_XF])
    assert 0 < users <= len(synth_data.users)
    assert xf[F.USER_ID_XF].min() >= 0 and xf[F.USER_ID_XF].max() < users
    # every synthetic movie has 1-3 genres: ids are > 0 up to its count, then 0 padding
    n = len(xf[F.GENRES_XF])
    counts = np.bincount(raw[F.MOVIE_GENRES].indices.numpy()[:, 0], minlength=n)
    assert counts.min() >= 1
    assert np.array_equal((xf[F.GENRES_XF] > 0).sum(axis=1), counts)


def test_labels_and_timestamps(transformed):
    raw, xf = transformed
    np.testing.assert_allclose(xf[F.RATING_XF], raw[F.RATING].numpy().reshape(-1))
    assert abs(float(np.mean(xf[F.TIMESTAMP_Z_XF]))) < 0.2
    assert xf[F.TIMESTAMP_BUCKET_XF].min() >= 0
    assert xf[F.TIMESTAMP_BUCKET_XF].max() < F.DEFAULT_TIMESTAMP_BUCKETS
    # age buckets follow MovieLens' groups; synthetic users are 15-69
    seconds = raw[F.TIMESTAMP].numpy().reshape(-1)
    np.testing.assert_allclose(xf[F.TIMESTAMP_S_XF] - xf[F.TIMESTAMP_S_XF].min(),
                               seconds - seconds.min(), atol=64)
    assert set(np.unique(xf[F.AGE_BUCKET_XF])) <= set(range(1, len(F.AGE_BOUNDARIES) + 1))


def test_title_tokens_drop_the_year(tft_output):
    layer = tft_output.transform_features_layer()
    same = layer(F.as_tft_inputs({F.MOVIE_TITLE: tf.constant(["Night Story (1950)",
                                                              "night story"])}))
    tokens = same[F.TITLE_TOKENS_XF].numpy()
    assert np.array_equal(tokens[0], tokens[1])
    assert (tokens[0] > 0).sum() == 2


def test_serving_inputs_unknown_values_and_the_future(tft_output):
    """A request may carry a subset of features, unseen ids and a timestamp of 'now'."""
    layer = tft_output.transform_features_layer()
    users = tft_output.vocabulary_size_by_name(F.VOCABS[F.USER_ID_XF])
    out = layer(F.as_tft_inputs({
        F.USER_ID: tf.constant(["no-such-user"]),
        F.TIMESTAMP: tf.constant([4_000_000_000], tf.int64),
    }))
    assert set(out) == {F.USER_ID_XF, F.TIMESTAMP_BUCKET_XF, F.TIMESTAMP_Z_XF,
                        F.TIMESTAMP_S_XF, F.TIMESTAMP_XF}
    assert out[F.TIMESTAMP_XF].numpy().reshape(-1).tolist() == [4_000_000_000]  # unclipped
    assert out[F.USER_ID_XF].numpy()[0] == users  # the out-of-vocabulary bucket
    # clamped to the newest training time: finite, in the last buckets
    assert np.isfinite(out[F.TIMESTAMP_Z_XF].numpy()[0])
    assert out[F.TIMESTAMP_Z_XF].numpy()[0] < 3.0
