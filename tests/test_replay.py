"""The replay protocol (trainer/replay.py) and its anchors (trainer/anchors.py) on tiny
hand-built ratings: histories, top-K, filtered top-K and RMSE against hand-computed values,
and each anchor against a slow, obvious re-implementation."""

import math

import numpy as np
import pytest

from trainer import anchors as A
from trainer import metrics as M
from trainer import replay as R

# (user, movie, rating, timestamp), not in time order. User c appears only in the held-out
# part; two ratings share the cutoff time 60 and three share the time 70.
RATINGS = [
    ("b", "m5", 3, 80),
    ("a", "m1", 5, 10),
    ("b", "m1", 4, 10),
    ("a", "m2", 3, 20),
    ("b", "m3", 2, 30),
    ("a", "m3", 1, 60),
    ("a", "m4", 4, 40),
    ("c", "m1", 4, 60),
    ("b", "m2", 5, 50),
    ("a", "m5", 5, 70),
    ("c", "m4", 3, 70),
    ("c", "m2", 2, 70),
]
CATALOG = np.array(["m1", "m2", "m3", "m4", "m5", "m6"])  # m6: never rated


def all_ratings() -> R.Ratings:
    return R.Ratings.of(*zip(*RATINGS))


@pytest.fixture()
def split():
    ratings = all_ratings()
    cutoff = R.time_cutoff(ratings.timestamp, 0.4)
    return (cutoff, *ratings.split(cutoff))


@pytest.fixture()
def requests(split):
    _, train, held_out = split
    return R.requests(train, held_out, CATALOG)


def test_cutoff_holds_out_the_newest_ratings_with_ties_at_the_cutoff(split):
    cutoff, train, held_out = split
    # 12 ratings, 40% held out: sorted times [10 10 20 30 40 50 60 60 70 70 70 80],
    # position int(12 * 0.6) = 7 -> 60; both ratings at 60 are held out.
    assert cutoff == 60
    assert sorted(train.timestamp.tolist()) == [10, 10, 20, 30, 40, 50]
    assert sorted(held_out.timestamp.tolist()) == [60, 60, 70, 70, 70, 80]
    assert R.time_cutoff([5], 0.2) == 5 and R.time_cutoff([1, 2, 3, 4, 5], 0.2) == 5


def test_requests_in_time_order_know_exactly_the_earlier_ratings(requests):
    got = [(u, m, t, [(h_m, int(h_t)) for h_m, h_t in zip(h.movie, h.timestamp)])
           for u, m, t, h in zip(requests.user, requests.movie, requests.timestamp,
                                 (requests.history(i) for i in range(len(requests))))]
    assert got == [
        ("a", "m3", 60, [("m1", 10), ("m2", 20), ("m4", 40)]),
        ("c", "m1", 60, []),  # only in the held-out part: nothing before its first rating
        ("a", "m5", 70, [("m1", 10), ("m2", 20), ("m4", 40), ("m3", 60)]),  # replayed m3
        ("c", "m4", 70, [("m1", 60)]),  # not m2 at the same time 70
        ("c", "m2", 70, [("m1", 60)]),  # not m4 at the same time 70
        ("b", "m5", 80, [("m1", 10), ("m3", 30), ("m2", 50)]),
    ]
    assert requests.column.tolist() == [2, 0, 4, 3, 1, 4]
    assert requests.history_length.tolist() == [3, 0, 4, 1, 1, 3]
    matrix = requests.history_matrix(requests.known.rating)
    assert matrix[2].tolist() == [5, 3, 1, 4, 0, 0]  # a at 70: m1 5, m2 3, m3 1, m4 4
    assert matrix[1].tolist() == [0] * 6


def test_histories_match_a_slow_loop_across_batches(requests):
    rows, at = requests.history_entries()
    for i in range(len(requests)):
        slow = sorted((t, m) for u, m, _, t in RATINGS
                      if u == requests.user[i] and t < requests.timestamp[i])
        h = requests.history(i)
        assert sorted(zip(h.timestamp.tolist(), h.movie.tolist())) == slow
        assert requests.known.movie[at[rows == i]].tolist() == h.movie.tolist()
    for begin, batch in zip(range(0, 6, 4), requests.batches(4)):
        for j in range(len(batch)):
            assert (batch.history(j).movie.tolist()
                    == requests.history(begin + j).movie.tolist())


# A hand-written scorer: the same scores for every request, m1 > m6 > m2 > m3 > m4 > m5,
# and the rating 3 for all.
FIXED = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 5.5])


def fixed_scorer(batch):
    return np.tile(FIXED, (len(batch), 1)), np.full(len(batch), 3.0)


