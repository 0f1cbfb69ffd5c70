"""Metrics of an exported model, computed through its serving signatures on raw examples.

- top_K_accuracy is TFRS's FactorizedTopK metric (the seeds' number): the share of held-out
  ratings whose movie is among the model's top K of the *full catalog* for that user at that
  time (through `recommend_at`);
- rmse / mae of the predicted rating (through `serving_default`).

They are measured on the exported SavedModel, i.e. exactly what is served, by the pipeline's
RetrievalEvaluator and by `movierec evaluate` on ratings from outside the pipeline.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from trainer import features as F

TOP_KS = (1, 5, 10, 50, 100)
_QUERY_SPEC = F.raw_feature_spec((F.QUERY_FEATURES[0], F.QUERY_FEATURES[1],
                                  F.MOVIE_FEATURES[0], F.LABEL_FEATURE))


def load_serving_model(path: str):
    return tf.saved_model.load(path)


def hit_ranks(model, user_ids, timestamps, movie_ids, k: int = max(TOP_KS)) -> np.ndarray:
    """0-based rank of each true movie in the model's top k, or k when it is not there."""
    out = model.signatures["recommend_at"](
        user_id=tf.constant(user_ids), timestamp=tf.constant(timestamps, tf.int64),
        k=tf.fill([len(user_ids)], tf.constant(k, tf.int64)))
    hits = out["movie_ids"].numpy() == np.asarray(movie_ids, dtype=object)[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1), k)


def serialized_batches(files, batch_size: int = 2048, max_examples: int = 0, seed: int = 0):
    """Batches of serialized examples from gzipped TFRecords; a seeded sample of about
    max_examples of them when max_examples > 0."""
    from trainer.run import tfrecord_files  # local: avoids a cycle

    ds = tf.data.TFRecordDataset(tfrecord_files(files), compression_type="GZIP")
    if max_examples > 0:
        total = int(ds.reduce(np.int64(0), lambda n, _: n + 1))
        if total > max_examples:
            keep = max_examples / total

            def sampled(i, _):
                draw = tf.random.stateless_uniform([], seed=tf.stack([np.int64(seed), i]))
                return draw < keep

            ds = ds.enumerate().filter(sampled).map(lambda _, x: x)
    return ds.batch(batch_size)


def evaluate(model, batches, rating: bool = True, retrieval: bool = True) -> dict:
    """Metrics of `model` over batches of serialized rating examples."""
    ranks, errors = [], []
    for batch in batches:
        parsed = tf.io.parse_example(batch, _QUERY_SPEC)
        cols = {k: v.numpy().reshape(-1) for k, v in parsed.items()}
        if retrieval:
            ranks.append(hit_ranks(model, cols[F.USER_ID], cols[F.TIMESTAMP],
                                   cols[F.MOVIE_ID]))
        if rating:
            predicted = model.signatures["serving_default"](examples=batch)["rating"]
            errors.append(predicted.numpy() - cols[F.RATING])
    metrics = {}
    if retrieval:
        ranks = np.concatenate(ranks) if ranks else np.zeros([0])
        for k in TOP_KS:
            metrics[f"top_{k}_accuracy"] = float(np.mean(ranks < k)) if len(ranks) else 0.0
        metrics["retrieval_examples"] = int(len(ranks))
    if rating:
        errors = np.concatenate(errors) if errors else np.zeros([0])
        metrics["rmse"] = float(np.sqrt(np.mean(errors ** 2))) if len(errors) else 0.0
        metrics["mae"] = float(np.mean(np.abs(errors))) if len(errors) else 0.0
        metrics["rating_examples"] = int(len(errors))
    return metrics
