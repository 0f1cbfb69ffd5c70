"""Every feature of movierec, named once (and the splits of the examples that hold them).

ExampleGen writes the *raw* features below into tf.Examples, Transform turns them into
the *transformed* features, the Trainer's towers read the transformed ones, the exported
signatures accept raw ones, and the tests build data from these same declarations.
Nothing else in the project spells a feature name as a string literal.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

# --- the splits of MovieLensExampleGen's Examples artifact ---------------------------------

TRAIN_SPLIT = "train"  # rating examples the model learns from
EVAL_SPLIT = "eval"  # held-out rating examples (never trained on)
CATALOG_SPLIT = "catalog"  # one example per movie, rated or not
SPLITS = (TRAIN_SPLIT, EVAL_SPLIT, CATALOG_SPLIT)

# --- raw features (tf.Example keys written by MovieLensExampleGen) -------------------------

USER_ID = "user_id"
MOVIE_ID = "movie_id"
RATING = "rating"  # the label
TIMESTAMP = "timestamp"  # seconds since the epoch
MOVIE_TITLE = "movie_title"
MOVIE_GENRES = "movie_genres"  # multi-valued
MOVIE_YEAR = "movie_year"  # 0 when unknown
USER_AGE = "user_age"  # 0 when the layout has no user file
USER_GENDER = "user_gender"  # "" when unknown
USER_OCCUPATION = "user_occupation"
USER_ZIP = "user_zip"


@dataclasses.dataclass(frozen=True)
class RawFeature:
    name: str
    dtype: tf.dtypes.DType
    multivalent: bool = False

    def parse_spec(self):
        if self.multivalent:
            return tf.io.VarLenFeature(self.dtype)
        # [1], as in the curated schemas: Transform's graph expects [batch, 1] inputs.
        return tf.io.FixedLenFeature([1], self.dtype)


# Features of a movie: what the catalog holds and what the candidate tower reads.
MOVIE_FEATURES = (
    RawFeature(MOVIE_ID, tf.string),
    RawFeature(MOVIE_TITLE, tf.string),
    RawFeature(MOVIE_GENRES, tf.string, multivalent=True),
    RawFeature(MOVIE_YEAR, tf.int64),
)
# Features of a user that the model looks up by id at serving time.
USER_SIDE_FEATURES = (
    RawFeature(USER_AGE, tf.int64),
    RawFeature(USER_GENDER, tf.string),
    RawFeature(USER_OCCUPATION, tf.string),
    RawFeature(USER_ZIP, tf.string),
)
# Features of the query: who asks, and when.
QUERY_FEATURES = (
    RawFeature(USER_ID, tf.string),
    RawFeature(TIMESTAMP, tf.int64),
) + USER_SIDE_FEATURES
LABEL_FEATURE = RawFeature(RATING, tf.float32)

# One rating example: query + movie + label.
RATING_EXAMPLE_FEATURES = QUERY_FEATURES + MOVIE_FEATURES + (LABEL_FEATURE,)


def raw_feature_spec(features=RATING_EXAMPLE_FEATURES) -> dict:
    """tf.io parse spec for raw tf.Examples."""
    return {f.name: f.parse_spec() for f in features}


def as_tft_inputs(raw: dict) -> dict:
    """Raw tensors shaped as Transform's graph expects: scalars as [batch, 1]."""
    return {k: v if isinstance(v, tf.SparseTensor) or v.shape.rank == 2
            else tf.reshape(v, [-1, 1]) for k, v in raw.items()}


def names(features) -> tuple[str, ...]:
    return tuple(f.name for f in features)


# --- transformed features (outputs of trainer/preprocessing.py) ----------------------------

USER_ID_XF = "user_id_xf"
MOVIE_ID_XF = "movie_id_xf"
TITLE_TOKENS_XF = "title_tokens_xf"  # [TITLE_TOKENS_LEN] int64, 0 = padding
GENRES_XF = "genres_xf"  # [GENRES_LEN] int64, 0 = padding
YEAR_BUCKET_XF = "year_bucket_xf"
TIMESTAMP_BUCKET_XF = "timestamp_bucket_xf"
TIMESTAMP_Z_XF = "timestamp_z_xf"  # float, z-score clipped to the training range
TIMESTAMP_S_XF = "timestamp_s_xf"  # float, seconds since the first training rating (clipped)
TIMESTAMP_XF = "timestamp_xf"  # int64, the raw timestamp (seconds since the epoch), unclipped
AGE_BUCKET_XF = "age_bucket_xf"
GENDER_XF = "gender_xf"
OCCUPATION_XF = "occupation_xf"
ZIP_PREFIX_XF = "zip_prefix_xf"
RATING_XF = "rating_xf"  # label

