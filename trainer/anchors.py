"""The replay protocol's anchors (issue 13): simple models any movierec must beat, each
fitted on the training ratings and answering trainer/replay.py's requests as a scorer.

- `most_popular`: the training counts as every request's scores; the global mean of the
  training ratings as its rating.
- `ease`: EASE (Steck 2019, "Embarrassingly Shallow Autoencoders"), B = I - P diag(1/diag P)
  with P = (XᵀX + λI)⁻¹, X the binary training user x movie matrix; a request scores
  h·B, h the binary vector of its history's movies; a request with no history gets the
  most-popular scores (h·B = 0 would tie every movie, and ties count in the answer's
  favour: rank 0). Retrieval only.
- `biases` (`Baseline`): global mean + movie biases b_m = Σ(r - μ) / (movie_reg + n_m) on
  the training ratings; `Baseline.scorer(with_user=True)` adds the user bias of the
  request's history, b_u = Σ(r - μ - b_m) / (user_reg + n) over it. Ratings only.
- `item_knn`: the baseline with the user bias, plus an item-kNN on baseline residuals of the
  request's history: among the history's movies, the k most similar to the requested one
  with a positive similarity s, their residuals d (r - μ - b_m - b_u) weighted as
  Σ s·d / (Σ s + KNN_DENOMINATOR_REG): Surprise's KNNBaseline's Σ s·d / Σ s, with 1 added
  to the denominator so that a few weakly similar neighbours (shrunk similarities are
  mostly under 0.1) do not carry their full residual (RMSE 0.977 without it, 0.958 with).
  Similarity: Pearson correlation of the training residuals (r - μ - b_m - b_u, b_u over
  the user's training ratings) over the users who rated both, shrunk by n / (n + shrinkage)
  (n = those users; Koren 2008's shrinkage, 100 by default). Ratings only.

Every predicted rating is clipped to the training ratings' range. Dense catalog x catalog
matrices (EASE, kNN): fine for ML-100K / 1M / ml-latest-small, not for ml-25m's 62,000
movies. numpy and trainer/ only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from trainer import replay as R

EASE_LAMBDA = 300.0
MOVIE_REG = 25.0
USER_REG = 10.0
KNN_K = 30
KNN_SHRINKAGE = 100.0
KNN_DENOMINATOR_REG = 1.0


def _columns(train: R.Ratings, catalog: np.ndarray):
    """(rows of the train users, catalog columns, users) of the ratings of catalog movies."""
    users, rows = np.unique(train.user, return_inverse=True)
    columns = R.lookup(catalog, train.movie)
    keep = columns >= 0
    return rows[keep], columns[keep], keep, len(users)


def popularity(train: R.Ratings, catalog) -> np.ndarray:
    """Training ratings per catalog column."""
    _, columns, _, _ = _columns(train, np.asarray(catalog))
    return np.bincount(columns, minlength=len(catalog)).astype(np.float64)


def most_popular(train: R.Ratings, catalog) -> R.Scorer:
    catalog = np.asarray(catalog)
    counts = popularity(train, catalog)
    mean = float(np.mean(train.rating))

    def score(batch: R.Requests):
        return np.broadcast_to(counts, (len(batch), len(catalog))), np.full(len(batch), mean)

    return score


def ease_weights(train: R.Ratings, catalog, lam: float = EASE_LAMBDA) -> np.ndarray:
    """EASE's [catalog, catalog] item-item weights B (zero diagonal)."""
    catalog = np.asarray(catalog)
    rows, columns, _, n_users = _columns(train, catalog)
    x = np.zeros([n_users, len(catalog)])
    x[rows, columns] = 1.0
    gram = x.T @ x
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices_from(b)] = 0.0
    return b


def ease(train: R.Ratings, catalog, lam: float = EASE_LAMBDA) -> R.Scorer:
    b = ease_weights(train, catalog, lam).astype(np.float32)
    counts = popularity(train, catalog).astype(np.float32)

    def score(batch: R.Requests):
        scores = batch.history_matrix() @ b
        scores[batch.history_length == 0] = counts
        return scores, None

    return score


def _bias(rows: np.ndarray, residuals: np.ndarray, n: int, reg: float) -> np.ndarray:
    """Σ residuals / (reg + count) per row id in 0..n-1."""
    return np.bincount(rows, residuals, minlength=n) / (reg + np.bincount(rows, minlength=n))


