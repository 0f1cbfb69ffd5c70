"""The exported SavedModel: a plain tf.Module built from the trained towers, the Transform
layer and a brute-force index over the full catalog.

Signatures (all take *raw* values; Transform runs inside):
  serving_default  examples: serialized tf.Example [batch]        -> rating [batch]
  recommend        user_id: string [batch]                        -> top-10 at "now"
  recommend_at     user_id [batch], timestamp int64 [batch] (<= 0 means now),
                   k int64 [batch] (<= 0 means 10; the batch's largest k is used, at most MAX_K)
                   -> movie_ids, movie_titles, scores [batch, k], known_user [batch]
  rate             user_id [batch], movie_id [batch]              -> rating [batch]
  score_catalog    user_id [batch], timestamp [batch]  -> scores [batch, catalog] (evaluation;
                   columns in the order of the module's `movie_ids`)

`rate` and `serving_default` rate through the rating model, its residual neighbourhood
included (the module's `residual_neighborhood`, the rating model's own layer).
Users that were not in the training data get the most popular movies (scores are their
training popularity share) and known_user=False; the signature never fails on them.
The training object (with its loss tasks) is not saved, only this module: TFRS's
FactorizedTopK metric layer of the training model does not need to be restored to serve.
Signature, input and output names are trainer/signatures.py's.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer import features as F
from trainer import signatures as S
from trainer.signatures import DEFAULT_K, MAX_K

INDEXES = ("brute_force", "scann")


def make_index(kind: str, embeddings, identifiers, k: int):
    """The retrieval index over candidate embeddings: exact brute force (default), or
    ScaNN (approximate, for large catalogs; tuned for recall@10 >= 0.95)."""
    if kind == "brute_force":
        index = tfrs.layers.factorized_top_k.BruteForce(k=k)
    elif kind == "scann":
        import scann  # noqa: F401 - registers ScaNN's TensorFlow ops

        n = int(embeddings.shape[0])
        leaves = max(1, min(2000, int(np.sqrt(n))))
        # a tenth of the partitions, but always enough of them to hold k movies
        search = min(leaves, max(leaves // 10, int(np.ceil(2 * k * leaves / n))))
        index = tfrs.layers.factorized_top_k.ScaNN(
            k=k, num_leaves=leaves, num_leaves_to_search=search,
            num_reordering_candidates=max(k, 200))
    else:
        raise ValueError(f"unknown index {kind!r} ({', '.join(INDEXES)})")
    index.index(tf.constant(embeddings), tf.constant(identifiers, tf.int64))
    return index


def _string_matrix(rows, width):
    out = np.full((len(rows), max(width, 1)), "", dtype=object)
    for i, row in enumerate(rows):
        for j, value in enumerate(row[:width]):
            out[i, j] = value
    return out


class MovieRecExport(tf.Module):
    def __init__(self, model, tft_layer, catalog: dict, users: dict, popularity: np.ndarray,
                 index: str = "brute_force"):
        """catalog: raw movie columns (F.MOVIE_FEATURES; genres a list per movie);
        users: raw user columns (F.USER_ID + F.USER_SIDE_FEATURES);
        popularity: training rating count per catalog row."""
        super().__init__()
        self.tft_layer = tft_layer
        self.query_tower = model.query_tower
        self.candidate_tower = model.candidate_tower
        self.rating_model = model.rating_model
        # the rating's residual neighbourhood (trainer/neighborhood.py), owned by the rating
        # model and named here too: None when hp turns it off
        self.residual_neighborhood = model.rating_model.neighborhood

        # --- the catalog ---
        n = len(catalog[F.MOVIE_ID])
        # Variables, so that a loaded model has them as attributes (movie_ids, movie_titles).
        ids = np.asarray(catalog[F.MOVIE_ID], dtype=object)
        self.movie_ids = tf.Variable(ids, trainable=False, name=S.MOVIE_IDS)
        self.movie_titles = tf.Variable(np.asarray(catalog[F.MOVIE_TITLE], dtype=object),
                                        trainable=False, name=S.MOVIE_TITLES)
        width = max((len(g) for g in catalog[F.MOVIE_GENRES]), default=1)
        self._movie_genres = tf.constant(_string_matrix(catalog[F.MOVIE_GENRES], width))
        self._movie_years = tf.constant(np.asarray(catalog[F.MOVIE_YEAR], dtype=np.int64))
        self._movie_row = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(ids), tf.range(n, dtype=tf.int64)), default_value=-1)
        movie_xf = self._transform(self._raw_movies(tf.range(n, dtype=tf.int64)))
        embeddings = self.candidate_tower(movie_xf, training=False)
        self._top = min(MAX_K, n)  # tiny catalogs have fewer than MAX_K movies
        self.index_kind = index
        self.index = make_index(index, embeddings, np.arange(n), self._top)
        self.candidate_embeddings = tf.Variable(embeddings, trainable=False,
                                                name="candidate_embeddings")

        # --- popular movies, the answer for users never seen in training ---
        popularity = np.asarray(popularity, dtype=np.float64)
        order = np.argsort(-popularity, kind="stable")[:self._top]
        share = popularity / max(popularity.sum(), 1.0)
        self._popular_rows = tf.constant(order.astype(np.int64))
        self._popular_scores = tf.constant(share[order].astype(np.float32))

        # --- users' side features, looked up by id so a request needs only the id ---
        self._user_columns = {
            f.name: tf.constant(np.asarray(users[f.name],
                                           dtype=object if f.dtype == tf.string else np.int64))
            for f in F.USER_SIDE_FEATURES}
        self._user_row = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(np.asarray(users[F.USER_ID], dtype=object)),
                tf.range(len(users[F.USER_ID]), dtype=tf.int64)), default_value=-1)

    def _transform(self, raw):
        return self.tft_layer(F.as_tft_inputs(raw))

    # ----------------------------------------------------------------- raw feature lookups
    def _raw_movies(self, rows):
        genres = tf.gather(self._movie_genres, rows)
        return {
            F.MOVIE_ID: tf.gather(self.movie_ids, rows),
            F.MOVIE_TITLE: tf.gather(self.movie_titles, rows),
            F.MOVIE_GENRES: tf.sparse.from_dense(genres),  # drops the "" padding
            F.MOVIE_YEAR: tf.gather(self._movie_years, rows),
        }

    def _raw_query(self, user_id, timestamp):
        row = self._user_row.lookup(user_id)
        safe = tf.maximum(row, 0)
        raw = {F.USER_ID: user_id, F.TIMESTAMP: timestamp}
        for f in F.USER_SIDE_FEATURES:
            value = tf.gather(self._user_columns[f.name], safe)
            empty = tf.zeros_like(value) if f.dtype != tf.string else tf.fill(tf.shape(value), "")
            raw[f.name] = tf.where(row >= 0, value, empty)
        return raw, row >= 0

    @staticmethod
    def _now_if_unset(timestamp):
        now = tf.cast(tf.timestamp(), tf.int64)
        return tf.where(timestamp > 0, timestamp, tf.fill(tf.shape(timestamp), now))

    def _query_embedding(self, user_id, timestamp):
        raw, known = self._raw_query(user_id, timestamp)
        return self.query_tower(self._transform(raw), training=False), known

    # ----------------------------------------------------------------------- signatures
    def _recommend(self, user_id, timestamp, k):
        k = tf.clip_by_value(k, 1, MAX_K)
        query, known = self._query_embedding(user_id, self._now_if_unset(timestamp))
        scores, rows = self.index(query, k=self._top)
        batch = tf.shape(user_id)[0]
        popular_rows = tf.tile(self._popular_rows[None, :], [batch, 1])
        popular_scores = tf.tile(self._popular_scores[None, :], [batch, 1])
        rows = tf.where(known[:, None], rows, popular_rows)[:, :k]
        scores = tf.where(known[:, None], scores, popular_scores)[:, :k]
        return {
            S.MOVIE_IDS: tf.gather(self.movie_ids, rows),
            S.MOVIE_TITLES: tf.gather(self.movie_titles, rows),
            S.SCORES: scores,
            S.KNOWN_USER: known,
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=S.USER_ID)])
    def recommend(self, user_id):
        zeros = tf.zeros_like(user_id, dtype=tf.int64)
        return self._recommend(user_id, zeros, tf.constant(DEFAULT_K, tf.int32))

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=S.USER_ID),
        tf.TensorSpec([None], tf.int64, name=S.TIMESTAMP),
        tf.TensorSpec([None], tf.int64, name=S.K),
    ])
    def recommend_at(self, user_id, timestamp, k):
        k = tf.where(k > 0, k, DEFAULT_K)  # k <= 0 means the default
        largest = tf.cast(tf.reduce_max(tf.concat([k, [1]], 0)), tf.int32)
        return self._recommend(user_id, timestamp, largest)

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=S.USER_ID),
        tf.TensorSpec([None], tf.int64, name=S.TIMESTAMP),
    ])
    def score_catalog(self, user_id, timestamp):
        """Scores of every catalog movie (for evaluation): [batch, catalog]."""
        query, known = self._query_embedding(user_id, self._now_if_unset(timestamp))
        return {S.SCORES: tf.matmul(query, self.candidate_embeddings, transpose_b=True),
                S.KNOWN_USER: known}

    def _rate(self, raw):
        xf = self._transform(raw)
        return self.rating_model(
            xf, self.query_tower(xf, training=False), self.candidate_tower(xf, training=False),
            training=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=S.EXAMPLES)])
    def serving_default(self, examples):
        spec = F.raw_feature_spec(F.QUERY_FEATURES + F.MOVIE_FEATURES)
        raw = tf.io.parse_example(examples, spec)
        return {S.RATING: self._rate(raw)}

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=S.USER_ID),
        tf.TensorSpec([None], tf.string, name=S.MOVIE_ID),
        tf.TensorSpec([None], tf.int64, name=S.TIMESTAMP),
    ])
    def rate(self, user_id, movie_id, timestamp):
        """The rating `user_id` would give `movie_id` at `timestamp` (<= 0: now)."""
        raw, _ = self._raw_query(user_id, self._now_if_unset(timestamp))
        row = self._movie_row.lookup(movie_id)
        movie = self._raw_movies(tf.maximum(row, 0))
        movie[F.MOVIE_ID] = movie_id  # unknown movies keep their id (-> OOV embedding)
        raw.update(movie)
        return {S.RATING: self._rate(raw), S.KNOWN_MOVIE: row >= 0}


def save(module: MovieRecExport, path: str):
    signatures = {name: getattr(module, name).get_concrete_function() for name in S.ALL}
    options = tf.saved_model.SaveOptions(
        namespace_whitelist=["Scann"] if module.index_kind == "scann" else None)
    tf.saved_model.save(module, path, signatures=signatures, options=options)
