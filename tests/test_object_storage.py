"""Object storage end to end: the data directory, the pipeline root and the serving
directory on S3, served from there. The S3 is moto's standalone server (moto[server], in
the lock) on a loopback port; TensorFlow reaches it through tensorflow-io (S3_ENDPOINT,
AWS_*), Beam through its own S3 file system (the pipeline adds --s3_endpoint_url). No FUSE
mount and no local copy: the test reads the bucket with boto3, independently of the
product.

Every command runs as its own process, as users run it: tensorflow-io aborts the
interpreter at exit ("pure virtual method called"), and a command must still end with its
own exit status (0, or 2 for bad input).
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import free_port
from trainer import storage

REPO = pathlib.Path(__file__).resolve().parents[1]
BUCKET = "movierec-e2e"
DATA = f"s3://{BUCKET}/data/ml-100k"
ROOT = f"s3://{BUCKET}/pipeline"
SERVING = f"s3://{BUCKET}/serving/movierec"
FAST = ["--epochs", "3", "--batch-size", "256", "--rmse-upper-bound", "2.0",
        "--beam-pipeline-args=--direct_num_workers=1 --direct_running_mode=in_memory"]


class S3:
    """moto_server on 127.0.0.1:port, a bucket in it, the environment that points
    tensorflow-io and boto3 at it, and a boto3 client to look inside."""

    def __init__(self, tmp: pathlib.Path) -> None:
        import boto3

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = open(tmp / "moto.log", "w")
        self.proc = subprocess.Popen(
            [str(pathlib.Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
             "-p", str(self.port)], stdout=self._log, stderr=subprocess.STDOUT)
        self.env = {"AWS_ACCESS_KEY_ID": "movierec", "AWS_SECRET_ACCESS_KEY": "movierec",
                    "AWS_REGION": "us-east-1", "S3_ENDPOINT": self.endpoint,
                    "S3_USE_HTTPS": "0", "S3_VERIFY_SSL": "0"}
        self.client = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="movierec", aws_secret_access_key="movierec")
        deadline = time.time() + 60
        while True:
            try:
                self.client.list_buckets()
                break
            except Exception:
                assert self.proc.poll() is None, (tmp / "moto.log").read_text()
                assert time.time() < deadline, "moto_server did not start"
                time.sleep(0.2)
        self.client.create_bucket(Bucket=BUCKET)

    def keys(self, prefix: str) -> dict:
        """{key: (size, ETag)} of every object under `prefix` (an s3:// URI)."""
        prefix = prefix.removeprefix(f"s3://{BUCKET}/")
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=BUCKET, Prefix=prefix):
            out.update({o["Key"]: (o["Size"], o["ETag"]) for o in page.get("Contents", [])})
        return out

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def upload_dir(self, directory, prefix: str) -> None:
        for path in sorted(pathlib.Path(directory).iterdir()):
            self.client.upload_file(str(path), BUCKET, f"{prefix}/{path.name}")

    def download(self, uri: str, directory: pathlib.Path) -> pathlib.Path:
        prefix = uri.removeprefix(f"s3://{BUCKET}/")
        for key in self.keys(uri):
            target = directory / key[len(prefix):].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read(key))
        return directory

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._log.close()


