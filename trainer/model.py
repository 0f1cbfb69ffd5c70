"""The multitask TFRS model: two towers for retrieval (trainer/towers.py), a rating model
for ranking (rating heads and the residual neighbourhood, trainer/neighborhood.py).

Everything here reads *transformed* features (see trainer/features.py) and knows nothing of
TFX, so it is trained and tested with plain tf.data.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer import distribution
from trainer import features as F
from trainer.embedding import TaggedEmbedding
from trainer.asymmetric import HistoryRatingHead
from trainer.history import StoredHistory, rows_mask, user_history
from trainer.factorization import FoldedFactorization
from trainer.neighborhood import ResidualNeighborhood
from trainer.towers import candidate_tower, mlp, query_tower
from trainer.tracing import skip_keras_internals

skip_keras_internals()  # before anything traces the model (trainer/tracing.py)


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
    # "history": the asymmetric factor model of trainer/asymmetric.py, the user's biases
    # and factors read from their history (rates users never seen as well).
    rating_tower: str = "history"
    # Factors of the "history" rating head, and the most similar movies of each movie its
    # item-kNN term reads (0: no kNN term).
    rating_dim: int = 32
    history_neighbors: int = 30
    dropout: float = 0.3
    # Independent rating heads averaged (an ensemble inside the model; "separate" only).
    rating_heads: int = 1
    retrieval_weight: float = 1.0
    rating_weight: float = 1.0
    # Correct in-batch negatives for their sampling probability (logQ), so the model does
    # not learn to push popular movies down.
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    temperature: float = 1.0
    l2: float = 0.0
    # L2 on the rating head's own tables (and projections) only.
    rating_l2: float = 1e-4
    optimizer: str = "adam"
    learning_rate: float = 0.002
    lr_schedule: str = "cosine"  # decay to 5% over the training steps, or "constant"
    epochs: int = 6
    # Examples the Trainer may process in all: `epochs` full passes, fewer when they would
    # exceed this budget, and never less than one (0: no budget). ML-100K's 80K training
    # ratings get all 6 epochs; 1M ratings get 3; 10M ratings one. Larger data needs fewer
    # passes (on 1M synthetic ratings retrieval was best after the first epoch).
    example_budget: int = 2_500_000
    # Stop after this many batches (0: full epochs). For smoke tests and the worse-model
    # check of the blessing; never a sensible production setting.
    max_steps: int = 0
    batch_size: int = 512
    # Movies of the user's history (their latest ratings before the example's time, the
    # request's) the query towers read (0: none).
    history_len: int = 200
    # Also pool the history by recency (position, newest first), one pooling per scale.
    recency_taus: Sequence[float] = (5.0, 20.0)
    # Share of training examples whose user id is replaced by the out-of-vocabulary id,
    # so that the history and demographics learn to carry users the model never saw.
    user_dropout: float = 0.5
    # Retrieval negatives: every training movie (a full softmax; the user's history movies
    # other than the answer left out) while there are at most this many, else the batch's
    # (TFRS's in-batch softmax with logQ correction).
    full_softmax_max: int = 20000
    # Also pool the history movies rated close in time to the query (the same session),
    # weighted by exp(-|time gap| / session_tau), in seconds (0: off).
    session_tau: float = 1800.0
    # Also pool the history weighted by the user's (centred) ratings: likes and dislikes.
    history_ratings: bool = True
    # Users who rated the movie in training (its `rater_history_len` most recent raters,
    # weighted by their centred ratings, as in item-based AutoRec) read by the rating
    # head's movie tower; the asking user is left out of them (0: off).
    rater_history_len: int = 0
    # The residual neighbourhood (trainer/neighborhood.py), added to the rating after
    # training: what the rating head got wrong on the user's training ratings of the
    # `residual_neighbors` movies most similar to the rated one, and of the same sitting
    # (time scale residual_session_tau seconds), times these weights (0, 0: off). Chosen on
    # a validation split of ML-100K's training ratings (docs/benchmarks.md).
    residual_neighbors: int = 0
    residual_knn_weight: float = 1.0
    residual_session_weight: float = 0.5
    residual_session_tau: float = 60.0
    # The factorization blended into the rating (trainer/factorization.py): a biased MF of
    # mf_dim factors fitted by ALS after training (mf_iterations rounds; factors shrunk by
    # mf_l2, biases by mf_bias_l2), the user folded in from their history at the request;
    # rating = (1 - mf_weight) * the heads' + mf_weight * its (mf_dim 0: off).
    mf_dim: int = 12
    mf_l2: float = 8.0
    mf_bias_l2: float = 5.0
    mf_iterations: int = 10
    mf_weight: float = 0.6
    # ... and its fold-in weights a history rating of age a by 2^(-a / half-life) + 0.1
    # (0: every rating the same). The weight was chosen on ML-100K's random split, the
    # half-life on its replay, mf_dim / mf_l2 on the random and u1 splits, the terms below
    # by a replay inside the training ratings (docs/benchmarks.md, "Fold-in terms").
    mf_half_life_days: float = 7.0
    # ... and shrinks the folded-in factors towards the trained ones (0 for an unknown
    # user) by mf_fold_l2 (0: mf_l2).
    mf_fold_l2: float = 10.0
    # ... a user it never saw starts from the trained users' distribution (mean, and
    # mf_prior_scale * noise * covariance^-1 as the shrinkage; 0: from 0 by mf_fold_l2),
    # and the sitting's residual is a term of its own (exp(-age / mf_session_tau seconds),
    # shrunk by mf_session_l2; tau 0: off). Chosen by a replay inside the training ratings.
    mf_prior_scale: float = 0.5
    mf_session_tau: float = 300.0
    mf_session_l2: float = 20.0
    # ... and is the mean of mf_members ALS fits from different random starts (1: one);
    # 3 members at mf_l2 8 were chosen on the u1 split (docs/benchmarks.md, "Ensemble").
    mf_members: int = 3
    # Retrieval index in the exported model: "brute_force" (exact) or "scann" (approximate,
    # for catalogs of tens of thousands of movies and more).
    index: str = "brute_force"
    # Share of the training split held out to watch (never the eval split).
    validation_fraction: float = 0.0
    # With a validation split: stop when the validation objective (RMSE + retrieval loss
    # per example) has not improved for this many epochs; keep the best epoch (0: off).
    early_stopping_patience: int = 0
    # "" / "none": one device; "mirrored": this machine's devices; "multi_worker": the
    # workers TF_CONFIG names (trainer/distribution.py). batch_size stays the global batch.
    distribution: str = ""
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
        if values.get("index", "brute_force") not in ("brute_force", "scann"):
            raise ValueError("index must be 'brute_force' or 'scann'")
        if "recency_taus" in values:
            taus = values["recency_taus"]
            if isinstance(taus, str):
                taus = [v for v in taus.split(",") if v.strip()]
            values["recency_taus"] = tuple(float(v) for v in taus)
        if values.get("rating_tower", "history") not in ("shared", "separate", "history"):
            raise ValueError("rating_tower must be 'history', 'separate' or 'shared'")
        distribution.check(values.get("distribution", ""))
        if (values.get("early_stopping_patience", 0) > 0
                and values.get("validation_fraction", 0) <= 0):
            raise ValueError("early_stopping_patience needs a validation split: set "
                             "validation_fraction (e.g. 0.05)")
        return cls(**values)

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in d.items()},
                          sort_keys=True)

    def epochs_for(self, train_examples: int) -> int:
        """The number of full passes over `train_examples` ratings (see example_budget)."""
        if self.example_budget <= 0 or train_examples <= 0:
            return self.epochs
        return min(self.epochs, max(1, self.example_budget // train_examples))

    def make_optimizer(self, total_steps: int = 1):
        rate = self.learning_rate
        if self.lr_schedule == "cosine":
            rate = tf.keras.optimizers.schedules.CosineDecay(
                self.learning_rate, decay_steps=max(1, total_steps), alpha=0.05)
        elif self.lr_schedule != "constant":
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r} (constant, cosine)")
        name = self.optimizer.lower()
        if name == "adagrad":
            return tf.keras.optimizers.Adagrad(rate)
        if name == "adam":
            return tf.keras.optimizers.Adam(rate)
        if name == "sgd":
            return tf.keras.optimizers.SGD(rate)
        raise ValueError(f"unknown optimizer {self.optimizer!r} (adam, adagrad, sgd)")


@dataclasses.dataclass(frozen=True)
class Vocab:
    """Input sizes of every categorical transformed feature (vocabulary + OOV buckets)."""

    sizes: Mapping[str, int]

    @classmethod
    def from_tft_output(cls, tft_output) -> "Vocab":
        sizes = {key: tft_output.vocabulary_size_by_name(name) + F.OOV_BUCKETS
                 for key, name in F.VOCABS.items()}
        for key in F.PADDED:  # ids shifted by one for padding
            sizes[key] += 1
        # The number of timestamp buckets is Transform's setting (PipelineConfig's
        # timestamp_buckets): read from the transformed schema (ids 0 .. max), plus one.
        domain = tft_output.transformed_metadata.schema
        buckets = next(f.int_domain.max for f in domain.feature
                       if f.name == F.TIMESTAMP_BUCKET_XF) + 1
        sizes[F.TIMESTAMP_BUCKET_XF] = buckets + 1
        sizes[F.YEAR_BUCKET_XF] = F.YEAR_BUCKETS + 2
        sizes[F.AGE_BUCKET_XF] = len(F.AGE_BOUNDARIES) + 1
        return cls(sizes)


class RatingHead(tf.keras.layers.Layer):
    """Predicts the rating of (query, movie) from the two embeddings (+ biases). With
    rating_tower=separate it has towers of its own (trainer/towers.py: the movie's raters
    too, when rater_history_len > 0) and user and movie biases."""

    def __init__(self, vocab: Vocab, hp: HParams, mean_rating: float, raters=None,
                 name="rating_head"):
        super().__init__(name=name)
        self._separate = hp.rating_tower == "separate"
        if self._separate:
            hp = dataclasses.replace(hp, l2=hp.rating_l2 or hp.l2)
            self.query = query_tower(vocab, hp, name="rating_query_tower")
            self.candidate = candidate_tower(vocab, hp, name="rating_candidate_tower",
                                             raters=raters)
            self.user_bias = TaggedEmbedding(
                vocab.sizes[F.USER_ID_XF], 1, tag=F.USER_ID_XF,
                embeddings_initializer="zeros", name="user_bias")
            self.movie_bias = TaggedEmbedding(
                vocab.sizes[F.MOVIE_ID_XF], 1, tag=F.MOVIE_ID_XF,
                embeddings_initializer="zeros", name="movie_bias")
        self.head = mlp(hp.rating_layers, 1, hp, name=f"{name}_mlp")
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


class RatingModel(tf.keras.layers.Layer):
    """The mean of `rating_heads` independently initialised and trained rating heads (an
    ensemble inside the model: each head learns from its own loss), plus the residual
    neighbourhood's correction (trainer/neighborhood.py), then blended with the
    factorization (trainer/factorization.py), outside training.

    The neighbourhood is a layer of the model from the start (hp's residual_* settings;
    None when they turn it off); it corrects nothing until it is fitted to the heads'
    errors on the training ratings after training (trainer/fit.py's fit_neighborhood).
    It is never part of the loss."""

    def __init__(self, vocab: Vocab, hp: HParams, mean_rating: float, raters=None,
                 neighbors=None, rating_range=None):
        """rating_range: (lowest, highest) training rating, the range predictions are
        clipped to outside training (None: not clipped)."""
        super().__init__(name="rating_model")
        self.rating_range = (None if rating_range is None
                             else tuple(float(r) for r in rating_range))
        count = hp.rating_heads if hp.rating_tower != "shared" else 1
        if hp.rating_tower == "history":
            self.heads = [HistoryRatingHead(vocab, hp, mean_rating, neighbors=neighbors,
                                            name=f"rating_head_{i}")
                          for i in range(count)]
        else:
            self.heads = [RatingHead(vocab, hp, mean_rating, raters, name=f"rating_head_{i}")
                          for i in range(count)]
        self.neighborhood = ResidualNeighborhood.from_hparams(hp)
        self.factorization = FoldedFactorization.from_hparams(hp)

    def factor_rating(self, features, query_embedding, candidate_embedding, training=False):
        """The heads' mean rating, without the neighbourhood's correction."""
        self.members = tf.stack(  # [batch, heads]
            [h(features, query_embedding, candidate_embedding, training=training)
             for h in self.heads], axis=1)
        return tf.reduce_mean(self.members, axis=1)

    def call(self, features, query_embedding, candidate_embedding, training=False):
        rating = self.factor_rating(features, query_embedding, candidate_embedding,
                                    training=training)
        if not training and self.neighborhood is not None and self.neighborhood.fitted:
            rating += self.neighborhood(features)
        mf = self.factorization
        if not training and mf is not None and mf.fitted:
            rating = (1.0 - mf.weight) * rating + mf.weight * mf(features)
        if not training and self.rating_range is not None:  # as a rating can be
            rating = tf.clip_by_value(rating, *self.rating_range)
        return rating


class MovieRecModel(tfrs.Model):
    """Retrieval (a softmax over movies) + rating regression, trained jointly, on examples
    that carry their user's history before their time (trainer/history.py)."""

    def __init__(self, vocab: Vocab, hp: HParams, movie_log_prob=None, mean_rating=3.5,
                 history=None, raters=None, candidates=None, neighbors=None,
                 rating_range=None):
        """history: user_history(...) of the training ratings (None: empty tables), which
        the model stores for serving (`stored_history`: the users' latest ratings);
        raters: the same per movie, users and movies swapped; candidates: the transformed
        movie-level features of every training movie (F.MOVIE_ID_XF and F.MOVIE_LEVEL_XF
        arrays), the full softmax's negatives (None, or more than hp.full_softmax_max
        movies: in-batch negatives); neighbors: each movie's most similar movies for the
        history rating head's kNN term (trainer/asymmetric.py; None: none)."""
        super().__init__()
        self.hp = hp
        self.mean_rating = float(mean_rating)
        if history is None and hp.history_len:
            history = user_history([], [], [], [], vocab.sizes[F.USER_ID_XF], hp.history_len)
        if raters is None and hp.rater_history_len:
            raters = user_history([], [], [], [], vocab.sizes[F.MOVIE_ID_XF],
                                  hp.rater_history_len)
        movies, times, centred = history if hp.history_len else (None, None, None)
        self.stored_history = (StoredHistory(movies, centred, times, name="user_history")
                               if hp.history_len else None)
        self._oov_user = vocab.sizes[F.USER_ID_XF] - 1  # Transform's one OOV bucket
        self.movie_vocab_size = vocab.sizes[F.MOVIE_ID_XF]
        self.query_tower = query_tower(vocab, hp)
        self.candidate_tower = candidate_tower(vocab, hp)
        self.rating_model = RatingModel(vocab, hp, mean_rating, raters=raters,
                                        neighbors=neighbors, rating_range=rating_range)
        self._candidates = None
        if candidates is not None and 0 < len(candidates[F.MOVIE_ID_XF]) <= hp.full_softmax_max:
            ids = np.asarray(candidates[F.MOVIE_ID_XF], dtype=np.int64)
            self._candidates = {k: tf.constant(v) for k, v in candidates.items()}
            column = np.full(vocab.sizes[F.MOVIE_ID_XF] + 1, -1, dtype=np.int64)
            column[ids + 1] = np.arange(len(ids))  # by movie_id_xf + 1 (history ids)
            self._column = tf.constant(column)
        # log P(movie is sampled as an in-batch negative), indexed by movie_id_xf.
        self._log_prob = (None if movie_log_prob is None
                          else tf.constant(movie_log_prob, tf.float32))
        self.retrieval_task = tfrs.tasks.Retrieval(
            temperature=hp.temperature if hp.temperature != 1.0 else None,
            remove_accidental_hits=hp.remove_accidental_hits)
        # per-task losses in the logs (retrieval_loss is summed over the batch, as TFRS does)
        self.retrieval_loss_tracker = tf.keras.metrics.Mean(name="retrieval_loss")
        # Built under a tf.distribute strategy's scope (trainer/distribution.py): each
        # replica computes the loss of its slice of the global batch (_replica_loss).
        self._distributed = tf.distribute.has_strategy()
        if self._distributed:
            # every logged value is the global batch's on each replica (_step_logs): Keras
            # takes the first replica's (its "auto" sums them over workers, metrics too)
            self.distribute_reduction_method = "first"
        self.rating_task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.MeanSquaredError(
                # Keras refuses a batch-mean loss under a strategy: the slice's sum here
                **({"reduction": tf.keras.losses.Reduction.SUM} if self._distributed else {})),
            metrics=[tf.keras.metrics.RootMeanSquaredError(name="rmse")])

    def call(self, features, training=False):
        q = self.query_tower(features, training=training)
        c = self.candidate_tower(features, training=training)
        return q, c, self.rating_model(features, q, c, training=training)

    def _drop_users(self, features):
        """hp.user_dropout of the examples with the out-of-vocabulary user id."""
        user = features[F.USER_ID_XF]
        dropped = tf.random.uniform(tf.shape(user)) < self.hp.user_dropout
        return {**features, F.USER_ID_XF: tf.where(dropped, tf.cast(self._oov_user, user.dtype),
                                                   user)}

    def _full_softmax_loss(self, q, features):
        """Σ over the batch of the softmax cross-entropy over every training movie, the
        example's history movies other than its answer left out of the negatives (a user
        rates a movie once)."""
        catalog = self.candidate_tower(self._candidates, training=True)
        logits = tf.matmul(q, catalog, transpose_b=True)
        if self.hp.temperature != 1.0:
            logits /= self.hp.temperature
        movie = tf.cast(tf.reshape(features[F.MOVIE_ID_XF], [-1]), tf.int64)
        label = tf.gather(self._column, movie + 1)
        if F.HISTORY_IDS_XF in features:
            seen = tf.gather(self._column, tf.cast(features[F.HISTORY_IDS_XF], tf.int64))
            seen = tf.where(tf.equal(seen, label[:, None]), tf.constant(-1, tf.int64), seen)
            hits = rows_mask(seen, tf.shape(logits, out_type=tf.int64)[1])
            logits -= 1e9 * tf.cast(hits, logits.dtype)
        known = label >= 0  # a movie outside the candidates cannot be learned
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.maximum(label, 0), logits)
        return tf.reduce_sum(tf.where(known, losses, 0.0))

    def compute_loss(self, features, training=False):
        if training and self.hp.user_dropout > 0:
            features = self._drop_users(features)
        q, c, rating = self(features, training=training)
        if self._candidates is not None:
            retrieval_loss = self._full_softmax_loss(q, features)
            return self._combine(retrieval_loss, features, rating)
        movie = tf.reshape(features[F.MOVIE_ID_XF], [-1])
        kwargs = {}
        if self.hp.logq_correction and self._log_prob is not None:
            kwargs["candidate_sampling_probability"] = tf.exp(tf.gather(self._log_prob, movie))
        if self.hp.remove_accidental_hits:
            kwargs["candidate_ids"] = movie
        retrieval_loss = self.retrieval_task(q, c, compute_metrics=False, **kwargs)
        return self._combine(retrieval_loss, features, rating)

    def _combine(self, retrieval_loss, features, rating):
        """The weighted sum of the retrieval loss (a sum over the batch) and the rating
        loss."""
        if self._distributed:
            return self._replica_loss(retrieval_loss, features, rating)
        self.retrieval_loss_tracker.update_state(retrieval_loss)
        labels = tf.reshape(features[F.RATING_XF], [-1])
        rating_loss = self.rating_task(labels=labels, predictions=rating)
        if len(self.rating_model.heads) > 1:  # train each head on its own error
            rating_loss = tf.reduce_mean((self.rating_model.members - labels[:, None]) ** 2)
        return (self.hp.retrieval_weight * retrieval_loss
                + self.hp.rating_weight * rating_loss)

    # ------------------------------------------------------- under a tf.distribute strategy
    def _replica_loss(self, retrieval_loss, features, rating):
        """One replica's loss, scaled so that the replicas' losses, and the gradients the
        optimizer sums over them, add up to the global batch's as one device computes it.
        The retrieval loss is already a sum over the replica's slice (TFRS); its in-batch
        negatives are the slice's own candidates (tfrs.tasks.Retrieval gathers nothing
        across replicas), batch_size / replicas of them. The rating loss becomes the
        slice's squared errors over the global batch's count of ratings."""
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        # logged per global batch: the mean over replicas of `replicas` x the slice's sum
        self.retrieval_loss_tracker.update_state(retrieval_loss * replicas)
        labels = tf.reshape(features[F.RATING_XF], [-1])
        count = tf.cast(tf.size(labels), tf.float32)
        if replicas > 1:
            count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
        squared = self.rating_task(labels=labels[:, None], predictions=rating[:, None])
        if len(self.rating_model.heads) > 1:  # train each head on its own error
            squared = (tf.reduce_sum((self.rating_model.members - labels[:, None]) ** 2)
                       / len(self.rating_model.heads))
        rating_loss = tf.math.divide_no_nan(squared, count)
        return (self.hp.retrieval_weight * retrieval_loss
                + self.hp.rating_weight * rating_loss)

    def _regularization(self):
        """The replica's share of the regularization losses (the replicas' gradients are
        summed)."""
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        return tf.add_n(self.losses) / replicas if self.losses else tf.constant(0.0)

    def train_step(self, inputs):
        if not self._distributed:
            return super().train_step(inputs)
        with tf.GradientTape() as tape:
            loss = self.compute_loss(inputs, training=True)
            regularization_loss = self._regularization()
            total_loss = loss + regularization_loss
        gradients = tape.gradient(total_loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return self._step_logs(loss, regularization_loss, total_loss)

    def test_step(self, inputs):
        if not self._distributed:
            return super().test_step(inputs)
        loss = self.compute_loss(inputs, training=False)
        regularization_loss = self._regularization()
        return self._step_logs(loss, regularization_loss, loss + regularization_loss)

    def _step_logs(self, loss, regularization_loss, total_loss):
        """The step's logs, the same on every replica: the metrics (aggregated over the
        replicas by Keras) and the global batch's losses (the replicas' sum)."""
        losses = [loss, regularization_loss, total_loss]
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            losses = context.all_reduce(tf.distribute.ReduceOp.SUM, losses)
        logs = {metric.name: metric.result() for metric in self.metrics}
        logs.update(zip(("loss", "regularization_loss", "total_loss"), losses))
        return logs
