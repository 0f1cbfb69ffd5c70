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

# --- inputs -------------------------------------------------------------------------------
EXAMPLES = "examples"  # serving_default: serialized tf.Examples of raw features
USER_ID = F.USER_ID
MOVIE_ID = F.MOVIE_ID
TIMESTAMP = F.TIMESTAMP  # seconds since the epoch; <= 0 means "now"
K = "k"  # how many movies; <= 0 means DEFAULT_K; at most MAX_K

# --- outputs ------------------------------------------------------------------------------
RATING = F.RATING  # predicted rating (the label's name)
MOVIE_IDS = "movie_ids"  # also the module's catalog variable (catalog order)
MOVIE_TITLES = "movie_titles"  # also a module variable
SCORES = "scores"
KNOWN_USER = "known_user"  # False: the user was not in the training data
KNOWN_MOVIE = "known_movie"

# Inputs a request to `movierec serve` may leave out, with the value the server gives
# them ({signature: {input: value}}); a SavedModel signature itself needs every input
# (TF Serving: give them).
OPTIONAL_INPUTS = {RATE: {TIMESTAMP: 0}}

DEFAULT_K = 10
MAX_K = 100  # recommend_at's largest k