def test_top_k_filtered_top_k_and_rmse_of_a_hand_written_scorer(requests):
    metrics = R.evaluate(requests, fixed_scorer, batch_size=4)  # two batches
    # answers m3 m1 m5 m4 m2 m5 -> ranks 3 0 5 4 2 5
    ranks = np.array([3, 0, 5, 4, 2, 5])
    # history removed (never the answer): a@60 {m1 m2 m4} m3 above: m6 -> 1; c@60 {} m1 0;
    # a@70 {m1 m2 m4 m3} m5: m6 -> 1; c@70 {m1} m4: m6 m2 m3 -> 3; c@70 {m1} m2: m6 -> 1;
    # b@80 {m1 m3 m2} m5: m6 m4 -> 2
    filtered = np.array([1, 0, 1, 3, 1, 2])
    assert metrics["top_1_accuracy"] == pytest.approx(1 / 6)
    assert metrics["top_5_accuracy"] == pytest.approx(4 / 6)
    assert metrics["top_10_accuracy"] == 1.0 and metrics["top_100_accuracy"] == 1.0
    assert metrics["filtered_top_1_accuracy"] == pytest.approx(1 / 6)
    assert metrics["filtered_top_5_accuracy"] == 1.0
    assert metrics["mrr"] == pytest.approx(np.mean(1 / (ranks + 1)))
    assert metrics["filtered_mrr"] == pytest.approx(np.mean(1 / (filtered + 1)))
    # true ratings 1 4 5 3 2 3 against 3
    assert metrics["rmse"] == pytest.approx(math.sqrt((4 + 1 + 4 + 0 + 1 + 0) / 6))
    assert metrics["requests"] == 6 and metrics["rating_examples"] == 6
    assert {f"top_{k}_accuracy" for k in M.TOP_KS} <= set(metrics)
    assert {f"filtered_top_{k}_accuracy" for k in M.TOP_KS} <= set(metrics)


def test_a_movie_outside_the_catalog_is_never_found(split):
    _, train, held_out = split
    requests = R.requests(train, held_out, CATALOG[CATALOG != "m5"])
    assert requests.column.tolist() == [2, 0, -1, 3, 1, -1]
    metrics = R.evaluate(requests, lambda b: (np.zeros([len(b), 5]), None))
    assert metrics["top_100_accuracy"] == pytest.approx(4 / 6)  # ties: rank 0 for the rest
    assert "rmse" not in metrics
    assert M.ranks(np.zeros([2, 5]), np.array([-1, 4])).tolist() == [M.NOT_FOUND, 0]


# --- anchors against slow loops -----------------------------------------------------------
def slow_rank(scores: dict, answer: str, hidden=()) -> int:
    return sum(1 for m, s in scores.items() if m not in hidden and m != answer
               and s > scores[answer])


def slow_top_k(requests, score_of) -> dict:
    """top_K and filtered top_K from per-request {movie: score} dicts, one at a time."""
    ranks, filtered = [], []
    for i in range(len(requests)):
        scores = score_of(i)
        history = set(requests.history(i).movie.tolist())
        ranks.append(slow_rank(scores, requests.movie[i]))
        filtered.append(slow_rank(scores, requests.movie[i], history))
    out = {f"top_{k}_accuracy": np.mean(np.array(ranks) < k) for k in M.TOP_KS}
    out.update({f"filtered_top_{k}_accuracy": np.mean(np.array(filtered) < k)
                for k in M.TOP_KS})
    return out


def assert_close(metrics, expected):
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key


def test_most_popular_against_a_slow_loop(split, requests):
    _, train, _ = split
    counts = {m: sum(1 for tm in train.movie if tm == m) for m in CATALOG}
    assert counts == {"m1": 2, "m2": 2, "m3": 1, "m4": 1, "m5": 0, "m6": 0}
    metrics = R.evaluate(requests, A.most_popular(train, CATALOG), batch_size=4)
    assert_close(metrics, slow_top_k(requests, lambda i: counts))
    mean = sum(train.rating) / len(train)
    assert metrics["rmse"] == pytest.approx(
        math.sqrt(sum((r - mean) ** 2 for r in requests.rating) / len(requests)))


def test_ease_against_per_column_ridge_regressions(split, requests):
    _, train, _ = split
    lam = 0.5
    users = sorted(set(train.user.tolist()))
    x = np.array([[1.0 if any(u == tu and m == tm for tu, tm in zip(train.user, train.movie))
                   else 0.0 for m in CATALOG] for u in users])
    # EASE's B column j = the ridge regression of movie j on every other movie (diag 0).
    n = len(CATALOG)
    b = np.zeros([n, n])
    for j in range(n):
        others = [i for i in range(n) if i != j]
        xo = x[:, others]
        b[others, j] = np.linalg.solve(xo.T @ xo + lam * np.eye(n - 1), xo.T @ x[:, j])
    np.testing.assert_allclose(A.ease_weights(train, CATALOG, lam), b, atol=1e-9)
    counts = {m: float(sum(1 for tm in train.movie if tm == m)) for m in CATALOG}

    def score_of(i):
        history = set(requests.history(i).movie.tolist())
        if not history:
            return counts  # no history: the most-popular list
        return {m: sum(b[k, j] for k, h in enumerate(CATALOG) if h in history)
                for j, m in enumerate(CATALOG)}

    metrics = R.evaluate(requests, A.ease(train, CATALOG, lam), batch_size=4)
    assert_close(metrics, slow_top_k(requests, score_of))
    assert "rmse" not in metrics


