"""`movierec serve` as a real process on a loopback ephemeral port (TF Serving's REST API,
hot reload, a broken new version, bad requests, SIGTERM), and `movierec recommend` / `rate`.

The model is trained on the tiny synthetic data without TFX and saved as version 1 of a
temporary serving base; the tests run in file order against one server process (hot reload
adds versions 2 and 3; the SIGTERM test stops it)."""

import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from pipeline import cli
from trainer import saved_model
from trainer import features as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREDICT = "/v1/models/movierec:predict"
KNOWN_USER = "1"  # the synthetic users are 1..60 and the first one rates plenty


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def model_dir(trained_model):
    return trained_model[0]


@pytest.fixture(scope="module")
def loaded(model_dir):
    return tf.saved_model.load(str(model_dir))


class Server:
    def __init__(self, base, tmp, *args):
        self.ready = tmp / "ready"
        self.log_path = tmp / "server.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "serve", "--model-base", str(base),
             "--port", "0", "--poll-seconds", "0.2", "--ready-file", str(self.ready), *args],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self):
        deadline = time.time() + 120
        while not self.ready.exists():
            assert self.proc.poll() is None, f"server exited: {self.log()}"
            assert time.time() < deadline, f"server did not start: {self.log()}"
            time.sleep(0.1)
        host, port = self.ready.read_text().split()
        assert host == "127.0.0.1"  # loopback by default
        self.port = int(port)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def request(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            if body is not None and not isinstance(body, (bytes, str)):
                body = json.dumps(body)
            conn.request(method, path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        assert response.getheader("content-type", "").startswith("application/json"), data
        return response.status, json.loads(data)

    def get(self, path):
        return self.request("GET", path)

    def predict(self, body, path=PREDICT):
        return self.request("POST", path, body)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def serving_base(tmp_path_factory):
    return tmp_path_factory.mktemp("serving")


@pytest.fixture(scope="module")
def _server_process(serving_base, tmp_path_factory, transform_dir):
    """Started before the model is trained (TensorFlow's import overlaps the training), on
    an empty base: the server waits for a first version."""
    s = Server(serving_base, tmp_path_factory.mktemp("server"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def server(_server_process, model_dir, serving_base):
    shutil.copytree(model_dir, serving_base / "movierec" / "1")
    _server_process.wait_ready()
    _wait_for(lambda: _status(_server_process).get("1", {}).get("state") == "AVAILABLE",
              "version 1 to load")
    return _server_process


def _wait_for(predicate, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _examples(example_files, n=6):
    ds = tf.data.TFRecordDataset(example_files["eval"], compression_type="GZIP").take(n)
    return [r.numpy() for r in ds]


def _feature_dict(serialized: bytes) -> dict:
    """A tf.Example as the plain JSON feature dict the server accepts."""
    example = tf.train.Example.FromString(serialized)
    out = {}
    for f in F.QUERY_FEATURES + F.MOVIE_FEATURES:
        feature = example.features.feature[f.name]
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        values = [v.decode() if isinstance(v, bytes) else v for v in values]
        out[f.name] = values if f.multivalent else values[0]
    return out


# ----------------------------------------------------------------- status and metadata
def test_status_and_metadata(server):
    status, body = server.get("/v1/models/movierec")
    assert status == 200
    assert body == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}}]}
    assert server.get("/v1/models/movierec/versions/1") == (200, body)

    status, meta = server.get("/v1/models/movierec/metadata")
    assert status == 200
    assert meta["model_spec"] == {"name": "movierec", "signature_name": "", "version": "1"}
    sigs = meta["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "recommend", "recommend_at", "rate"} <= set(sigs)
    rec = sigs["recommend"]
    assert rec["method_name"] == "tensorflow/serving/predict"
    assert rec["inputs"]["user_id"]["dtype"] == "DT_STRING"
    assert rec["inputs"]["user_id"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert set(rec["outputs"]) == {"movie_ids", "movie_titles", "scores", "because",
                                   "known_user"}
    assert sigs["recommend_at"]["inputs"]["k"]["dtype"] == "DT_INT64"
    assert set(sigs["serving_default"]["inputs"]) == {"examples"}
    assert server.get("/v1/models/movierec/versions/1/metadata") == (200, meta)


# ------------------------------------------------------------------- the two signatures
def test_recommend_row_and_columnar(server, loaded):
    user = KNOWN_USER
    expected = saved_model.call(loaded, "recommend", user_id=tf.constant([user, "nobody"]))
    ids = [[m.decode() for m in row] for row in expected["movie_ids"].numpy()]

    status, body = server.predict({"signature_name": "recommend",
                                   "instances": [user, "nobody"]})
    assert status == 200, body
    first, second = body["predictions"]
    assert set(first) == {"movie_ids", "movie_titles", "scores", "because", "known_user"}
    assert first["because"] == [b.decode() for b in expected["because"].numpy()[0]]
    assert first["movie_ids"] == ids[0] and second["movie_ids"] == ids[1]
    assert first["known_user"] is True and second["known_user"] is False
    assert all(isinstance(t, str) and t for t in first["movie_titles"])
    np.testing.assert_allclose(first["scores"], expected["scores"].numpy()[0], rtol=1e-5)

    # named instances and TF Serving's b64 form for binary strings
    status, named = server.predict({"signature_name": "recommend", "instances": [
        {"user_id": user}, {"user_id": {"b64": base64.b64encode(b"nobody").decode()}}]})
    assert status == 200 and named == body

    status, cols = server.predict({"signature_name": "recommend",
                                   "inputs": {"user_id": [user, "nobody"]}})
    assert status == 200
    assert cols["outputs"]["movie_ids"] == ids
    assert cols["outputs"]["known_user"] == [True, False]
    # one input: the bare batched value is accepted too
    assert server.predict({"signature_name": "recommend", "inputs": [user, "nobody"]}) == (
        200, cols)


def test_ragged_histories_are_padded_row_and_columnar(server, loaded):
    """Instances with histories of different lengths (row format) and a columnar request
    with ragged lists answer as the model does for each history padded with ""."""
    histories = [(["1"], [5.0], [880000000]), (["2", "3", "4"], [1.0, 4.0, 5.0],
                                               [880000000, 880000100, 880000200])]
    expected = []
    for ids, ratings, stamps in histories:
        out = saved_model.call(loaded, "recommend", user_id=tf.constant(["stranger"]),
                               history_movie_ids=tf.constant([ids]),
                               history_ratings=tf.constant([ratings]),
                               history_timestamps=tf.constant([stamps], tf.int64))
        expected.append([m.decode() for m in out["movie_ids"].numpy()[0]])
    rows = [{"user_id": "stranger", "history_movie_ids": i, "history_ratings": r,
             "history_timestamps": t} for i, r, t in histories]
    status, body = server.predict({"signature_name": "recommend", "instances": rows})
    assert status == 200, body
    assert [p["movie_ids"] for p in body["predictions"]] == expected
    columns = {"user_id": ["stranger", "stranger"],
               "history_movie_ids": [h[0] for h in histories],
               "history_ratings": [h[1] for h in histories],
               "history_timestamps": [h[2] for h in histories]}
    status, body = server.predict({"signature_name": "recommend", "inputs": columns})
    assert status == 200, body
    assert body["outputs"]["movie_ids"] == expected


def test_recommend_at_and_rate(server, loaded):
    user = KNOWN_USER
    status, body = server.predict({"signature_name": "recommend_at", "instances": [
        {"user_id": user, "timestamp": 0, "k": 3}]})
    assert status == 200 and len(body["predictions"][0]["movie_ids"]) == 3
    status, body = server.predict({"signature_name": "rate", "inputs": {
        "user_id": [user, user], "movie_id": ["1", "no-such-movie"]}})
    assert status == 200
    assert body["outputs"]["known_movie"] == [True, False]
    expected = saved_model.call(loaded, "rate", user_id=tf.constant([user]),
                                         movie_id=tf.constant(["1"]),
                                         timestamp=tf.constant([0], tf.int64))
    assert body["outputs"]["rating"][0] == pytest.approx(
        float(expected["rating"].numpy()[0]), rel=1e-5)  # no timestamp: now

    # a timestamp, in either format, is the model's answer at that time
    then = 880_000_000
    at_then = float(saved_model.call(loaded, "rate", user_id=tf.constant([user]), movie_id=tf.constant(["1"]),
        timestamp=tf.constant([then], tf.int64))["rating"].numpy()[0])
    status, rows = server.predict({"signature_name": "rate", "instances": [
        {"user_id": user, "movie_id": "1", "timestamp": then},
        {"user_id": user, "movie_id": "1"}]})
    assert status == 200, rows
    assert rows["predictions"][0]["rating"] == pytest.approx(at_then, rel=1e-5)
    assert rows["predictions"][1]["rating"] == pytest.approx(body["outputs"]["rating"][0],
                                                             rel=1e-5)
    status, cols = server.predict({"signature_name": "rate", "inputs": {
        "user_id": [user], "movie_id": ["1"], "timestamp": [then]}})
    assert status == 200 and cols["outputs"]["rating"][0] == pytest.approx(at_then, rel=1e-5)


def test_serving_default_b64_and_feature_dicts(server, loaded, example_files):
    examples = _examples(example_files)
    expected = loaded.signatures["serving_default"](
        examples=tf.constant(examples))["rating"].numpy()
    b64 = [{"b64": base64.b64encode(e).decode()} for e in examples]

    status, body = server.predict({"instances": b64})  # default signature: serving_default
    assert status == 200, body
    np.testing.assert_allclose(body["predictions"], expected, rtol=1e-5)  # one output: bare

    status, named = server.predict({"signature_name": "serving_default",
                                    "instances": [{"examples": v} for v in b64]})
    assert status == 200 and named == body

    status, cols = server.predict({"inputs": {"examples": b64}})
    assert status == 200
    np.testing.assert_allclose(cols["outputs"], expected, rtol=1e-5)

    # movierec's convenience: raw feature values as a JSON object, row and columnar
    dicts = [_feature_dict(e) for e in examples]
    status, plain = server.predict({"instances": dicts})
    assert status == 200, plain
    np.testing.assert_allclose(plain["predictions"], expected, rtol=1e-5)
    status, plain_cols = server.predict({"inputs": dicts})
    assert status == 200
    np.testing.assert_allclose(plain_cols["outputs"], expected, rtol=1e-5)


def test_concurrent_requests_are_batched_without_mixing_errors(server, loaded,
                                                               example_files):
    """Requests that wait together run as one batch; a bad one must not fail the others
    and every answer must be its own."""
    users = [str(u) for u in range(1, 25)]
    expected = saved_model.call(loaded, "recommend", user_id=tf.constant(users))
    ids = [[m.decode() for m in row] for row in expected["movie_ids"].numpy()]
    good = {"b64": base64.b64encode(_examples(example_files, 1)[0]).decode()}
    results = {}

    def call(i):
        if i % 6 == 5:
            results[i] = server.predict({"instances": [{"b64": "AAAA"}]})  # not an Example
        elif i % 6 == 4:
            results[i] = server.predict({"instances": [good]})
        else:
            results[i] = server.predict({"signature_name": "recommend",
                                         "instances": [users[i]]})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(users))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (status, body) in sorted(results.items()):
        if i % 6 == 5:
            assert status == 400 and "error" in body
        elif i % 6 == 4:
            assert status == 200 and len(body["predictions"]) == 1
        else:
            assert status == 200 and body["predictions"][0]["movie_ids"] == ids[i]


def test_the_benchmarks_load_generator_reads_what_the_server_sends(server, loaded):
    """benchmarks/serving_latency.py's client reads each answer whole, 400s too, on one
    connection: the same bytes as http.client reads. Its load counts the bad requests as
    errors and times only the good ones."""
    from benchmarks import serving_latency as bench

    bodies = [json.dumps({"signature_name": "recommend", "instances": [u]}).encode()
              for u in ("1", "2", "no-such-user")]
    bodies.append(b'{"signature_name": "recommend", "instances": ')  # bad JSON: a 400
    conn = bench.Connection("127.0.0.1", server.port)
    try:
        for body in bodies * 2:  # the connection stays usable after a 400
            got = conn.post(bench.post_request("127.0.0.1", server.port, PREDICT, body))
            reference = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            reference.request("POST", PREDICT, body, {"Content-Type": "application/json"})
            response = reference.getresponse()
            assert got == (response.status, response.read())
            reference.close()
            assert got[0] == (400 if body is bodies[-1] else 200)
    finally:
        conn.close()
    latencies, _, errors = bench.run_load("127.0.0.1", server.port, PREDICT, bodies, 40, 4)
    assert (len(latencies), errors) == (30, 10)


def _history_feeds(user: str, movies: list, stamp: int = 880_000_000) -> dict:
    return {"user_id": np.array([user.encode()], dtype=object),
            "history_movie_ids": np.array([[m.encode() for m in movies]], dtype=object
                                          ).reshape(1, -1),
            "history_ratings": np.array([[5.0 - i % 4 for i in range(len(movies))]],
                                        np.float32).reshape(1, -1),
            "history_timestamps": np.array([[stamp + i for i in range(len(movies))]],
                                           np.int64).reshape(1, -1)}


def test_requests_with_histories_of_any_width_batch_together(model_dir, synth_data):
    """recommend's histories ([batch, L], any L) are padded to the batch's widest: the
    requests share a batch key and each gets what it gets alone."""
    from serving.model import ServedModel

    served = ServedModel.load(str(model_dir), 1, warm_up=False)
    signature = served.signatures["recommend"]
    assert signature.batchable
    assert set(signature.paddable) == {"history_movie_ids", "history_ratings",
                                       "history_timestamps"}
    movies = [m.movie_id for m in synth_data.movies]
    requests = [_history_feeds("stranger", movies[:3]), _history_feeds(KNOWN_USER, []),
                _history_feeds("nobody", movies[10:40]), _history_feeds(KNOWN_USER, movies[5:6])]
    for f in requests:  # the other inputs, as the server fills them
        for name, spec in signature.inputs.items():
            if name not in f:
                f[name] = np.full([1], b"" if spec.dtype == tf.string else 0,
                                  dtype=object if spec.dtype == tf.string
                                  else spec.dtype.as_numpy_dtype)
    assert len({signature.batch_key(f) for f in requests}) == 1
    together = signature.call_batch(requests)
    for f, got in zip(requests, together):
        assert not isinstance(got, Exception), got
        alone = signature.call(f)
        assert set(got) == set(alone)
        for name in ("movie_ids", "because", "known_user"):
            np.testing.assert_array_equal(got[name], alone[name], err_msg=name)
        np.testing.assert_allclose(got["scores"], alone["scores"], rtol=1e-5, atol=1e-6)
    # recommend_at's outputs follow the batch's largest k: never batched
    assert served.signatures["recommend_at"].batch_key(requests[0]) is None


def test_concurrent_requests_with_histories_get_their_own_answers(server, loaded,
                                                                  synth_data):
    movies = [m.movie_id for m in synth_data.movies]
    asks = [(KNOWN_USER if i % 3 == 0 else f"guest{i}", movies[i:i + 2 * i]) for i in range(16)]
    expected = []
    for user, history in asks:
        feeds = _history_feeds(user, history)
        out = saved_model.call(loaded, "recommend", **feeds)
        expected.append(([m.decode() for m in out["movie_ids"].numpy()[0]],
                         [m.decode() for m in out["because"].numpy()[0]]))
    results = {}

    def call(i):
        user, history = asks[i]
        feeds = _history_feeds(user, history)
        instance = {"user_id": user, **{k: v[0].tolist() for k, v in feeds.items()
                                        if k != "user_id"}}
        instance["history_movie_ids"] = [m.decode() for m in instance["history_movie_ids"]]
        results[i] = server.predict({"signature_name": "recommend", "instances": [instance]})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(asks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (status, body) in sorted(results.items()):
        assert status == 200, body
        answer = body["predictions"][0]
        assert (answer["movie_ids"], answer["because"]) == expected[i], i


# --------------------------------------------------------------------------- bad requests
BAD_REQUESTS = [
    ("bad JSON", b'{"instances": [', "invalid JSON"),
    ("not an object", [1, 2], "JSON object"),
    ("unknown signature", {"signature_name": "nope", "instances": ["1"]},
     "unknown signature 'nope'"),
    ("neither instances nor inputs", {"signature_name": "recommend"}, "exactly one of"),
    ("both instances and inputs", {"signature_name": "recommend", "instances": ["1"],
                                   "inputs": ["1"]}, "exactly one of"),
    ("wrong dtype: number for a string", {"signature_name": "recommend", "instances": [42]},
     "expected a string"),
    ("wrong dtype: string for an int", {"signature_name": "recommend_at", "instances": [
        {"user_id": "1", "timestamp": "now", "k": 5}]}, "expected an integer"),
    ("wrong shape: nested", {"signature_name": "recommend", "instances": [["1"]]},
     "rank 0 per instance"),
    ("wrong shape: scalar columnar", {"signature_name": "recommend", "inputs": "1"},
     "shape"),
    ("ragged", {"signature_name": "recommend", "inputs": {"user_id": ["1", ["2"]]}},
     "ragged"),
    ("nested too deeply", b'{"instances": ' + b"[" * 100000 + b"]" * 100000 + b"}",
     "invalid JSON"),
    ("lone surrogate", b'{"signature_name": "recommend", "instances": ["\\ud800"]}',
     "not valid Unicode"),
    ("missing input", {"signature_name": "rate", "instances": [{"user_id": "1"}]},
     "missing input 'movie_id'"),
    ("missing columnar input", {"signature_name": "rate", "inputs": {"user_id": ["1"]}},
     "missing input 'movie_id'"),
    ("unknown input", {"signature_name": "rate", "instances": [
        {"user_id": "1", "movie_id": "1", "extra": 1}]}, "unknown input 'extra'"),
    ("several inputs, bare value", {"signature_name": "rate", "instances": ["1"]},
     "several inputs"),
    ("batch sizes differ", {"signature_name": "rate", "inputs": {
        "user_id": ["1", "2"], "movie_id": ["1"]}}, "different batch sizes"),
    ("empty instances", {"signature_name": "recommend", "instances": []}, "empty"),
    ("k too large", {"signature_name": "recommend_at", "instances": [
        {"user_id": "1", "timestamp": 0, "k": 101}]}, "at most 100"),
    ("bad base64", {"instances": [{"b64": "!!!"}]}, "base64"),
    ("not a tf.Example", {"instances": [{"b64": "AAAA"}]}, "model rejected"),
    ("feature dict missing features", {"instances": [{"user_id": "1"}]}, "is required"),
    ("feature dict unknown feature", {"instances": [{"user_id": "1", "colour": "red"}]},
     "unknown feature 'colour'"),
    ("feature dict wrong type", {"instances": [{"user_id": "1", "movie_year": "old"}]},
     "expected an integer"),
    ("signature_name not a string", {"signature_name": 3, "instances": ["1"]},
     "must be a string"),
    ("history lists differ in length", {"signature_name": "recommend", "instances": [
        {"user_id": "1", "history_movie_ids": ["1", "2"], "history_ratings": [5.0],
         "history_timestamps": [1, 2]}]}, "history lists differ in length"),
    ("history of an unknown movie", {"signature_name": "recommend", "instances": [
        {"user_id": "1", "history_movie_ids": ["no-such"], "history_ratings": [4.0],
         "history_timestamps": [1]}]}, "history_movie_ids[0][0]: unknown movie 'no-such'"),
    ("history rating out of range", {"signature_name": "rate", "inputs": {
        "user_id": ["1"], "movie_id": ["1"], "history_movie_ids": [["1"]],
        "history_ratings": [[9.0]], "history_timestamps": [[1]]}},
     "history_ratings[0][0]: rating 9 outside 0.5..5"),
    ("history too long", {"signature_name": "recommend", "instances": [
        {"user_id": "1", "history_movie_ids": ["1"] * 1001, "history_ratings": [4.0] * 1001,
         "history_timestamps": [1] * 1001}]}, "at most 1000"),
    ("history: unknown movie", {"signature_name": "recommend", "instances": [
        {"user_id": "1", "history_movie_ids": ["1", "2"], "history_ratings": [4, 5],
         "history_timestamps": [1, 2]},
        {"user_id": "1", "history_movie_ids": ["3", "no-such-movie"],
         "history_ratings": [4, 5], "history_timestamps": [1, 2]}]},
     "history_movie_ids[1][1]: unknown movie 'no-such-movie'"),
    ("history: rating outside the range", {"signature_name": "recommend", "instances": [
        {"user_id": "1", "history_movie_ids": ["1", "2"], "history_ratings": [4, 7.5],
         "history_timestamps": [1, 2]}]}, "history_ratings[0][1]: rating 7.5 outside"),
    ("history: a bool for a rating", {"signature_name": "recommend", "instances": [
        {"user_id": "1", "history_movie_ids": ["1", "2"], "history_ratings": [4.0, True],
         "history_timestamps": [1, 2]}]}, "expected a number, got True"),
    ("history: a string for a timestamp", {"signature_name": "recommend", "instances": [
        {"user_id": "1", "history_movie_ids": ["1"], "history_ratings": [4],
         "history_timestamps": ["1"]}]}, "expected an integer, got '1'"),
    ("history: lists of different lengths", {"signature_name": "recommend", "instances": [
        {"user_id": "1", "history_movie_ids": ["1", "2"], "history_ratings": [4],
         "history_timestamps": [1, 2]}]}, "differ in length"),
]


@pytest.mark.parametrize("body,message", [(b, m) for _, b, m in BAD_REQUESTS],
                         ids=[name for name, _, _ in BAD_REQUESTS])
def test_bad_request_is_400_with_a_json_error(server, body, message):
    status, answer = server.predict(body)
    assert status == 400, answer
    assert set(answer) == {"error"} and message in answer["error"], answer


def test_unknown_paths_models_versions_and_methods(server):
    assert server.get("/v1/models/other")[0] == 404
    assert server.predict({"instances": ["1"]}, "/v1/models/other:predict")[0] == 404
    assert server.get("/v1/models/movierec/versions/7")[0] == 404
    assert server.predict({"instances": ["1"]},
                          "/v1/models/movierec/versions/7:predict")[0] == 404
    assert server.get("/nothing/here")[0] == 404
    assert server.get(PREDICT)[0] == 405
    assert "Traceback" not in server.log()


# ------------------------------------------------------------- new versions, broken ones
def _status(server):
    code, body = server.get("/v1/models/movierec")
    return {s["version"]: s for s in body["model_version_status"]} if code == 200 else {}


def test_hot_reload_then_a_broken_version_keeps_the_old_one(server, serving_base):
    models = serving_base / "movierec"
    shutil.copytree(models / "1", models / "2")
    _wait_for(lambda: _status(server).get("2", {}).get("state") == "AVAILABLE",
              "version 2 to load")
    assert _status(server)["1"]["state"] == "END"
    status, meta = server.get("/v1/models/movierec/metadata")
    assert meta["model_spec"]["version"] == "2"
    request = {"signature_name": "recommend", "instances": ["1"]}
    assert server.predict(request, "/v1/models/movierec/versions/2:predict")[0] == 200
    assert server.predict(request, "/v1/models/movierec/versions/1:predict")[0] == 404

    broken = models / "3"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    state = _wait_for(lambda: _status(server).get("3", {}).get("state") == "END"
                      and _status(server)["3"], "version 3 to fail")
    assert state["status"]["error_code"] != "OK"
    assert "version 3" in state["status"]["error_message"]
    assert _status(server)["2"]["state"] == "AVAILABLE"
    status, body = server.predict(request)
    assert status == 200 and body["predictions"][0]["movie_ids"]
    assert server.get("/v1/models/movierec/metadata")[1]["model_spec"]["version"] == "2"
    assert "version 3 failed to load (still serving version 2)" in server.log()


def test_sigterm_shuts_down_cleanly(server):
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    assert "stopped" in server.log()


# ---------------------------------------------------------------------------- --workers
def _worker_pids(server) -> list:
    """The pids of the workers that said they are serving, in the order they did."""
    import re

    return [int(p) for p in re.findall(r"movierec\.serve\[(\d+)\]: serving movierec at",
                                       server.log())]


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is not alive
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_workers_share_the_port_a_dead_one_is_replaced_and_sigterm_stops_all(
        model_dir, loaded, tmp_path):
    base = tmp_path / "serving"
    shutil.copytree(model_dir, base / "movierec" / "1")
    server = Server(base, tmp_path, "--workers", "2")
    try:
        server.wait_ready()  # once both workers listen
        first = _worker_pids(server)
        assert len(set(first)) == 2 and server.proc.pid not in first, server.log()
        for pid in first:  # the supervisor's children
            with open(f"/proc/{pid}/stat") as f:
                assert int(f.read().rsplit(")", 1)[1].split()[1]) == server.proc.pid
        expected = saved_model.call(loaded, "recommend", user_id=tf.constant(["1"]))
        request = {"signature_name": "recommend", "instances": ["1"]}
        for _ in range(6):  # new connections, whichever worker takes each
            status, body = server.predict(request)
            assert status == 200, body
            assert body["predictions"][0]["movie_ids"] == [
                m.decode() for m in expected["movie_ids"].numpy()[0]]

        os.kill(first[0], signal.SIGKILL)
        replaced = _wait_for(lambda: len(_worker_pids(server)) == 3 and _worker_pids(server),
                             "the dead worker to be replaced")
        assert "exited with -9: starting it again" in server.log()
        assert replaced[2] not in first and _alive(first[1])
        assert server.predict(request)[0] == 200

        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0, server.log()
        assert not any(_alive(pid) for pid in replaced[1:])
        assert server.log().rstrip().endswith("stopped")
    finally:
        for pid in _worker_pids(server):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        server.stop()


def _children(pid) -> list:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def test_a_worker_that_dies_before_it_serves_stops_the_server(model_dir, tmp_path):
    """A worker killed while it loads its first version (as the OOM killer would): the
    supervisor does not start it again, stops the other one and exits 1; it never says
    it is ready."""
    base = tmp_path / "serving"
    shutil.copytree(model_dir, base / "movierec" / "1")
    server = Server(base, tmp_path, "--workers", "2")
    try:
        workers = _wait_for(lambda: len(_children(server.proc.pid)) == 2
                            and _children(server.proc.pid), "the two workers to start")
        os.kill(workers[0], signal.SIGKILL)  # seconds before it could load TensorFlow
        assert server.proc.wait(timeout=60) == 1, server.log()
        log = server.log()
        assert f"(pid {workers[0]}) exited with -9 before it answered: stopping the " \
               f"server" in log, log
        assert "starting it again" not in log and "serving movierec at" not in log
        assert not server.ready.exists()
        assert not _alive(workers[1])
    finally:
        for pid in _children(server.proc.pid) if server.proc.poll() is None else []:
            os.kill(pid, signal.SIGKILL)
        server.stop()


# ------------------------------------------------------------------ recommend and rate CLI
@pytest.fixture
def cached_loads(monkeypatch, model_dir, loaded):
    """The CLI loads its model each time; here the test's model comes from memory (other
    paths, e.g. broken versions, load for real)."""
    real = tf.saved_model.load

    def load(path, *args, **kwargs):
        if os.path.realpath(path) == os.path.realpath(model_dir):
            return loaded
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tf.saved_model, "load", load)


def _cli(capsys, *argv):
    capsys.readouterr()
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err.strip()


def test_recommend_command(capsys, tmp_path, model_dir, loaded, cached_loads):
    base = tmp_path / "movierec"
    shutil.copytree(model_dir, base / "1")
    (base / "2").mkdir()
    (base / "2" / "saved_model.pb").write_bytes(b"broken")
    rc, out, err = _cli(capsys, "recommend", "--model", str(base), "--user", "1", "-k", "5",
                        "--json")
    assert rc == 0, err
    assert "version 2" in err and "using" in err  # the newest version that loads
    answer = json.loads(out)
    expected = saved_model.call(loaded, "recommend", user_id=tf.constant(["1"]))
    assert answer["known_user"] is True and answer["user_id"] == "1"
    assert answer["model"] == str(base / "1")
    assert [r["movie_id"] for r in answer["recommendations"]] == [
        m.decode() for m in expected["movie_ids"].numpy()[0][:5]]
    # a known user's history explains each one
    assert [r["because"] for r in answer["recommendations"]] == [
        m.decode() for m in expected["because"].numpy()[0][:5]]
    assert all(r["because"] for r in answer["recommendations"])

    rc, out, _ = _cli(capsys, "recommend", "--model", str(model_dir), "--user", "1")
    assert rc == 0 and "top 10 movies for user 1" in out
    assert len(out.strip().splitlines()) == 12  # heading, column names, 10 rows

    rc, out, _ = _cli(capsys, "recommend", "--model", str(model_dir), "--user", "stranger")
    assert rc == 0 and "unknown to the model" in out and "no history (see --rated)" in out

    rc, _, err = _cli(capsys, "recommend", "--model", str(model_dir), "--user", "1",
                      "-k", "101")
    assert rc == 2 and err == "movierec: error: -k must be 1..100, got 101"


def test_rate_command(capsys, model_dir, synth_data, loaded, cached_loads):
    model = str(model_dir)
    movie = synth_data.movies[16]  # id "17", title "<words> 17 (<year>)"
    expected = float(saved_model.call(loaded, "rate", user_id=tf.constant(["1"]), movie_id=tf.constant([movie.movie_id]),
        timestamp=tf.constant([0], tf.int64))["rating"][0])

    for query in (movie.movie_id, movie.title.upper(), f" {movie.movie_id} ("):
        rc, out, err = _cli(capsys, "rate", "--model", model, "--user", "1", "--movie",
                            query, "--json")
        assert rc == 0, err
        answer = json.loads(out)
        assert answer["movie_id"] == movie.movie_id and answer["title"] == movie.title
        assert answer["rating"] == pytest.approx(expected, abs=1e-3)

    rc, out, _ = _cli(capsys, "rate", "--model", model, "--user", "1", "--movie",
                      movie.movie_id)
    assert rc == 0 and f"{movie.title} (movie {movie.movie_id}): {expected:.2f}" in out

    then = 880_000_000
    at_then = float(saved_model.call(loaded, "rate", user_id=tf.constant(["1"]), movie_id=tf.constant([movie.movie_id]),
        timestamp=tf.constant([then], tf.int64))["rating"][0])
    rc, out, err = _cli(capsys, "rate", "--model", model, "--user", "1", "--movie",
                        movie.movie_id, "--at", str(then), "--json")
    assert rc == 0, err
    assert json.loads(out)["rating"] == pytest.approx(at_then, abs=1e-3)

    rc, _, err = _cli(capsys, "rate", "--model", model, "--user", "1", "--movie", "(19")
    assert rc == 2 and len(err.splitlines()) == 1 and "matches" in err
    rc, _, err = _cli(capsys, "rate", "--model", model, "--user", "1", "--movie",
                      "no such film")
    assert rc == 2 and err == "movierec: error: no movie with id or title 'no such film'"


@pytest.mark.parametrize("flag, value, message", [
    ("--workers", "0", "--workers must be at least 1"),
    ("--tf-threads", "-1", "--tf-threads must be 0 (one per core) or more"),
])
def test_bad_serve_flags_are_one_line(capsys, tmp_path, flag, value, message):
    rc, out, err = _cli(capsys, "serve", "--model-base", str(tmp_path), flag, value)
    assert rc != 0 and message in err and len(err.splitlines()) == 1, err