@dataclasses.dataclass(frozen=True)
class Baseline:
    """Global mean + movie biases (per catalog column), and how to shrink user biases."""

    mean: float
    movie_bias: np.ndarray
    user_reg: float
    low: float
    high: float

    def movie_term(self, columns: np.ndarray) -> np.ndarray:
        """μ + b_m per catalog column (-1, a movie outside the catalog: μ)."""
        return self.mean + np.where(columns >= 0, self.movie_bias[np.maximum(columns, 0)], 0.0)

    def user_bias(self, rows: np.ndarray, columns: np.ndarray, ratings: np.ndarray,
                  n: int) -> np.ndarray:
        """b_u per row id 0..n-1 from (row, column, rating) triples."""
        return _bias(rows, ratings - self.movie_term(columns), n, self.user_reg)

    def history_user_bias(self, batch: R.Requests) -> np.ndarray:
        rows, at = batch.history_entries()
        k = batch.known
        return self.user_bias(rows, k.column[at], k.rating[at], len(batch))

    def clip(self, predicted: np.ndarray) -> np.ndarray:
        return np.clip(predicted, self.low, self.high)

    def scorer(self, with_user: bool) -> R.Scorer:
        def score(batch: R.Requests):
            predicted = self.movie_term(batch.column)
            if with_user:
                predicted = predicted + self.history_user_bias(batch)
            return None, self.clip(predicted)

        return score


def biases(train: R.Ratings, catalog, movie_reg: float = MOVIE_REG,
           user_reg: float = USER_REG) -> Baseline:
    catalog = np.asarray(catalog)
    mean = float(np.mean(train.rating))
    columns = R.lookup(catalog, train.movie)
    keep = columns >= 0
    movie_bias = _bias(columns[keep], train.rating[keep] - mean, len(catalog), movie_reg)
    return Baseline(mean, movie_bias, user_reg, float(np.min(train.rating)),
                    float(np.max(train.rating)))


def shrunk_pearson(train: R.Ratings, catalog, baseline: Baseline,
                   shrinkage: float = KNN_SHRINKAGE) -> np.ndarray:
    """[catalog, catalog] similarities of the training residuals (zero diagonal)."""
    catalog = np.asarray(catalog)
    rows, columns, keep, n_users = _columns(train, catalog)
    ratings = train.rating[keep]
    user_bias = baseline.user_bias(rows, columns, ratings, n_users)
    residual = ratings - baseline.movie_term(columns) - user_bias[rows]
    e = np.zeros([n_users, len(catalog)])
    rated = np.zeros([n_users, len(catalog)])
    e[rows, columns] = residual
    rated[rows, columns] = 1.0
    products = e.T @ e
    squares = (e * e).T @ rated  # [i, j]: Σ e_ui² over the users who rated i and j
    common = rated.T @ rated
    denominator = np.sqrt(squares * squares.T)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(denominator > 0, products / denominator, 0.0)
    similarity = rho * common / (common + shrinkage)
    similarity[np.diag_indices_from(similarity)] = 0.0
    return similarity


def item_knn(train: R.Ratings, catalog, baseline: Baseline, k: int = KNN_K,
             shrinkage: float = KNN_SHRINKAGE,
             denominator_reg: float = KNN_DENOMINATOR_REG) -> R.Scorer:
    similarity = shrunk_pearson(train, catalog, baseline, shrinkage).astype(np.float32)

    def score(batch: R.Requests):
        user_bias = baseline.history_user_bias(batch)
        predicted = baseline.movie_term(batch.column) + user_bias
        rows, at = batch.history_entries()
        kn = batch.known
        residual = kn.rating[at] - baseline.movie_term(kn.column[at]) - user_bias[rows]
        inside = kn.column[at] >= 0
        residuals = np.zeros([len(batch), len(catalog)], np.float32)
        rated = np.zeros([len(batch), len(catalog)], bool)
        residuals[rows[inside], kn.column[at][inside]] = residual[inside]
        rated[rows[inside], kn.column[at][inside]] = True
        sims = np.where(rated, similarity[np.maximum(batch.column, 0)], -np.inf)
        sims[batch.column < 0] = -np.inf
        if len(catalog) > k:
            nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            nearest = np.broadcast_to(np.arange(len(catalog)), (len(batch), len(catalog)))
        s = np.take_along_axis(sims, nearest, axis=1)
        d = np.take_along_axis(residuals, nearest, axis=1)
        s = np.where(s > 0, s, 0.0)
        total = s.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            knn = np.where(total > 0, (s * d).sum(axis=1) / (total + denominator_reg), 0.0)
        return None, baseline.clip(predicted + knn)

    return score
