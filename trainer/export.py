"""The exported SavedModel: a plain tf.Module built from the trained towers, the Transform
layer and a brute-force index over the full catalog.

Signatures (all take *raw* values; Transform runs inside):
  serving_default  examples: serialized tf.Example [batch]        -> rating [batch]
  recommend        user_id: string [batch] + context              -> top-10 at "now"
  recommend_at     user_id [batch], timestamp int64 [batch] (<= 0 means now),
                   k int64 [batch] (<= 0 means 10; the batch's largest k is used, at most
                   MAX_K), exclude_rated bool [batch] + context
                   -> movie_ids, movie_titles, scores, because [batch, k],
                      known_user [batch]
  rate             user_id, movie_id, timestamp [batch] + context -> rating [batch]
  score_catalog    user_id, timestamp [batch] + context  -> scores [batch, catalog]
                   (evaluation; columns in the order of the module's `movie_ids`)

The context (trainer/signatures.py's CONTEXT_INPUTS) is what the application knows of the
user at request time: their ratings (history_movie_ids / history_ratings /
history_timestamps, [batch, L], any L >= 0, "" padding the ids) and demographics
(user_age / user_gender / user_occupation / user_zip, [batch]; 0 or "": not given).
serving_default reads the same from its tf.Examples (F.HISTORY_FEATURES, optional). The
towers read the union of the user's stored history before the request's time and the
request's (trainer/history.py's HistoryMerge; the request wins for a movie in both), so a
user the model never saw is answered from their history and demographics
(known_user=False). `recommend` leaves out the movies of the merged history;
`recommend_at` does where exclude_rated is true. Both say, per recommended movie, `because`:
the movie of that history (its training movies) whose candidate embedding is the most
cosine-similar to the recommended one's, among the movies the user rated at or above their
own mean rating (among all of them when none is); "" for an empty history. A request that
names no user the model knows, no history and no demographics is answered (recommend,
recommend_at, score_catalog) by what was popular near its time (trainer/popularity.py;
its scores are those counts), not by the towers.

The catalog can grow after training (`movierec catalog add`, serving/catalog.py): its
state (movie_ids, movie_titles, candidate_embeddings, the movies' genres and years, the
id -> row table) is held in Variables of unknown first dimension and a MutableHashTable,
and the module's `add_movies` (a function, not a signature) appends movies, each embedded
from its features through the candidate tower (`embed_movies`), to a loaded model, which
is then saved again. The retrieval index covers the movies exported with the model (the
first `indexed` rows); rows added later are scored exactly and merged with its candidates.

`rate` and `serving_default` rate through the rating model (the residual neighbourhood
included when it is on: the module's `residual_neighborhood`, the rating model's layer).
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
from trainer.history import HistoryMerge, rows_mask
from trainer.popularity import TimePopularity
from trainer.signatures import DEFAULT_K, MAX_K

INDEXES = ("brute_force", "scann")
# `because`: a history rating counts as "at or above the user's mean" within this much
# (a user's equal ratings are all at their mean, whatever float rounding says)
_LIKED_TOLERANCE = 1e-5


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


# add_movies / embed_movies: raw movie features, a movie per row (genres padded with "")
_MOVIE_SPECS = [
    tf.TensorSpec([None], tf.string, name=F.MOVIE_ID),
    tf.TensorSpec([None], tf.string, name=F.MOVIE_TITLE),
    tf.TensorSpec([None, None], tf.string, name=F.MOVIE_GENRES),
    tf.TensorSpec([None], tf.int64, name=F.MOVIE_YEAR),
]

_CONTEXT_SPECS = [
    tf.TensorSpec([None, None], tf.string, name=S.HISTORY_MOVIE_IDS),
    tf.TensorSpec([None, None], tf.float32, name=S.HISTORY_RATINGS),
    tf.TensorSpec([None, None], tf.int64, name=S.HISTORY_TIMESTAMPS),
    tf.TensorSpec([None], tf.int64, name=F.USER_AGE),
    tf.TensorSpec([None], tf.string, name=F.USER_GENDER),
    tf.TensorSpec([None], tf.string, name=F.USER_OCCUPATION),
    tf.TensorSpec([None], tf.string, name=F.USER_ZIP),
]


class MovieRecExport(tf.Module):
    def __init__(self, model, tft_layer, catalog: dict, users: dict, popularity: np.ndarray,
                 index: str = "brute_force", recent: tuple | None = None):
        """catalog: raw movie columns (F.MOVIE_FEATURES; genres a list per movie);
        users: raw user columns (F.USER_ID + F.USER_SIDE_FEATURES);
        popularity: training rating count per catalog row;
        recent: trainer.popularity.time_buckets' (edges, table) over the catalog rows, the
        answer to a request with no known user, no history and no demographics (None: the
        all-time counts, `popularity`, in one bucket)."""
        super().__init__()
        self.tft_layer = tft_layer
        self.query_tower = model.query_tower
        self.candidate_tower = model.candidate_tower
        self.rating_model = model.rating_model
        # the rating's residual neighbourhood (trainer/neighborhood.py), owned by the rating
        # model and named here too: None when hp turns it off
        self.residual_neighborhood = model.rating_model.neighborhood
        # the users' latest training ratings, merged with a request's (trainer/history.py)
        self.stored_history = model.stored_history
        history_len = model.hp.history_len
        self.history_merge = HistoryMerge(history_len) if history_len else None
        self._mean_rating = tf.constant(model.mean_rating, tf.float32)

        # --- the catalog ---
        n = len(catalog[F.MOVIE_ID])
        # Variables, so that a loaded model has them as attributes (movie_ids, movie_titles),
        # of unknown first dimension, so that add_movies can grow them in a loaded model.
        ids = np.asarray(catalog[F.MOVIE_ID], dtype=object)
        self.movie_ids = _catalog_variable(ids, S.MOVIE_IDS)
        self.movie_titles = _catalog_variable(
            np.asarray(catalog[F.MOVIE_TITLE], dtype=object), S.MOVIE_TITLES)
        width = max((len(g) for g in catalog[F.MOVIE_GENRES]), default=1)
        self._movie_genres = _catalog_variable(
            _string_matrix(catalog[F.MOVIE_GENRES], width), "movie_genres",
            shape=[None, None])  # "" pads; add_movies may widen it
        self._movie_years = _catalog_variable(
            np.asarray(catalog[F.MOVIE_YEAR], dtype=np.int64), "movie_years")
        self._movie_row = tf.lookup.experimental.MutableHashTable(
            tf.string, tf.int64, default_value=-1, name="movie_row")
        self._movie_row.insert(tf.constant(ids, tf.string), tf.range(n, dtype=tf.int64))
        movie_xf = self._transform(self._raw_movies(tf.range(n, dtype=tf.int64)))
        embeddings = self.candidate_tower(movie_xf, training=False)
        # each catalog row's movie_id_xf, and the row of each movie_id_xf + 1 (a history
        # id) that is a training movie's (-1: none; movies outside the vocabulary share
        # the out-of-vocabulary id, so their rows are found by their raw ids instead)
        row_xf = movie_xf[F.MOVIE_ID_XF].numpy().reshape(-1).astype(np.int64)
        self._row_xf = _catalog_variable(row_xf, "row_xf")
        trained = np.asarray(popularity) > 0
        row_of = np.full(model.movie_vocab_size + 1, -1, dtype=np.int64)
        row_of[row_xf[trained] + 1] = np.flatnonzero(trained)
        self._row_of_history_id = tf.constant(row_of)
        # enough candidates to fill k after leaving out a history of history_len movies
        self._candidates = MAX_K + history_len
        # the index holds the first `indexed` catalog rows (the movies exported with the
        # model); rows add_movies appends are scored exactly (_retrieve)
        self.indexed = n
        self._index_top = min(self._candidates, n)
        if recent is None:
            recent = (np.zeros([0], np.int64), np.asarray(popularity, np.float32)[None, :])
        self.time_popularity = TimePopularity(*recent)
        self._k_max = min(MAX_K, n)  # the exported catalog: it only grows
        self.index_kind = index
        self.index = make_index(index, embeddings, np.arange(n), self._index_top)
        self.candidate_embeddings = _catalog_variable(embeddings.numpy(),
                                                      "candidate_embeddings",
                                                      shape=[None, embeddings.shape[1]])

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

    def _rows_of(self, movie_ids):
        """The catalog row of each movie id (-1: not in the catalog), shaped as the ids (a
        MutableHashTable's lookup has no static shape)."""
        return tf.reshape(self._movie_row.lookup(movie_ids), tf.shape(movie_ids))

    def _size(self):
        """The number of catalog movies (it grows with add_movies)."""
        return tf.shape(self.movie_ids, out_type=tf.int64)[0]

    # ----------------------------------------------------------------- raw feature lookups
    def _raw_movies(self, rows):
        genres = _gather(self._movie_genres, rows)
        return {
            F.MOVIE_ID: _gather(self.movie_ids, rows),
            F.MOVIE_TITLE: _gather(self.movie_titles, rows),
            F.MOVIE_GENRES: tf.sparse.from_dense(genres),  # drops the "" padding
            F.MOVIE_YEAR: _gather(self._movie_years, rows),
        }

    def _raw_query(self, user_id, timestamp, demographics=None):
        """The raw query features: the stored side features of a known user; where the
        request gives a demographic (not 0 / ""), the request's."""
        row = self._user_row.lookup(user_id)
        safe = tf.maximum(row, 0)
        raw = {F.USER_ID: user_id, F.TIMESTAMP: timestamp}
        for f in F.USER_SIDE_FEATURES:
            value = tf.gather(self._user_columns[f.name], safe)
            empty = tf.zeros_like(value) if f.dtype != tf.string else tf.fill(tf.shape(value), "")
            value = tf.where(row >= 0, value, empty)
            if demographics is not None:
                given = demographics[f.name]
                value = tf.where(_is_given(given), given, value)
            raw[f.name] = value
        return raw, row >= 0

    @staticmethod
    def _now_if_unset(timestamp):
        now = tf.cast(tf.timestamp(), tf.int64)
        return tf.where(timestamp > 0, timestamp, tf.fill(tf.shape(timestamp), now))

    def _request_history(self, movie_ids, ratings, timestamps):
        """A request's history as the towers read it (movies not in the catalog, and ""
        padding, left out), and the catalog rows it names ([batch, L], -1: none)."""
        rows = self._rows_of(movie_ids)
        named = rows >= 0
        ids = tf.where(named, _gather(self._row_xf, tf.maximum(rows, 0)) + 1, 0)
        return {F.HISTORY_IDS_XF: tf.cast(ids, tf.int32),
                F.HISTORY_RATINGS_XF: tf.where(named, ratings - self._mean_rating, 0.0),
                F.HISTORY_TIMES_XF: tf.where(named, timestamps, 0)}, rows

    def _query_features(self, user_id, timestamp, context, movie=None):
        """(transformed features of the query: the user, the time, the merged history;
        whether the user is known; the catalog rows of the merged history [batch, L'];
        the history the towers read as (catalog rows, centred ratings), [batch, L''] each,
        row -1: none or not a training movie)."""
        raw, known = self._raw_query(user_id, timestamp, context)
        if movie is not None:
            raw.update(movie)
        xf = dict(self._transform(raw))
        asked, rows = self._request_history(context[S.HISTORY_MOVIE_IDS],
                                            context[S.HISTORY_RATINGS],
                                            context[S.HISTORY_TIMESTAMPS])
        seen = rows
        read = (rows, asked[F.HISTORY_RATINGS_XF])  # no stored history: the request's
        if self.history_merge is not None:
            users = tf.reshape(xf[F.USER_ID_XF], [-1])
            stored = self.stored_history(users)
            stored = {F.HISTORY_IDS_XF: stored["ids"], F.HISTORY_RATINGS_XF: stored["ratings"],
                      F.HISTORY_TIMES_XF: stored["times"]}
            merged = self.history_merge(stored, timestamp, asked)
            xf.update(merged)
            stored_rows = tf.gather(self._row_of_history_id,
                                    tf.cast(merged[F.HISTORY_IDS_XF], tf.int64))
            seen = tf.concat([rows, stored_rows], axis=1)
            read = (stored_rows, merged[F.HISTORY_RATINGS_XF])
        return xf, known, seen, read

    def _scores(self, user_id, timestamp, context):
        xf, known, seen, read = self._query_features(user_id, timestamp, context)
        return self.query_tower(xf, training=False), known, seen, read

    @staticmethod
    def _anonymous(known, seen, context):
        """[batch] bool: requests that name no user the model knows, no catalog movie in
        their history and no demographic: the ones time-aware popularity answers."""
        given = tf.reduce_any(seen >= 0, axis=1)
        for f in F.USER_SIDE_FEATURES:
            given |= _is_given(context[f.name])
        return ~known & ~given

    def _popular(self, timestamp):
        """[batch, catalog]: trainer/popularity.py's scores at each request's time (the
        movies added after training: 0)."""
        popular = self.time_popularity(timestamp)
        return tf.pad(popular, [[0, 0], [0, tf.cast(self._size(), tf.int32)
                                         - tf.shape(popular)[1]]])

    def _because(self, rows, history):
        """[batch, k] string: for each recommended catalog row (`rows`, [batch, k]), the
        movie id of the user's history movie (`history`: catalog rows and centred ratings,
        [batch, L], row -1: none) whose candidate embedding is the most cosine-similar to
        it, among those rated at or above the user's own mean (all of them when none
        is); "" when the history is empty."""
        hist_rows, centred = history
        valid = hist_rows >= 0
        count = tf.reduce_sum(tf.cast(valid, tf.float32), axis=1, keepdims=True)
        mean = (tf.reduce_sum(tf.where(valid, centred, 0.0), axis=1, keepdims=True)
                / tf.maximum(count, 1.0))
        liked = valid & (centred >= mean - _LIKED_TOLERANCE)
        liked = tf.where(tf.reduce_any(liked, axis=1, keepdims=True), liked, valid)
        # the rows' unit vectors, gathered first (not the whole catalog normalized per call)
        shown = tf.math.l2_normalize(_gather(self.candidate_embeddings, rows), axis=2)
        past = tf.math.l2_normalize(
            _gather(self.candidate_embeddings, tf.maximum(hist_rows, 0)), axis=2)
        cosine = tf.matmul(shown, past, transpose_b=True)  # [batch, k, L]
        cosine = tf.where(liked[:, None, :], cosine, -np.inf)
        best = tf.argmax(cosine, axis=2, output_type=tf.int32)  # [batch, k]
        best_rows = tf.gather(hist_rows, best, batch_dims=1)
        ids = _gather(self.movie_ids, tf.maximum(best_rows, 0))
        any_history = tf.reduce_any(valid, axis=1, keepdims=True)
        return tf.where(any_history & (best_rows >= 0), ids, tf.fill(tf.shape(ids), ""))

    def _seen_mask(self, seen):
        """[batch, catalog] bool: the catalog rows in `seen` ([batch, L], -1: none)."""
        return rows_mask(seen, self._size())

    def _retrieve(self, query, top):
        """(scores, catalog rows) [batch, top] of the best `top` movies for each query, in
        descending order: the index's candidates over the rows it holds, merged with the
        exact scores of the rows added after the export (none: the index's alone)."""
        scores, rows = self.index(query, k=self._index_top)
        added = tf.matmul(query, self.candidate_embeddings[self.indexed:], transpose_b=True)
        added_scores, added_rows = tf.math.top_k(
            added, k=tf.minimum(top, tf.shape(added)[1]))
        scores = tf.concat([scores, added_scores], axis=1)
        rows = tf.concat([tf.cast(rows, tf.int64),
                          tf.cast(added_rows, tf.int64) + self.indexed], axis=1)
        scores, order = tf.math.top_k(scores, k=top)  # stable: ties keep the index's order
        return scores, tf.gather(rows, order, batch_dims=1)

    # ----------------------------------------------------------------------- signatures
    def _recommend(self, user_id, timestamp, k, exclude, context):
        """k: a Python int (the outputs then have k columns in their static shape; the
        catalog only grows, so k capped by the exported catalog's size is always there)
        or an int32 scalar tensor."""
        n = tf.cast(self._size(), tf.int32)
        k = (min(max(k, 1), self._k_max) if isinstance(k, int)
             else tf.clip_by_value(k, 1, tf.minimum(MAX_K, n)))
        timestamp = self._now_if_unset(timestamp)
        query, known, seen, read = self._scores(user_id, timestamp, context)
        anonymous = self._anonymous(known, seen, context)
        if self.index_kind == "brute_force":
            # exact: every catalog movie's score (added movies too; an anonymous request's
            # are the popularity near its time), the excluded ones at -inf, then the best k
            scores = tf.matmul(query, self.candidate_embeddings, transpose_b=True)
            scores = tf.cond(  # popularity computed only when the batch has one
                tf.reduce_any(anonymous),
                lambda: tf.where(anonymous[:, None], self._popular(timestamp), scores),
                lambda: scores)
            excluded = self._seen_mask(seen) & exclude[:, None]
            scores = tf.where(excluded, tf.fill(tf.shape(scores), -np.inf), scores)
            scores, rows = tf.math.top_k(scores, k=k)
        else:
            scores, rows = self._retrieve(query, tf.minimum(self._candidates, n))
            excluded = tf.gather(self._seen_mask(seen), rows, batch_dims=1) & exclude[:, None]
            scores = tf.where(excluded, tf.fill(tf.shape(scores), -np.inf), scores)
            # the best k that are left (the candidates are in descending order)
            order = tf.argsort(tf.cast(excluded, tf.int32), axis=1, stable=True)[:, :k]
            rows = tf.gather(rows, order, batch_dims=1)
            scores = tf.gather(scores, order, batch_dims=1)
            # anonymous requests (no history: nothing to exclude): the most popular near
            # their time, computed only when the batch has one
            popular, popular_rows = tf.cond(
                tf.reduce_any(anonymous),
                lambda: tuple(tf.math.top_k(self._popular(timestamp), k=tf.shape(rows)[1])),
                lambda: (scores, tf.cast(rows, tf.int32)))
            scores = tf.where(anonymous[:, None], popular, scores)
            rows = tf.where(anonymous[:, None], tf.cast(popular_rows, rows.dtype), rows)
        return {
            S.MOVIE_IDS: _gather(self.movie_ids, rows),
            S.MOVIE_TITLES: _gather(self.movie_titles, rows),
            S.SCORES: scores,
            S.KNOWN_USER: known,
            S.BECAUSE: self._because(rows, read),
        }

    @staticmethod
    def _context(*values):
        return dict(zip(S.CONTEXT_INPUTS, values))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=S.USER_ID)]
                 + _CONTEXT_SPECS)
    def recommend(self, user_id, history_movie_ids, history_ratings, history_timestamps,
                  user_age, user_gender, user_occupation, user_zip):
        """The top DEFAULT_K movies now, the user's known history left out."""
        zeros = tf.zeros_like(user_id, dtype=tf.int64)
        context = self._context(history_movie_ids, history_ratings, history_timestamps,
                                user_age, user_gender, user_occupation, user_zip)
        return self._recommend(user_id, zeros, DEFAULT_K, tf.ones_like(user_id, dtype=tf.bool),
                               context)

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=S.USER_ID),
        tf.TensorSpec([None], tf.int64, name=S.TIMESTAMP),
        tf.TensorSpec([None], tf.int64, name=S.K),
        tf.TensorSpec([None], tf.bool, name=S.EXCLUDE_RATED),
    ] + _CONTEXT_SPECS)
    def recommend_at(self, user_id, timestamp, k, exclude_rated, history_movie_ids,
                     history_ratings, history_timestamps, user_age, user_gender,
                     user_occupation, user_zip):
        k = tf.where(k > 0, k, DEFAULT_K)  # k <= 0 means the default
        largest = tf.cast(tf.reduce_max(tf.concat([k, [1]], 0)), tf.int32)
        context = self._context(history_movie_ids, history_ratings, history_timestamps,
                                user_age, user_gender, user_occupation, user_zip)
        return self._recommend(user_id, timestamp, largest, exclude_rated, context)

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=S.USER_ID),
        tf.TensorSpec([None], tf.int64, name=S.TIMESTAMP),
    ] + _CONTEXT_SPECS)
    def score_catalog(self, user_id, timestamp, history_movie_ids, history_ratings,
                      history_timestamps, user_age, user_gender, user_occupation, user_zip):
        """Scores of every catalog movie (for evaluation): [batch, catalog]."""
        context = self._context(history_movie_ids, history_ratings, history_timestamps,
                                user_age, user_gender, user_occupation, user_zip)
        timestamp = self._now_if_unset(timestamp)
        query, known, seen, _ = self._scores(user_id, timestamp, context)
        scores = tf.matmul(query, self.candidate_embeddings, transpose_b=True)
        anonymous = self._anonymous(known, seen, context)
        return {S.SCORES: tf.where(anonymous[:, None], self._popular(timestamp), scores),
                S.KNOWN_USER: known}

    def _rate(self, xf):
        return self.rating_model(
            xf, self.query_tower(xf, training=False), self.candidate_tower(xf, training=False),
            training=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=S.EXAMPLES)])
    def serving_default(self, examples):
        """The rating of each tf.Example of raw features (F.QUERY_FEATURES and
        F.MOVIE_FEATURES; optionally F.HISTORY_FEATURES, the user's known history)."""
        spec = F.raw_feature_spec(F.QUERY_FEATURES + F.MOVIE_FEATURES + F.HISTORY_FEATURES)
        raw = tf.io.parse_example(examples, spec)
        context = {f.name: tf.sparse.to_dense(raw.pop(f.name)) for f in F.HISTORY_FEATURES}
        for f in F.USER_SIDE_FEATURES:  # the example's demographics, as given
            context[f.name] = tf.reshape(raw[f.name], [-1])
        user_id = tf.reshape(raw.pop(F.USER_ID), [-1])
        timestamp = tf.reshape(raw.pop(F.TIMESTAMP), [-1])
        movie = {f.name: raw[f.name] for f in F.MOVIE_FEATURES}
        xf, _, _, _ = self._query_features(user_id, timestamp, context, movie=movie)
        return {S.RATING: self._rate(xf)}

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=S.USER_ID),
        tf.TensorSpec([None], tf.string, name=S.MOVIE_ID),
        tf.TensorSpec([None], tf.int64, name=S.TIMESTAMP),
    ] + _CONTEXT_SPECS)
    def rate(self, user_id, movie_id, timestamp, history_movie_ids, history_ratings,
             history_timestamps, user_age, user_gender, user_occupation, user_zip):
        """The rating `user_id` would give `movie_id` at `timestamp` (<= 0: now)."""
        context = self._context(history_movie_ids, history_ratings, history_timestamps,
                                user_age, user_gender, user_occupation, user_zip)
        row = self._rows_of(movie_id)
        movie = self._raw_movies(tf.maximum(row, 0))
        movie[F.MOVIE_ID] = movie_id  # unknown movies keep their id (-> OOV embedding)
        xf, _, _, _ = self._query_features(user_id, self._now_if_unset(timestamp), context,
                                        movie=movie)
        return {S.RATING: self._rate(xf), S.KNOWN_MOVIE: row >= 0}


    # ------------------------------------------------------------- growing the catalog
    def _embed(self, movie_id, movie_title, movie_genres, movie_year):
        raw = {F.MOVIE_ID: movie_id, F.MOVIE_TITLE: movie_title,
               F.MOVIE_GENRES: tf.sparse.from_dense(movie_genres),  # drops the "" padding
               F.MOVIE_YEAR: movie_year}
        xf = self._transform(raw)
        return self.candidate_tower(xf, training=False), xf[F.MOVIE_ID_XF]

    @tf.function(input_signature=_MOVIE_SPECS)
    def embed_movies(self, movie_id, movie_title, movie_genres, movie_year):
        """Candidate embeddings [batch, dim] of movies given by their raw features (genres
        [batch, G], "" padding): what add_movies appends. An id outside the Transform
        vocabulary gets the out-of-vocabulary id's embedding, and the title tokens, genres
        and year carry the movie."""
        return self._embed(movie_id, movie_title, movie_genres, movie_year)[0]

    @tf.function(input_signature=_MOVIE_SPECS)
    def add_movies(self, movie_id, movie_title, movie_genres, movie_year):
        """Appends movies to the catalog (ids not in it: the caller checks), each embedded
        by embed_movies; the existing movies' rows and embeddings are left as they are.
        Returns the new movies' catalog rows. Not a signature: `movierec catalog add`
        calls it on a loaded model and saves the model again as a new version."""
        embeddings, movie_id_xf = self._embed(movie_id, movie_title, movie_genres, movie_year)
        n = self._size()
        rows = n + tf.range(tf.shape(movie_id, out_type=tf.int64)[0])
        width = tf.maximum(tf.shape(self._movie_genres)[1], tf.shape(movie_genres)[1])

        def padded(genres):
            return tf.pad(genres, [[0, 0], [0, width - tf.shape(genres)[1]]],
                          constant_values="")

        self._movie_genres.assign(tf.concat([padded(self._movie_genres),
                                             padded(movie_genres)], axis=0))
        self._movie_years.assign(tf.concat([self._movie_years, movie_year], axis=0))
        self.movie_titles.assign(tf.concat([self.movie_titles, movie_title], axis=0))
        self._row_xf.assign(tf.concat([self._row_xf,
                                       tf.cast(tf.reshape(movie_id_xf, [-1]), tf.int64)], 0))
        self.candidate_embeddings.assign(
            tf.concat([self.candidate_embeddings, embeddings], axis=0))
        self.movie_ids.assign(tf.concat([self.movie_ids, movie_id], axis=0))
        self._movie_row.insert(movie_id, rows)
        return rows  # after every assignment (tf.function orders the stateful ops)