TITLE_TOKENS_LEN = 12
GENRES_LEN = 8
ZIP_PREFIX_LEN = 2
AGE_BOUNDARIES = (1, 18, 25, 35, 45, 50, 56)  # MovieLens' own age groups; bucket 0 = unknown
YEAR_BUCKETS = 20
DEFAULT_TIMESTAMP_BUCKETS = 1000  # the seeds' choice
# Transform's custom_config key for the number of timestamp buckets (a pipeline setting,
# PipelineConfig.timestamp_buckets; the Trainer reads the count from the transformed schema).
TIMESTAMP_BUCKETS_CONFIG = "timestamp_buckets"

# Vocabulary file names (Transform writes them; the Trainer sizes embeddings from them).
# Every vocabulary has one out-of-vocabulary bucket after its last entry.
VOCABS = {
    USER_ID_XF: "user_id",
    MOVIE_ID_XF: "movie_id",
    TITLE_TOKENS_XF: "title_tokens",
    GENRES_XF: "genres",
    GENDER_XF: "gender",
    OCCUPATION_XF: "occupation",
    ZIP_PREFIX_XF: "zip_prefix",
}
OOV_BUCKETS = 1
# Padded multi-valued features shift vocabulary ids by one so that 0 means "nothing".
PADDED = {TITLE_TOKENS_XF: TITLE_TOKENS_LEN, GENRES_XF: GENRES_LEN}

# Which transformed features each tower reads.
QUERY_XF = (
    USER_ID_XF, TIMESTAMP_BUCKET_XF, TIMESTAMP_Z_XF,
    AGE_BUCKET_XF, GENDER_XF, OCCUPATION_XF, ZIP_PREFIX_XF,
)
CANDIDATE_XF = (MOVIE_ID_XF, TITLE_TOKENS_XF, GENRES_XF, YEAR_BUCKET_XF)
# Read by the query towers' session pooling and the residual neighbourhood, not embedded.
CONTEXT_XF = (TIMESTAMP_S_XF, TIMESTAMP_XF)

# --- the user's history: the ratings they made before the example's (request's) time ----
# Raw request inputs of the exported signatures ([batch, L]; "" pads history_movie_ids):
HISTORY_MOVIE_IDS = "history_movie_ids"  # string
HISTORY_RATINGS = "history_ratings"  # float
HISTORY_TIMESTAMPS = "history_timestamps"  # int64, seconds since the epoch
HISTORY_INPUTS = (HISTORY_MOVIE_IDS, HISTORY_RATINGS, HISTORY_TIMESTAMPS)
# ... and as serving_default's tf.Example features (optional; a list each)
HISTORY_FEATURES = (
    RawFeature(HISTORY_MOVIE_IDS, tf.string, multivalent=True),
    RawFeature(HISTORY_RATINGS, tf.float32, multivalent=True),
    RawFeature(HISTORY_TIMESTAMPS, tf.int64, multivalent=True),
)
# What the towers read ([batch, L], newest first; built per training batch from the
# ratings before each example by trainer/data.py, at serving by trainer/history.py's
# HistoryMerge from the stored history and the request's):
HISTORY_IDS_XF = "history_ids_xf"  # int32, movie_id_xf + 1; 0 = padding
HISTORY_RATINGS_XF = "history_ratings_xf"  # float32, rating minus the training mean
HISTORY_TIMES_XF = "history_times_xf"  # int64, raw timestamp
HISTORY_XF = (HISTORY_IDS_XF, HISTORY_RATINGS_XF, HISTORY_TIMES_XF)
# Transformed features that are functions of the movie alone, and of the user alone: the
# Trainer keeps them once per movie / user and looks them up per batch.
MOVIE_LEVEL_XF = (TITLE_TOKENS_XF, GENRES_XF, YEAR_BUCKET_XF)
USER_LEVEL_XF = (AGE_BUCKET_XF, GENDER_XF, OCCUPATION_XF, ZIP_PREFIX_XF)
