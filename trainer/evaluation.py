"""Retrieval metrics of an exported model, computed through its `recommend_at` signature.

top_K_accuracy is TFRS's FactorizedTopK metric (the seeds' number): the share of held-out
ratings whose movie is among the model's top K of the *full catalog* for that user at that
time. It is measured on the exported SavedModel, i.e. exactly what is served.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from trainer import features as F

TOP_KS = (1, 5, 10, 50, 100)


def load_serving_model(path: str):
    return tf.saved_model.load(path)


def hit_ranks(model, user_ids, timestamps, movie_ids, k: int = max(TOP_KS),
              batch_size: int = 1024) -> np.ndarray:
    """0-based rank of each true movie in the model's top k, or k when it is not there."""
    recommend = model.signatures["recommend_at"]
    ranks = []
    for start in range(0, len(user_ids), batch_size):
        stop = start + batch_size
        out = recommend(
            user_id=tf.constant(user_ids[start:stop]),
            timestamp=tf.constant(timestamps[start:stop], tf.int64),
            k=tf.fill([len(user_ids[start:stop])], tf.constant(k, tf.int64)))
        top = out["movie_ids"].numpy()
        truth = np.asarray(movie_ids[start:stop], dtype=object).astype(bytes)[:, None]
        hits = top == truth
        ranks.append(np.where(hits.any(axis=1), hits.argmax(axis=1), k))
    return np.concatenate(ranks) if ranks else np.zeros([0], np.int64)


def top_k_accuracy(ranks: np.ndarray, ks=TOP_KS) -> dict:
    return {f"top_{k}_accuracy": float(np.mean(ranks < k)) if len(ranks) else 0.0
            for k in ks}


def read_eval_queries(files, max_examples: int = 0, seed: int = 0):
    """(user_ids, timestamps, movie_ids) of the raw eval examples; a seeded sample of at
    most max_examples of them when max_examples > 0."""
    from trainer.run import raw_batches, tfrecord_files  # local: keeps imports light

    features = (F.QUERY_FEATURES[0], F.QUERY_FEATURES[1], F.MOVIE_FEATURES[0])
    users, stamps, movies = [], [], []
    for batch in raw_batches(tfrecord_files(files), features):
        users.append(batch[F.USER_ID].numpy().reshape(-1))
        stamps.append(batch[F.TIMESTAMP].numpy().reshape(-1))
        movies.append(batch[F.MOVIE_ID].numpy().reshape(-1))
    users, stamps, movies = (np.concatenate(x) for x in (users, stamps, movies))
    if 0 < max_examples < len(users):
        keep = np.sort(np.random.default_rng(seed).choice(len(users), max_examples,
                                                          replace=False))
        users, stamps, movies = users[keep], stamps[keep], movies[keep]
    return users, stamps, movies


def evaluate_retrieval(model, files, max_examples: int = 0) -> dict:
    users, stamps, movies = read_eval_queries(files, max_examples)
    metrics = top_k_accuracy(hit_ranks(model, users, stamps, movies))
    metrics["retrieval_examples"] = int(len(users))
    return metrics
