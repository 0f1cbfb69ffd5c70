"""Metrics of an exported model, computed through its serving signatures on raw examples.

Rating (through `serving_default`): rmse, mae.

Retrieval, over the *full catalog*, from the `score_catalog` signature (the same towers and
candidate embeddings `recommend` ranks with):
- per held-out rating (u, m, t), the rank r of m among all movies for u at time t:
  top_K_accuracy = share with r < K (TFRS's FactorizedTopK metric, the seeds' number),
  mrr = mean of 1 / (r + 1);
- per user u with held-out movies E(u), ranking once at u's latest held-out time:
  recall_at_K = |topK(u) ∩ E(u)| / |E(u)|, ndcg_at_K = DCG@K / ideal DCG@K with binary
  relevance, both averaged over users;
- every retrieval metric also in the "filtered" protocol (prefix `filtered_`): movies the
  user rated in training are removed from the ranking before it is cut (given the training
  ratings).
They are measured on the exported SavedModel, i.e. exactly what is served, by the pipeline's
RetrievalEvaluator and by `movierec evaluate` on ratings from outside the pipeline.
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf

from trainer import features as F
from trainer import metrics as M
from trainer import replay
from trainer import saved_model
from trainer import signatures as S
from trainer.data import tfrecord_files

TOP_KS = M.TOP_KS
USER_KS = (10, 100)
_SPEC = F.raw_feature_spec((F.QUERY_FEATURES[0], F.QUERY_FEATURES[1],
                            F.MOVIE_FEATURES[0], F.LABEL_FEATURE))


def serialized_batches(files, batch_size: int = 2048, max_examples: int = 0, seed: int = 0):
    """Batches of serialized examples from gzipped TFRecords; a seeded sample of about
    max_examples of them when max_examples > 0."""
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


def rated_movies(batches) -> dict:
    """user id -> set of movie ids, from batches of serialized rating examples."""
    rated = collections.defaultdict(set)
    for batch in batches:
        parsed = tf.io.parse_example(batch, _SPEC)
        for u, m in zip(parsed[F.USER_ID].numpy().reshape(-1),
                        parsed[F.MOVIE_ID].numpy().reshape(-1)):
            rated[u].add(m)
    return rated


class _Ranker:
    """Full-catalog scores for queries, optionally without the user's training movies."""

    def __init__(self, model, train_rated: dict | None):
        self._model = model
        ids = model.movie_ids.numpy()
        self._column = {m: i for i, m in enumerate(ids)}
        self._train = {u: np.array([self._column[m] for m in ms if m in self._column])
                       for u, ms in (train_rated or {}).items()}
        self.filtered = train_rated is not None

    def scores(self, users, timestamps):
        return saved_model.call(self._model, S.SCORE_CATALOG, **{
            S.USER_ID: tf.constant(users),
            S.TIMESTAMP: tf.constant(timestamps, tf.int64)})[S.SCORES].numpy()

    def columns(self, movies):
        return np.array([self._column.get(m, -1) for m in movies])

    def remove_train(self, scores, users, keep_columns=None):
        rows = [np.full(len(self._train.get(u, ())), i) for i, u in enumerate(users)]
        seen = [self._train.get(u, np.zeros([0], np.int64)) for u in users]
        return M.without_seen(scores, np.concatenate(rows) if rows else [],
                              np.concatenate(seen) if seen else [], keep_columns)


def _per_user_metrics(ranker, held_out: dict, prefix: str, filtered: bool) -> dict:
    users = sorted(held_out)
    recall = {k: [] for k in USER_KS}
    ndcg = {k: [] for k in USER_KS}
    discounts = 1.0 / np.log2(np.arange(2, max(USER_KS) + 2))
    for start in range(0, len(users), 256):
        chunk = users[start:start + 256]
        stamps = [max(t for _, t in held_out[u]) for u in chunk]
        scores = ranker.scores(np.array(chunk, dtype=object), np.array(stamps))
        if filtered:
            scores = ranker.remove_train(scores, chunk)
        top = np.argsort(-scores, axis=1)[:, :max(USER_KS)]
        for row, u in zip(top, chunk):
            relevant = set(ranker.columns([m for m, _ in held_out[u]])) - {-1}
            if not relevant:
                continue
            hits = np.array([c in relevant for c in row], dtype=float)
            for k in USER_KS:
                recall[k].append(hits[:k].sum() / len(relevant))
                ideal = discounts[:min(len(relevant), k)].sum()
                found = hits[:k]  # a catalog may hold fewer than k movies
                ndcg[k].append((found * discounts[:len(found)]).sum() / ideal)
    out = {}
    for k in USER_KS:
        out[f"{prefix}recall_at_{k}"] = float(np.mean(recall[k])) if recall[k] else 0.0
        out[f"{prefix}ndcg_at_{k}"] = float(np.mean(ndcg[k])) if ndcg[k] else 0.0
    return out