def slow_baseline(train, movie_reg, user_reg):
    mean = sum(train.rating) / len(train)
    movie_bias = {}
    for m in CATALOG:
        rs = [r for tm, r in zip(train.movie, train.rating) if tm == m]
        movie_bias[m] = sum(r - mean for r in rs) / (movie_reg + len(rs))

    def user_bias(pairs):
        return sum(r - mean - movie_bias[m] for m, r in pairs) / (user_reg + len(pairs))

    return mean, movie_bias, user_bias


def clipped(train, p):
    """p clipped to the training ratings' range, as every anchor's rating is."""
    return min(max(train.rating), max(min(train.rating), p))


def test_bias_anchors_against_a_slow_loop(split, requests):
    _, train, _ = split
    mean, movie_bias, user_bias = slow_baseline(train, 2.0, 3.0)
    baseline = A.biases(train, CATALOG, movie_reg=2.0, user_reg=3.0)
    plain, with_user = [], []
    for i in range(len(requests)):
        h = requests.history(i)
        p = mean + movie_bias[requests.movie[i]]
        plain.append(clipped(train, p))
        with_user.append(clipped(train, p + user_bias(list(zip(h.movie, h.rating)))))
    for scorer, predicted in ((baseline.scorer(with_user=False), plain),
                              (baseline.scorer(with_user=True), with_user)):
        metrics = R.evaluate(requests, scorer, batch_size=4)
        expected = math.sqrt(np.mean((np.array(predicted) - requests.rating) ** 2))
        assert metrics["rmse"] == pytest.approx(expected)
        assert "top_10_accuracy" not in metrics


def test_item_knn_against_a_slow_loop(split, requests):
    _, train, _ = split
    movie_reg, user_reg, shrinkage, k, reg = 2.0, 3.0, 1.0, 2, 1.0
    mean, movie_bias, user_bias = slow_baseline(train, movie_reg, user_reg)
    rated = {}
    for u, m, r in zip(train.user, train.movie, train.rating):
        rated.setdefault(u, {})[m] = r
    residual = {u: {m: r - mean - movie_bias[m] - user_bias(list(ms.items()))
                    for m, r in ms.items()} for u, ms in rated.items()}

    def similarity(i, j):
        common = [u for u in residual if i in residual[u] and j in residual[u]]
        num = sum(residual[u][i] * residual[u][j] for u in common)
        den = math.sqrt(sum(residual[u][i] ** 2 for u in common)
                        * sum(residual[u][j] ** 2 for u in common))
        return 0.0 if den == 0 else num / den * len(common) / (len(common) + shrinkage)

    predicted = []
    for i in range(len(requests)):
        h = requests.history(i)
        pairs = list(zip(h.movie, h.rating))
        bu = user_bias(pairs)
        target = requests.movie[i]
        neighbours = sorted(((similarity(target, m), r - mean - movie_bias[m] - bu)
                             for m, r in pairs), reverse=True)[:k]
        positive = [(s, d) for s, d in neighbours if s > 0]
        total = sum(s for s, _ in positive)
        knn = sum(s * d for s, d in positive) / (total + reg) if positive else 0.0
        predicted.append(clipped(train, mean + movie_bias[target] + bu + knn))
    baseline = A.biases(train, CATALOG, movie_reg=movie_reg, user_reg=user_reg)
    scorer = A.item_knn(train, CATALOG, baseline, k=k, shrinkage=shrinkage,
                        denominator_reg=reg)
    _, got = scorer(requests)
    np.testing.assert_allclose(got, predicted, rtol=1e-5)
    assert any(p != b for p, b in zip(
        predicted, baseline.scorer(with_user=True)(requests)[1]))  # the kNN term moved it


def test_example_gen_splits_by_the_same_cutoff(ml100k_dir):
    from components.movielens_example_gen import executor, movielens, splits
    from trainer import features as F

    layout = movielens.detect_layout(ml100k_dir)
    rows = list(movielens.iter_ratings(ml100k_dir, layout))
    ratings = R.Ratings.of([r.user_id for r in rows], [r.movie_id for r in rows],
                           [r.rating for r in rows], [r.timestamp for r in rows])
    cutoff = executor.time_cutoff(ml100k_dir, layout, 0.2)
    assert cutoff == R.time_cutoff(ratings.timestamp, 0.2)
    _, held_out = ratings.split(cutoff)
    example_gen = [executor.split_of(r, None, splits.TIME, 0, 0.2, cutoff) for r in rows]
    assert example_gen.count(F.EVAL_SPLIT) == len(held_out) > 0
    assert [s == F.EVAL_SPLIT for s in example_gen] == R.is_held_out(ratings.timestamp,
                                                               cutoff).tolist()
