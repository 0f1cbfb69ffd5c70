"""Shared fixtures: tiny MovieLens-shaped data written by the tests, and a Transform graph
built from it the way the pipeline builds one."""

import os
import pathlib
import re
import socket

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported anywhere
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

from components.movielens_example_gen import synth  # noqa: E402


@pytest.fixture(scope="session")
def synth_data():
    return synth.generate(users=60, movies=80, ratings=3000, seed=1)


@pytest.fixture(scope="session")
def ml100k_dir(tmp_path_factory, synth_data):
    """A tiny ml-100k-layout directory (60 users, 80 movies, 3,000 ratings)."""
    return synth.write_ml100k(tmp_path_factory.mktemp("ml-100k"), synth_data)


@pytest.fixture(scope="session")
def default_run(tmp_path_factory, ml100k_dir):
    """The output directory of one `movierec run` with the default split (time) on the tiny
    data, shared by the modules that only read it (the report, the replay's checks): a
    test that runs into it again or changes it needs a run of its own."""
    from pipeline import cli

    out = tmp_path_factory.mktemp("default-run") / "output"
    assert cli.main(["run", "--data-dir", str(ml100k_dir), "--output-dir", str(out),
                     "--epochs", "3", "--batch-size", "256", "--rmse-upper-bound", "2.0",
                     "--beam-pipeline-args=--direct_num_workers=1 "
                     "--direct_running_mode=in_memory"]) == 0
    return out


@pytest.fixture(scope="session")
def example_files(tmp_path_factory, ml100k_dir):
    """Gzipped TFRecords of train/eval/catalog examples, as MovieLensExampleGen writes them."""
    import tensorflow as tf

    from components.movielens_example_gen import executor, movielens
    from trainer import features as F

    out = tmp_path_factory.mktemp("examples")
    movies = movielens.read_movies(ml100k_dir)
    users = movielens.read_users(ml100k_dir)
    writers = {s: tf.io.TFRecordWriter(str(out / f"{s}.gz"), options="GZIP")
               for s in F.SPLITS}
    encoder = executor.ExampleEncoder(movies, users)
    for rating in movielens.iter_ratings(ml100k_dir):
        split = (F.EVAL_SPLIT if executor.random_bucket(rating, 42) < 0.2
                 else F.TRAIN_SPLIT)
        writers[split].write(encoder.encode(rating))
    for movie in movies.values():
        writers[F.CATALOG_SPLIT].write(executor.catalog_example(movie))
    for writer in writers.values():
        writer.close()
    return {s: str(out / f"{s}.gz") for s in writers}


@pytest.fixture(scope="session")
def transform_dir(tmp_path_factory, example_files):
    """Transform's output (graph + vocabularies) analyzed on the train split, using the
    committed ml-100k schema for the input spec, as the Transform component does."""
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx.utils import io_utils
    from tensorflow_metadata.proto.v0 import schema_pb2
    import tensorflow as tf

    from pipeline import configs
    from trainer import preprocessing

    schema = io_utils.parse_pbtxt_file(
        configs.PipelineConfig("", "", layout="ml-100k").schema_file, schema_pb2.Schema())
    spec = schema_utils.schema_as_feature_spec(schema).feature_spec
    rows = [tf.io.parse_single_example(r, spec) for r in
            tf.data.TFRecordDataset(example_files["train"], compression_type="GZIP")]
    rows = [{k: (v.values.numpy() if isinstance(v, tf.SparseTensor) else v.numpy())
             for k, v in row.items()} for row in rows]
    out = tmp_path_factory.mktemp("transform")
    with tft_beam.Context(temp_dir=str(out / "tmp"), force_tf_compat_v1=False):
        transform_fn = ((rows, tft.DatasetMetadata(schema))
                        | tft_beam.AnalyzeDataset(preprocessing.preprocessing_fn))
        _ = transform_fn | tft_beam.WriteTransformFn(str(out / "graph"))
    return str(out / "graph")


SMALL_HPARAMS = dict(epochs=3, batch_size=128, embedding_dim=16, side_embedding_dim=4)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, example_files, transform_dir):
    """(SavedModel dir, training summary) of a small model trained without TFX, shared by
    the model and serving tests."""
    from trainer.model import HParams
    from trainer.run import train_and_export

    out = tmp_path_factory.mktemp("trained")
    summary = train_and_export([example_files["train"]], [example_files["catalog"]],
                               transform_dir, str(out / "model"), HParams(**SMALL_HPARAMS),
                               log_dir=str(out / "logs"))
    return out / "model", summary


def serving_snapshot(output_dir):
    """Every file under OUT/serving/ with its size and mtime: equal snapshots mean nothing
    was pushed, replaced or touched."""
    root = pathlib.Path(output_dir, "serving")
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def progress_states(printed: str) -> dict:
    """{component: 'done' | 'cached'} from the progress lines `movierec run` prints
    (`[  12.3s] Transform   cached   0.1s`)."""
    return dict(re.findall(r"^\[\s*[\d.]+s\]\s+(\S+)\s+(\S+)", printed, re.M))


def cli_output(capsys, *argv) -> tuple:
    """(exit status, stdout, stderr stripped) of `movierec ARGV` run in this process."""
    from pipeline import cli

    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err.strip()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
