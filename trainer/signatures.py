"""The exported model's serving signatures, their inputs and outputs, named once.

trainer/export.py builds them; the evaluators, `movierec recommend` / `rate` / `evaluate`,
the server and the benchmarks call them by these names (README, "Querying the pushed
model", lists them; tests/test_docs.py checks that list against an exported model).
Inputs that are raw features are named as trainer/features.py names them.
"""

from __future__ import annotations

from trainer import features as F

# --- signatures ---------------------------------------------------------------------------
SERVING_DEFAULT = "serving_default"  # examples -> rating (TFMA evaluates this one)
RECOMMEND = "recommend"  # user_id -> top-DEFAULT_K movies at "now"
RECOMMEND_AT = "recommend_at"  # user_id, timestamp, k -> top-k movies
RATE = "rate"  # user_id, movie_id, timestamp -> rating
SCORE_CATALOG = "score_catalog"  # user_id, timestamp -> a score per catalog movie
ALL = (SERVING_DEFAULT, RECOMMEND, RECOMMEND_AT, RATE, SCORE_CATALOG)
# Functions of the module that are not signatures (not served): raw movie features
# (movie_id, movie_title, movie_genres [batch, G] "" padded, movie_year) -> ...
EMBED_MOVIES = "embed_movies"  # ... their candidate embeddings [batch, dim]
ADD_MOVIES = "add_movies"  # ... appended to the catalog (`movierec catalog add`): their rows

# --- inputs -------------------------------------------------------------------------------
EXAMPLES = "examples"  # serving_default: serialized tf.Examples of raw features
USER_ID = F.USER_ID
MOVIE_ID = F.MOVIE_ID
TIMESTAMP = F.TIMESTAMP  # seconds since the epoch; <= 0 means "now"
K = "k"  # how many movies; <= 0 means DEFAULT_K; at most MAX_K
EXCLUDE_RATED = "exclude_rated"  # recommend_at: leave out the user's known history (bool)
# The user's ratings known at request time ([batch, L] each, any L >= 0; "" pads the ids),
# merged with the history the model stored (the request wins for a movie in both):
HISTORY_MOVIE_IDS = F.HISTORY_MOVIE_IDS
HISTORY_RATINGS = F.HISTORY_RATINGS
HISTORY_TIMESTAMPS = F.HISTORY_TIMESTAMPS
HISTORY_INPUTS = F.HISTORY_INPUTS
# The user's demographics ([batch]; 0 / "": not given, the stored ones count):
DEMOGRAPHIC_INPUTS = F.names(F.USER_SIDE_FEATURES)
CONTEXT_INPUTS = HISTORY_INPUTS + DEMOGRAPHIC_INPUTS
MAX_HISTORY = 1000  # the longest request history the server and the CLI accept
RATING_RANGE = (0.5, 5.0)  # a history rating's range (every MovieLens layout's)

# --- outputs ------------------------------------------------------------------------------
RATING = F.RATING  # predicted rating (the label's name)
MOVIE_IDS = "movie_ids"  # also the module's catalog variable (catalog order)
MOVIE_TITLES = "movie_titles"  # also a module variable
SCORES = "scores"
KNOWN_USER = "known_user"  # False: the user was not in the training data
KNOWN_MOVIE = "known_movie"
# recommend / recommend_at: per recommended movie, the id of the movie of the user's
# (merged) history that most supports it ("" when the history is empty)
BECAUSE = "because"

# Inputs a request to `movierec serve` may leave out, with the value the server gives
# them ({signature: {input: value}}); a SavedModel signature itself needs every input
# (TF Serving: give them).
_CONTEXT_DEFAULTS = {HISTORY_MOVIE_IDS: [], HISTORY_RATINGS: [], HISTORY_TIMESTAMPS: [],
                     F.USER_AGE: 0, F.USER_GENDER: "", F.USER_OCCUPATION: "", F.USER_ZIP: ""}
OPTIONAL_INPUTS = {
    RECOMMEND: dict(_CONTEXT_DEFAULTS),
    RECOMMEND_AT: {EXCLUDE_RATED: False, **_CONTEXT_DEFAULTS},
    RATE: {TIMESTAMP: 0, **_CONTEXT_DEFAULTS},
    SCORE_CATALOG: dict(_CONTEXT_DEFAULTS),
}

DEFAULT_K = 10
MAX_K = 100  # recommend_at's largest k