def _is_given(value):
    """Where a request's demographic input says something: not 0, not ""."""
    empty = tf.fill(tf.shape(value), "") if value.dtype == tf.string else tf.zeros_like(value)
    return tf.not_equal(value, empty)


def _gather(variable, rows):
    """tf.gather on a catalog Variable's dense value. A gather on the Variable itself
    (ResourceGather) puts it in copy-on-read mode, after which every read of it (its shape,
    a matmul over it) copies the whole catalog: 90 us a request for the ids' strings."""
    return tf.gather(variable.value(), rows)


def _catalog_variable(value, name: str, shape=None):
    """A non-trainable Variable of the catalog, its first dimension unknown (add_movies
    assigns a longer value)."""
    value = np.asarray(value)
    shape = [None] + list(value.shape[1:]) if shape is None else shape
    return tf.Variable(value, trainable=False, name=name, shape=tf.TensorShape(shape))


def save(module: MovieRecExport, path: str):
    # the functions themselves, not concrete functions traced here: saving traces them in
    # its own context, and a function traced outside it would be traced a second time
    signatures = {name: getattr(module, name) for name in S.ALL}
    options = tf.saved_model.SaveOptions(
        namespace_whitelist=["Scann"] if module.index_kind == "scann" else None)
    tf.saved_model.save(module, path, signatures=signatures, options=options)