def movierec(s3: S3, *argv, timeout: int = 900) -> subprocess.CompletedProcess:
    """`movierec ARGV` in its own process, with the S3 environment."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, argv)],
                          cwd=REPO, env={**os.environ, **s3.env, "PYTHONUNBUFFERED": "1"},
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def first_run(s3, ml100k_dir, tmp_path_factory):
    s3.upload_dir(ml100k_dir, DATA.removeprefix(f"s3://{BUCKET}/"))
    out = tmp_path_factory.mktemp("s3run") / "output"
    result = movierec(s3, "run", "--data-dir", DATA, "--pipeline-root", ROOT,
                      "--serving-dir", SERVING, "--output-dir", out, *FAST)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


def _pushed_version(s3) -> str:
    versions = {key.split("/")[2] for key in s3.keys(SERVING)}
    assert len(versions) == 1 and versions.pop().isdigit()
    return sorted({key.split("/")[2] for key in s3.keys(SERVING)})[0]


def test_the_run_writes_its_artifacts_and_model_to_the_bucket_only(first_run, s3):
    out, result = first_run
    version = _pushed_version(s3)
    assert f"pushed     {SERVING}/{version}" in result.stdout
    assert f"serving/movierec/{version}/saved_model.pb" in s3.keys(SERVING)
    artifacts = {key.split("/")[1] for key in s3.keys(ROOT)}
    assert {"MovieLensExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator",
            "RetrievalEvaluator", "Pusher"} <= artifacts
    # nothing of the root or the model is kept locally: the lock, logs and ML Metadata
    assert sorted(p.name for p in out.iterdir()) == [".movierec.lock", "logs",
                                                     "metadata.sqlite"]


def test_a_cached_rerun_fingerprints_the_data_in_the_bucket(first_run, s3):
    out, _ = first_run
    before = s3.keys(SERVING)
    result = movierec(s3, "run", "--data-dir", DATA, "--pipeline-root", ROOT,
                      "--serving-dir", SERVING, "--output-dir", out, *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    for component in ("MovieLensExampleGen", "Transform", "Trainer", "Pusher"):
        assert any(line.split()[2:4] == [component, "cached"]
                   for line in result.stdout.splitlines() if line.startswith("[")), (
            result.stdout)
    assert s3.keys(SERVING) == before


def test_inspect_and_report_read_the_artifacts_in_the_bucket(first_run, s3):
    out, _ = first_run
    result = movierec(s3, "inspect", "metrics", "--output-dir", out, "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["examples"].startswith(f"{ROOT}/MovieLensExampleGen/examples/")
    # the RetrievalEvaluator's metrics.json, read from the bucket by boto3
    [key] = [k for k in s3.keys(f"{ROOT}/RetrievalEvaluator") if k.endswith("metrics.json")]
    written = json.loads(s3.read(key))
    for name in ("top_10_accuracy", "top_100_accuracy", "filtered_top_10_accuracy"):
        assert shown[name] == pytest.approx(written[name], abs=1e-12)
    assert 0 < shown["rmse"] < 2.0

    report = out / "report.html"
    result = movierec(s3, "report", "--output-dir", out, "--output", report)
    assert result.returncode == 0, result.stderr
    page = report.read_text()
    assert "cannot read" not in page
    # the training curves come from the Trainer's training.json in the bucket
    [key] = [k for k in s3.keys(f"{ROOT}/Trainer") if k.endswith("training.json")]
    summary = json.loads(s3.read(key))
    assert "training curves per epoch" in page
    assert f"{summary['train_examples']}</td>" in page
    assert f"{ROOT}/Trainer/model_run/" in page


def test_serve_answers_from_the_bucket_and_picks_up_a_new_version(first_run, s3,
                                                                  tmp_path, monkeypatch):
    import tensorflow as tf

    from test_serving import Server
    from trainer import saved_model

    version = _pushed_version(s3)
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)  # for the server process
    server = Server(SERVING, tmp_path)
    try:
        server.wait_ready()
        status, body = server.get("/v1/models/movierec")
        assert status == 200 and body["model_version_status"][0]["version"] == version
        status, body = server.predict({"signature_name": "recommend",
                                       "instances": [{"user_id": "1"}]})
        assert status == 200, body
        served = body["predictions"][0]["movie_ids"]

        # the same SavedModel, copied out of the bucket by boto3, answers the same
        local = s3.download(f"{SERVING}/{version}", tmp_path / "copy")
        expected = saved_model.call(tf.saved_model.load(str(local)), "recommend",
                                    user_id=tf.constant(["1"]))
        assert served == [m.decode() for m in expected["movie_ids"].numpy()[0][:len(served)]]

        cli = movierec(s3, "recommend", "--model", SERVING, "--user", "1", "--json")
        assert cli.returncode == 0, cli.stderr
        answer = json.loads(cli.stdout)
        assert answer["model"] == f"{SERVING}/{version}"
        assert [r["movie_id"] for r in answer["recommendations"]] == served

        # a newer version appears in the bucket: served without a restart
        newer = str(int(version) + 1)
        prefix = SERVING.removeprefix(f"s3://{BUCKET}/")
        for key in s3.keys(f"{SERVING}/{version}"):
            s3.client.copy_object(Bucket=BUCKET, CopySource={"Bucket": BUCKET, "Key": key},
                                  Key=key.replace(f"{prefix}/{version}/",
                                                  f"{prefix}/{newer}/"))
        deadline = time.time() + 120
        while True:
            status, body = server.get("/v1/models/movierec")
            states = {v["version"]: v["state"] for v in body["model_version_status"]}
            if states.get(newer) == "AVAILABLE":
                break
            assert time.time() < deadline, (body, server.log())
            time.sleep(0.5)
        status, body = server.predict({"signature_name": "recommend",
                                       "instances": [{"user_id": "1"}]})
        assert status == 200 and body["predictions"][0]["movie_ids"] == served
        assert server.proc.poll() is None
    finally:
        server.stop()
    for key in s3.keys(f"{SERVING}/{newer}"):
        s3.client.delete_object(Bucket=BUCKET, Key=key)


def test_bad_input_in_the_bucket_fails_in_one_line_and_keeps_the_pushed_model(
        first_run, s3, ml100k_dir, tmp_path):
    out, _ = first_run
    before = s3.keys(SERVING)

    missing = f"s3://{BUCKET}/nowhere/ml-100k"
    result = movierec(s3, "run", "--data-dir", missing, "--pipeline-root", ROOT,
                      "--serving-dir", SERVING, "--output-dir", out, *FAST)
    assert result.returncode == 2  # its own status, not tensorflow-io's abort at exit
    assert result.stderr.strip().splitlines()[-1] == (
        f"movierec: error: data directory does not exist: {missing}")

    bad = tmp_path / "ml-100k"
    bad.mkdir()
    for path in pathlib.Path(ml100k_dir).iterdir():
        (bad / path.name).write_bytes(path.read_bytes())
    lines = (bad / "u.data").read_text().splitlines()
    user, movie, _, stamp = lines[2].split("\t")
    lines[2] = "\t".join([user, movie, "7", stamp])
    (bad / "u.data").write_text("\n".join(lines) + "\n")
    s3.upload_dir(bad, "bad/ml-100k")
    result = movierec(s3, "run", "--data-dir", f"s3://{BUCKET}/bad/ml-100k",
                      "--pipeline-root", ROOT, "--serving-dir", SERVING, "--output-dir",
                      out, *FAST)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "movierec: error: u.data line 3: rating '7' outside 1..5")
    assert s3.keys(SERVING) == before


# ------------------------------------------------------------- storage, without a server
def test_beam_gets_the_s3_endpoint_that_tensorflow_io_uses():
    env = {"S3_ENDPOINT": "127.0.0.1:9000", "S3_USE_HTTPS": "0", "AWS_REGION": "eu-west-1",
           "AWS_SECRET_ACCESS_KEY": "not passed"}
    assert storage.beam_args(["/local", "s3://bucket/root"], [], env) == [
        "--s3_endpoint_url=http://127.0.0.1:9000", "--s3_region_name=eu-west-1"]
    assert storage.beam_args(["s3://bucket/root"], [], {"S3_ENDPOINT": "s3.example"}) == [
        "--s3_endpoint_url=https://s3.example"]
    given = ["--s3_endpoint_url=http://elsewhere", "--s3_region_name", "x"]
    assert storage.beam_args(["s3://bucket/root"], given, env) == []
    assert storage.beam_args(["gs://bucket/root", "/local"], [], env) == []


def test_local_paths_and_uris_side_by_side(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_text("héllo\n")
    local = storage.path(tmp_path) / "a" / "f.txt"
    assert isinstance(local, pathlib.Path) and local.is_file()
    assert storage.stat(local).st_size == len("héllo\n".encode())
    with storage.open(str(local)) as f:
        assert f.read() == "héllo\n"
    assert [d for d, _, names in storage.walk(str(tmp_path)) if names] == [
        str(tmp_path / "a")]
    uri = storage.path("gs://bucket/data/") / "ml-100k" / "u.data"
    assert (str(uri), uri.name, str(uri.parent)) == ("gs://bucket/data/ml-100k/u.data",
                                                     "u.data", "gs://bucket/data/ml-100k")
    assert storage.join("s3://b/x", "y", "z") == "s3://b/x/y/z"
    assert storage.absolute("s3://b/x/") == "s3://b/x"
    assert storage.absolute("rel") == os.path.abspath("rel")
    assert np.array_equal(sorted(storage.listdir(str(tmp_path / "a"))), ["f.txt"])
