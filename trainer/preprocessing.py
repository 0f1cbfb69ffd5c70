"""Transform's preprocessing_fn: raw MovieLens features -> model inputs.

The same graph runs in Transform (over the train split), inside the Trainer's input pipeline
and inside every exported serving signature, so training and serving see identical features.
It accepts any subset of the raw features (the catalog has only movie features, a
`recommend` request only the query's): each output depends on the inputs it names.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from trainer import features as F


def _dense(x, default):
    """Scalar feature as a [batch] tensor, whether it came as [batch] or [batch, 1]."""
    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(x, default_value=default)
    return tf.reshape(x, [-1])


def _padded_ids(sparse_strings, vocab_key: str, length: int):
    """Multi-valued strings -> [batch, length] vocabulary ids + 1, 0 = padding."""
    ids = tft.compute_and_apply_vocabulary(
        sparse_strings, num_oov_buckets=F.OOV_BUCKETS, vocab_filename=F.VOCABS[vocab_key])
    dense = tf.sparse.to_dense(ids, default_value=-1) + 1
    dense = tf.pad(dense, [[0, 0], [0, length]])[:, :length]
    return tf.ensure_shape(dense, [None, length])


def _vocab(x, key: str):
    return tft.compute_and_apply_vocabulary(
        x, num_oov_buckets=F.OOV_BUCKETS, vocab_filename=F.VOCABS[key])


def _title_tokens(titles):
    # Lower-case words without punctuation; the trailing "(1995)" is the year feature's job.
    text = tf.strings.lower(titles)
    text = tf.strings.regex_replace(text, r"\(\d{4}\)\s*$", "")
    text = tf.strings.regex_replace(text, r"[^a-z0-9' ]", " ")
    return tf.strings.split(text).to_sparse()


def preprocessing_fn(inputs, custom_config=None):
    """tf.Transform entry point (Transform component and tests)."""
    config = custom_config or {}
    out = {}

    if F.USER_ID in inputs:
        out[F.USER_ID_XF] = _vocab(_dense(inputs[F.USER_ID], ""), F.USER_ID_XF)
    if F.MOVIE_ID in inputs:
        out[F.MOVIE_ID_XF] = _vocab(_dense(inputs[F.MOVIE_ID], ""), F.MOVIE_ID_XF)
    if F.MOVIE_TITLE in inputs:
        out[F.TITLE_TOKENS_XF] = _padded_ids(
            _title_tokens(_dense(inputs[F.MOVIE_TITLE], "")), F.TITLE_TOKENS_XF,
            F.TITLE_TOKENS_LEN)
    if F.MOVIE_GENRES in inputs:
        genres = inputs[F.MOVIE_GENRES]
        if not isinstance(genres, tf.SparseTensor):
            genres = tf.sparse.from_dense(genres)
        out[F.GENRES_XF] = _padded_ids(genres, F.GENRES_XF, F.GENRES_LEN)
    if F.MOVIE_YEAR in inputs:
        year = tf.cast(_dense(inputs[F.MOVIE_YEAR], 0), tf.float32)
        # Unknown years (0) stay in bucket 0; known years share YEAR_BUCKETS quantiles.
        known = tf.where(year > 0, year, tf.fill(tf.shape(year), 1900.0))
        bucket = tft.bucketize(known, F.YEAR_BUCKETS) + 1
        out[F.YEAR_BUCKET_XF] = tf.where(year > 0, bucket, tf.zeros_like(bucket))
    if F.TIMESTAMP in inputs:
        seconds = _dense(inputs[F.TIMESTAMP], 0)
        # Requests from after the training data (the `recommend` default is "now") are
        # clamped to the newest training time, so they land in the last bucket.
        first = tft.min(seconds)
        seconds = tf.clip_by_value(seconds, first, tft.max(seconds))
        ts = tf.cast(seconds, tf.float32)
        buckets = int(config.get(F.TIMESTAMP_BUCKETS_CONFIG, F.DEFAULT_TIMESTAMP_BUCKETS))
        out[F.TIMESTAMP_BUCKET_XF] = tft.bucketize(ts, buckets)
        out[F.TIMESTAMP_Z_XF] = tft.scale_to_z_score(ts)
        # exact in int64, then float32: about a minute's resolution over 20 years
        out[F.TIMESTAMP_S_XF] = tf.cast(seconds - first, tf.float32)
        # the time itself (histories compare it with the times of earlier ratings)
        out[F.TIMESTAMP_XF] = tf.cast(_dense(inputs[F.TIMESTAMP], 0), tf.int64)
    if F.USER_AGE in inputs:
        age = _dense(inputs[F.USER_AGE], 0)
        out[F.AGE_BUCKET_XF] = tf.cast(tf.raw_ops.Bucketize(
            input=tf.cast(age, tf.float32), boundaries=[float(b) for b in F.AGE_BOUNDARIES]), tf.int64)
    if F.USER_GENDER in inputs:
        out[F.GENDER_XF] = _vocab(_dense(inputs[F.USER_GENDER], ""), F.GENDER_XF)
    if F.USER_OCCUPATION in inputs:
        out[F.OCCUPATION_XF] = _vocab(_dense(inputs[F.USER_OCCUPATION], ""), F.OCCUPATION_XF)
    if F.USER_ZIP in inputs:
        zips = tf.strings.upper(tf.strings.strip(_dense(inputs[F.USER_ZIP], "")))
        out[F.ZIP_PREFIX_XF] = _vocab(
            tf.strings.substr(zips, 0, F.ZIP_PREFIX_LEN), F.ZIP_PREFIX_XF)
    if F.RATING in inputs:
        out[F.RATING_XF] = tf.cast(_dense(inputs[F.RATING], 0.0), tf.float32)
    return out
