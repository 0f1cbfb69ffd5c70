"""The multitask TFRS model: two towers for retrieval, a rating head for ranking.

Everything here reads *transformed* features (see trainer/features.py) and knows nothing of
TFX, so it is trained and tested with plain tf.data.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Mapping, Sequence

import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer import features as F


@dataclasses.dataclass
class HParams:
    """Model and training settings. Defaults are the shipped configuration."""

    embedding_dim: int = 32
    side_embedding_dim: int = 16
    query_layers: Sequence[int] = ()
    candidate_layers: Sequence[int] = ()
    rating_layers: Sequence[int] = (256, 64)
    # "shared": the rating head reads the retrieval towers' embeddings (the seeds' design).
    # "separate": the rating head has towers of its own plus user/movie biases, so the
    # retrieval loss (summed over the batch by TFRS) cannot drown the rating loss.
    rating_tower: str = "separate"
    dropout: float = 0.0
    retrieval_weight: float = 1.0
    rating_weight: float = 1.0
    # Correct in-batch negatives for their sampling probability (logQ), so the model does
    # not learn to push popular movies down.
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    temperature: float = 1.0
    l2: float = 0.0
    optimizer: str = "adam"
    learning_rate: float = 0.005
    epochs: int = 3
    batch_size: int = 2048
    timestamp_buckets: int = F.DEFAULT_TIMESTAMP_BUCKETS
    # Share of the training split held out to watch (never the eval split).
    validation_fraction: float = 0.0
    seed: int = 42

    @classmethod
    def from_dict(cls, values: Mapping | None) -> "HParams":
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown hyperparameters: {', '.join(unknown)}")
        for name in ("query_layers", "candidate_layers", "rating_layers"):
            if name in values and isinstance(values[name], str):
                values[name] = tuple(int(v) for v in values[name].split(",") if v.strip())
            elif name in values:
                values[name] = tuple(int(v) for v in values[name])
        if values.get("rating_tower", "separate") not in ("shared", "separate"):
            raise ValueError("rating_tower must be 'shared' or 'separate'")
        return cls(**values)

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in d.items()},
                          sort_keys=True)

    def make_optimizer(self):
        name = self.optimizer.lower()
        if name == "adagrad":
            return tf.keras.optimizers.Adagrad(self.learning_rate)
        if name == "adam":
            return tf.keras.optimizers.Adam(self.learning_rate)
        if name == "sgd":
            return tf.keras.optimizers.SGD(self.learning_rate)
        raise ValueError(f"unknown optimizer {self.optimizer!r} (adam, adagrad, sgd)")


@dataclasses.dataclass(frozen=True)
class Vocab:
    """Input sizes of every categorical transformed feature (vocabulary + OOV buckets)."""

    sizes: Mapping[str, int]

    @classmethod
    def from_tft_output(cls, tft_output, timestamp_buckets: int) -> "Vocab":
        sizes = {key: tft_output.vocabulary_size_by_name(name) + F.OOV_BUCKETS
                 for key, name in F.VOCABS.items()}
        for key in F.PADDED:  # ids shifted by one for padding
            sizes[key] += 1
        sizes[F.TIMESTAMP_BUCKET_XF] = timestamp_buckets + 1
        sizes[F.YEAR_BUCKET_XF] = F.YEAR_BUCKETS + 2
        sizes[F.AGE_BUCKET_XF] = len(F.AGE_BOUNDARIES) + 1
        return cls(sizes)


def _regularizer(hp: HParams):
    return tf.keras.regularizers.l2(hp.l2) if hp.l2 else None


def _mlp(layers: Sequence[int], out_dim: int | None, hp: HParams, name: str):
    stack = []
    for width in layers:
        stack.append(tf.keras.layers.Dense(width, activation="relu",
                                           kernel_regularizer=_regularizer(hp)))
        if hp.dropout:
            stack.append(tf.keras.layers.Dropout(hp.dropout))
    if out_dim is not None:
        stack.append(tf.keras.layers.Dense(out_dim, kernel_regularizer=_regularizer(hp)))
    return tf.keras.Sequential(stack, name=name)


class _Tower(tf.keras.layers.Layer):
    """Embeds a fixed set of transformed features, concatenates, and projects."""

    def __init__(self, keys, vocab: Vocab, hp: HParams, layers, main_keys, name):
        super().__init__(name=name)
        self._keys = tuple(keys)
        self._embeddings = {}
        for key in self._keys:
            if key == F.TIMESTAMP_Z_XF:
                continue
            dim = hp.embedding_dim if key in main_keys else hp.side_embedding_dim
            self._embeddings[key] = tf.keras.layers.Embedding(
                vocab.sizes[key], dim, mask_zero=key in F.PADDED,
                embeddings_regularizer=_regularizer(hp), name=f"{key}_embedding")
        self._project = _mlp(layers, hp.embedding_dim, hp, name=f"{name}_mlp")

    def call(self, inputs, training=False):
        parts = []
        for key in self._keys:
            x = inputs[key]
            if key == F.TIMESTAMP_Z_XF:
                parts.append(tf.reshape(tf.cast(x, tf.float32), [-1, 1]))
            elif key in F.PADDED:
                emb = self._embeddings[key](x)
                mask = tf.cast(tf.not_equal(x, 0), tf.float32)[..., None]
                parts.append(tf.reduce_sum(emb * mask, axis=1)
                             / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0))
            else:
                parts.append(self._embeddings[key](tf.reshape(x, [-1])))
        return self._project(tf.concat(parts, axis=1), training=training)


def query_tower(vocab: Vocab, hp: HParams, name="query_tower"):
    return _Tower(F.QUERY_XF, vocab, hp, hp.query_layers,
                  main_keys=(F.USER_ID_XF, F.TIMESTAMP_BUCKET_XF), name=name)


def candidate_tower(vocab: Vocab, hp: HParams, name="candidate_tower"):
    return _Tower(F.CANDIDATE_XF, vocab, hp, hp.candidate_layers,
                  main_keys=(F.MOVIE_ID_XF, F.TITLE_TOKENS_XF, F.GENRES_XF), name=name)


class RatingModel(tf.keras.layers.Layer):
    """Predicts the rating of (query, movie) from the two embeddings (+ biases)."""

    def __init__(self, vocab: Vocab, hp: HParams, mean_rating: float):
        super().__init__(name="rating_model")
        self._separate = hp.rating_tower == "separate"
        if self._separate:
            self.query = query_tower(vocab, hp, name="rating_query_tower")
            self.candidate = candidate_tower(vocab, hp, name="rating_candidate_tower")
            self.user_bias = tf.keras.layers.Embedding(
                vocab.sizes[F.USER_ID_XF], 1, embeddings_initializer="zeros", name="user_bias")
            self.movie_bias = tf.keras.layers.Embedding(
                vocab.sizes[F.MOVIE_ID_XF], 1, embeddings_initializer="zeros",
                name="movie_bias")
        self.head = _mlp(hp.rating_layers, 1, hp, name="rating_head")
        self.mean_rating = float(mean_rating)

    def call(self, features, query_embedding, candidate_embedding, training=False):
        if self._separate:
            query_embedding = self.query(features, training=training)
            candidate_embedding = self.candidate(features, training=training)
        x = tf.concat([query_embedding, candidate_embedding,
                       query_embedding * candidate_embedding], axis=1)
        rating = self.head(x, training=training)[:, 0] + self.mean_rating
        if self._separate:
            rating += self.user_bias(tf.reshape(features[F.USER_ID_XF], [-1]))[:, 0]
            rating += self.movie_bias(tf.reshape(features[F.MOVIE_ID_XF], [-1]))[:, 0]
        return rating


class MovieRecModel(tfrs.Model):
    """Retrieval (in-batch softmax over movies) + rating regression, trained jointly."""

    def __init__(self, vocab: Vocab, hp: HParams, movie_log_prob=None, mean_rating=3.5):
        super().__init__()
        self.hp = hp
        self.query_tower = query_tower(vocab, hp)
        self.candidate_tower = candidate_tower(vocab, hp)
        self.rating_model = RatingModel(vocab, hp, mean_rating)
        # log P(movie is sampled as an in-batch negative), indexed by movie_id_xf.
        self._log_prob = (None if movie_log_prob is None
                          else tf.constant(movie_log_prob, tf.float32))
        self.retrieval_task = tfrs.tasks.Retrieval(
            temperature=hp.temperature if hp.temperature != 1.0 else None,
            remove_accidental_hits=hp.remove_accidental_hits)
        self.rating_task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.MeanSquaredError(),
            metrics=[tf.keras.metrics.RootMeanSquaredError(name="rmse")])

    def call(self, features, training=False):
        q = self.query_tower(features, training=training)
        c = self.candidate_tower(features, training=training)
        return q, c, self.rating_model(features, q, c, training=training)

    def compute_loss(self, features, training=False):
        q, c, rating = self(features, training=training)
        movie = tf.reshape(features[F.MOVIE_ID_XF], [-1])
        kwargs = {}
        if self.hp.logq_correction and self._log_prob is not None:
            kwargs["candidate_sampling_probability"] = tf.exp(tf.gather(self._log_prob, movie))
        if self.hp.remove_accidental_hits:
            kwargs["candidate_ids"] = movie
        retrieval_loss = self.retrieval_task(q, c, compute_metrics=False, **kwargs)
        rating_loss = self.rating_task(
            labels=tf.reshape(features[F.RATING_XF], [-1]), predictions=rating)
        return (self.hp.retrieval_weight * retrieval_loss
                + self.hp.rating_weight * rating_loss)