def evaluate(model, batches, rating: bool = True, retrieval: bool = True,
             train_rated: dict | None = None) -> dict:
    """Metrics of `model` over batches of serialized held-out rating examples, by the
    held-out protocol (`protocol` M.HELD_OUT). train_rated (user -> movies rated in
    training) adds the filtered metrics."""
    ranker = _Ranker(model, train_rated) if retrieval else None
    ranks, filtered_ranks, errors = [], [], []
    held_out = collections.defaultdict(list)
    for batch in batches:
        parsed = tf.io.parse_example(batch, _SPEC)
        cols = {k: v.numpy().reshape(-1) for k, v in parsed.items()}
        if retrieval:
            scores = ranker.scores(cols[F.USER_ID], cols[F.TIMESTAMP])
            columns = ranker.columns(cols[F.MOVIE_ID])
            ranks.append(M.ranks(scores, columns))
            if ranker.filtered:
                filtered_ranks.append(M.ranks(
                    ranker.remove_train(scores, cols[F.USER_ID], columns), columns))
            for u, m, t in zip(cols[F.USER_ID], cols[F.MOVIE_ID], cols[F.TIMESTAMP]):
                held_out[u].append((m, t))
        if rating:
            predicted = model.signatures[S.SERVING_DEFAULT](**{S.EXAMPLES: batch})[S.RATING]
            errors.append(predicted.numpy() - cols[F.RATING])
    metrics = {"protocol": M.HELD_OUT, **(M.rating_metrics(errors) if rating else {})}
    if retrieval and ranks:
        metrics.update(M.top_k_metrics(ranks, ""))
        metrics.update(_per_user_metrics(ranker, held_out, "", filtered=False))
        if ranker.filtered:
            metrics.update(M.top_k_metrics(filtered_ranks, M.FILTERED))
            metrics.update(_per_user_metrics(ranker, held_out, "filtered_", filtered=True))
        metrics["retrieval_examples"] = int(sum(len(r) for r in ranks))
    return metrics


# --- the replay protocol (trainer/replay.py) through the signatures -------------------------
def example_ratings(batches, keep_examples: bool = False):
    """(replay.Ratings of batches of serialized rating examples, the serialized examples
    in the same order, or None unless keep_examples)."""
    columns = {k: [] for k in (F.USER_ID, F.MOVIE_ID, F.RATING, F.TIMESTAMP)}
    examples = [] if keep_examples else None
    for batch in batches:
        parsed = tf.io.parse_example(batch, _SPEC)
        for key in columns:
            columns[key].append(parsed[key].numpy().reshape(-1))
        if keep_examples:
            examples.extend(np.asarray(batch).reshape(-1).tolist())
    joined = {k: np.concatenate(v) if v else np.zeros([0]) for k, v in columns.items()}
    return replay.Ratings.of(joined[F.USER_ID].astype(bytes), joined[F.MOVIE_ID].astype(bytes),
                             joined[F.RATING], joined[F.TIMESTAMP]), examples


def history_inputs(batch: replay.Requests, limit: int = S.MAX_HISTORY) -> dict:
    """The signatures' history inputs of replay requests: each request's history (its
    user's ratings before its time), the newest `limit`, newest first, [batch, L] padded
    with "" / 0."""
    lengths = np.minimum(batch.history_length, limit)
    width = int(lengths.max()) if len(lengths) else 0
    ids = np.full((len(batch), width), "", dtype=object)
    ratings = np.zeros((len(batch), width), dtype=np.float32)
    stamps = np.zeros((len(batch), width), dtype=np.int64)
    known = batch.known
    for i in range(len(batch)):
        end = int(batch.end[i])
        at = np.arange(end - 1, end - 1 - lengths[i], -1)
        ids[i, :lengths[i]] = [m.decode() if isinstance(m, bytes) else str(m)
                               for m in known.movie[at]]
        ratings[i, :lengths[i]] = known.rating[at]
        stamps[i, :lengths[i]] = known.timestamp[at]
    return {S.HISTORY_MOVIE_IDS: ids, S.HISTORY_RATINGS: ratings, S.HISTORY_TIMESTAMPS: stamps}


_DEMOGRAPHICS = F.raw_feature_spec(F.USER_SIDE_FEATURES)


def demographic_inputs(examples) -> dict:
    """The signatures' demographic inputs, from serialized rating examples."""
    parsed = tf.io.parse_example(tf.constant(examples), _DEMOGRAPHICS)
    return {k: v.numpy().reshape(-1) for k, v in parsed.items()}


def with_history(example: bytes, history: dict, row: int) -> bytes:
    """A serialized rating example with request row `row` of `history` (history_inputs)
    as its F.HISTORY_FEATURES."""
    parsed = tf.train.Example.FromString(example)
    feature = parsed.features.feature
    ids = [m for m in history[S.HISTORY_MOVIE_IDS][row] if m != ""]
    feature[S.HISTORY_MOVIE_IDS].bytes_list.value[:] = [str(m).encode() for m in ids]
    feature[S.HISTORY_RATINGS].float_list.value[:] = history[S.HISTORY_RATINGS][row][:len(ids)]
    feature[S.HISTORY_TIMESTAMPS].int64_list.value[:] = \
        history[S.HISTORY_TIMESTAMPS][row][:len(ids)]
    return parsed.SerializeToString()


def replay_scorer(model, examples_of=None, rating: bool = True) -> replay.Scorer:
    """A replay.Scorer of an exported model: the ranking from `score_catalog` (the user,
    the request's time, its history, and the user's demographics from `examples_of(batch)`,
    the batch's serialized rating examples; the model's columns are the requests'
    catalog), and with `rating` the rating from `serving_default` on those examples given
    the same history (examples_of None: no demographics, no rating)."""
    rate = model.signatures[S.SERVING_DEFAULT]

    def scorer(batch: replay.Requests):
        history = history_inputs(batch)
        examples = examples_of(batch) if examples_of is not None else None
        people = demographic_inputs(examples) if examples else {}  # none: left out
        scores = saved_model.call(model, S.SCORE_CATALOG, **{
            S.USER_ID: tf.constant(batch.user),
            S.TIMESTAMP: tf.constant(batch.timestamp, tf.int64), **history,
            **people})[S.SCORES]
        predicted = None
        if examples is not None and rating:
            given = [with_history(e, history, i) for i, e in enumerate(examples)]
            predicted = rate(**{S.EXAMPLES: tf.constant(given)})[S.RATING]
            predicted = predicted.numpy().reshape(-1)
        return scores.numpy(), predicted

    return scorer


def evaluate_replay(model, train_batches, held_out_batches, rating: bool = True,
                    max_requests: int = 0, seed: int = 0) -> dict:
    """The replay protocol's metrics (trainer/replay.py) of `model`: the held-out ratings
    (batches of serialized examples) replayed in time order, each knowing its user's
    earlier ratings in the train batches and in the replay, and its user's demographics
    (from its example); over the model's catalog. rating: also RMSE / MAE through
    serving_default on the examples given the same history. max_requests > 0: a seeded
    sample of that many requests."""
    train, _ = example_ratings(train_batches)
    held_out, examples = example_ratings(held_out_batches, keep_examples=True)
    catalog = np.asarray(model.movie_ids.numpy()).reshape(-1).astype(bytes)
    requests = replay.sample(replay.requests(train, held_out, catalog), max_requests, seed)
    return replay.evaluate(requests, replay_scorer(
        model, lambda batch: [examples[i] for i in batch.source], rating=rating))
