"""One setting, three front ends: `movierec run` (pipeline/cli.py), the Airflow DAG's
MOVIEREC_* variables (pipeline/airflow_dag.py) and `movierec export-dag kubeflow`
(pipeline/kubeflow.py) all hand their settings to configs.from_options, so the same
settings give the same PipelineConfig, and the same bad setting the same one-line error.
Nothing here runs the pipeline: `movierec run` goes through cmd_run's own path up to the
point where it would start TFX, where a stand-in for local_runner.run hands the config
back."""

import dataclasses
import json
import re
import sys
import types

import pytest

import pipeline
from pipeline import airflow_dag, cli, kubeflow
from pipeline.errors import UserError

# Fields that every front end sets from the settings (Kubeflow's paths and baseline
# strategy are its own; it has no --beam-workers or --warm-start).
SHARED_FIELDS = ("data_dir", "layout", "split", "seed", "eval_fraction", "hparams",
                 "timestamp_buckets", "rmse_upper_bound", "rmse_tolerance",
                 "beam_pipeline_args", "enable_cache", "tune_trials")
BEAM_ARGS = "--direct_running_mode=in_memory --direct_num_workers=1"

# (id, command-line arguments of `run` (and of `export-dag kubeflow`), MOVIEREC_* variables)
GOOD = [
    ("defaults", [], {}),
    ("split-and-seed", ["--split", "time", "--seed", "7"],
     {"MOVIEREC_SPLIT": "time", "MOVIEREC_SEED": "7"}),
    ("hparams-as-strings",
     ["--hparam", "epochs=3", "--hparam", "learning_rate=0.05", "--hparam",
      "logq_correction=false", "--hparam", "query_layers=64,32", "--hparam",
      "rating_tower=shared"],
     {"MOVIEREC_HPARAMS": json.dumps({"epochs": "3", "learning_rate": "0.05",
                                      "logq_correction": "false",
                                      "query_layers": "64,32", "rating_tower": "shared"})}),
    ("hparams-typed",
     ["--hparam", "epochs=3", "--hparam", "learning_rate=0.05", "--hparam",
      "logq_correction=false", "--hparam", "query_layers=[64, 32]"],
     {"MOVIEREC_HPARAMS": json.dumps({"epochs": 3, "learning_rate": 0.05,
                                      "logq_correction": False,
                                      "query_layers": [64, 32]})}),
    ("hparam-shortcuts-override-hparams",
     ["--hparam", "epochs=9", "--epochs", "2", "--batch-size", "64", "--optimizer",
      "adagrad"],
     {"MOVIEREC_HPARAMS": '{"epochs": 9}', "MOVIEREC_EPOCHS": "2",
      "MOVIEREC_BATCH_SIZE": "64", "MOVIEREC_OPTIMIZER": "adagrad"}),
    ("bound-buckets-beam-cache",
     ["--rmse-upper-bound", "1.5", "--timestamp-buckets", "50",
      f"--beam-pipeline-args={BEAM_ARGS}", "--no-cache"],
     {"MOVIEREC_RMSE_UPPER_BOUND": "1.5", "MOVIEREC_TIMESTAMP_BUCKETS": "50",
      "MOVIEREC_BEAM_PIPELINE_ARGS": BEAM_ARGS, "MOVIEREC_ENABLE_CACHE": "false"}),
]
# `movierec run` only (no export-dag kubeflow flag)
RUN_ONLY = [
    ("beam-workers-warm-start", ["--beam-workers", "2", "--warm-start"],
     {"MOVIEREC_BEAM_WORKERS": "2", "MOVIEREC_WARM_START": "true"}),
    # gs:// (TensorFlow's own): an s3:// root would import tensorflow-io into pytest,
    # which then aborts at exit (tests/test_object_storage.py runs those as commands)
    ("object-store-roots", ["--pipeline-root", "gs://movierec-b/root/", "--serving-dir",
                            "gs://movierec-b/serving"],
     {"MOVIEREC_PIPELINE_ROOT": "gs://movierec-b/root/",
      "MOVIEREC_SERVING_DIR": "gs://movierec-b/serving"}),
]
# (id, arguments, variables, variable named, message after "movierec: error: ");
# "{nowhere}" is a data directory that does not exist.
BAD = [
    ("bad-split", ["--split", "bogus"], {"MOVIEREC_SPLIT": "bogus"}, "MOVIEREC_SPLIT",
     "split must be 'random', 'time' or 'fold:NAME', not 'bogus'"),
    ("unknown-hyperparameter", ["--hparam", "epoch=3"],
     {"MOVIEREC_HPARAMS": '{"epoch": 3}'}, "MOVIEREC_HPARAMS",
     "unknown hyperparameters: epoch"),
    ("non-numeric-hyperparameter", ["--hparam", "epochs=many"],
     {"MOVIEREC_HPARAMS": '{"epochs": "many"}'}, "MOVIEREC_HPARAMS",
     "hparam epochs must be an integer, got 'many'"),
    ("bad-bound", ["--rmse-upper-bound=-1"], {"MOVIEREC_RMSE_UPPER_BOUND": "-1"},
     "MOVIEREC_RMSE_UPPER_BOUND", "rmse_upper_bound must be positive, got -1.0"),
    ("negative-seed", ["--seed=-3"], {"MOVIEREC_SEED": "-3"}, "MOVIEREC_SEED",
     "seed must be 0 or more, got -3"),
    ("bad-buckets", ["--timestamp-buckets", "1"], {"MOVIEREC_TIMESTAMP_BUCKETS": "1"},
     "MOVIEREC_TIMESTAMP_BUCKETS", "timestamp_buckets must be at least 2, got 1"),
    ("missing-data-dir", ["--data-dir", "{nowhere}"], {"MOVIEREC_DATA_DIR": "{nowhere}"},
     "MOVIEREC_DATA_DIR", "data directory does not exist: {nowhere}"),
    ("root-not-an-object-store", ["--pipeline-root", "ftp://host/root"],
     {"MOVIEREC_PIPELINE_ROOT": "ftp://host/root"}, "MOVIEREC_PIPELINE_ROOT",
     "pipeline_root 'ftp://host/root': ftp:// is not an object store this pipeline writes "
     "to (gs://, s3:// or a local path)"),
    ("serving-bucket-too-short", ["--serving-dir", "s3://ab/serving"],
     {"MOVIEREC_SERVING_DIR": "s3://ab/serving"}, "MOVIEREC_SERVING_DIR",
     "serving_dir 's3://ab/serving': needs a bucket name of 3 or more characters "
     "(s3://BUCKET/PATH)"),
]


class _Started(BaseException):
    """Raised by the stand-in for local_runner.run: cmd_run got as far as running TFX."""

    def __init__(self, config):
        super().__init__("the pipeline would start here")
        self.config = config


@pytest.fixture
def no_pipeline(monkeypatch):
    """`from pipeline import local_runner` in cmd_run gets a module whose run() raises
    _Started with its config (so no TFX is imported or run)."""
    def run(config):
        raise _Started(config)

    fake = types.ModuleType("pipeline.local_runner")
    fake.run = run
    monkeypatch.setitem(sys.modules, "pipeline.local_runner", fake)
    monkeypatch.setattr(pipeline, "local_runner", fake, raising=False)


def _fill(items, nowhere):
    """`items` (a string, list or dict of strings) with "{nowhere}" replaced."""
    if isinstance(items, dict):
        return {k: _fill(v, nowhere) for k, v in items.items()}
    if isinstance(items, list):
        return [_fill(a, nowhere) for a in items]
    return items.replace("{nowhere}", nowhere)


def _with_data_dir(argv, data_dir):
    return argv if "--data-dir" in argv else ["--data-dir", str(data_dir), *argv]


def cli_config(argv, data_dir, output_dir):
    """The PipelineConfig that `movierec run ARGV` would run the pipeline with."""
    with pytest.raises(_Started) as started:
        cli.main(["run", *_with_data_dir(argv, data_dir), "--output-dir", str(output_dir)])
    return started.value.config


def airflow_config(variables, data_dir, output_dir):
    return airflow_dag.pipeline_config_from_env(
        {"MOVIEREC_DATA_DIR": str(data_dir), "MOVIEREC_OUTPUT_DIR": str(output_dir),
         **variables})


def kubeflow_args(argv, data_dir, spec):
    return ["export-dag", "kubeflow", "--output", str(spec), "--pipeline-root",
            "gs://bucket/movierec", *_with_data_dir(argv, data_dir)]


def _shared(config):
    return {name: getattr(config, name) for name in SHARED_FIELDS}


@pytest.mark.parametrize("argv, variables", [c[1:] for c in GOOD + RUN_ONLY],
                         ids=[c[0] for c in GOOD + RUN_ONLY])
def test_cli_and_airflow_give_the_same_config(no_pipeline, ml100k_dir, tmp_path, argv,
                                              variables):
    out = tmp_path / "out"
    from_cli = cli_config(argv, ml100k_dir, out)
    from_airflow = airflow_config(variables, ml100k_dir, out)
    assert dataclasses.asdict(from_airflow) == dataclasses.asdict(from_cli)
    assert from_cli.data_dir == str(ml100k_dir) and from_cli.layout == "ml-100k"


@pytest.mark.parametrize("argv, variables", [c[1:] for c in GOOD], ids=[c[0] for c in GOOD])
def test_kubeflow_gives_the_same_settings(no_pipeline, ml100k_dir, tmp_path, argv,
                                          variables):
    from_cli = cli_config(argv, ml100k_dir, tmp_path / "out")
    args = cli.build_parser().parse_args(kubeflow_args(argv, ml100k_dir,
                                                       tmp_path / "spec.json"))
    assert _shared(kubeflow.pipeline_config(args)) == _shared(from_cli)
    assert _shared(airflow_config(variables, ml100k_dir, tmp_path / "out")) == _shared(
        from_cli)


def test_the_settings_are_not_the_defaults(no_pipeline, ml100k_dir, tmp_path):
    """The cases above compare something: their settings do reach the config."""
    configs = {case[0]: airflow_config(case[2], ml100k_dir, tmp_path) for case in
               GOOD + RUN_ONLY}
    assert (configs["split-and-seed"].split, configs["split-and-seed"].seed) == ("time", 7)
    assert configs["hparams-as-strings"].hparams == {
        "epochs": 3, "learning_rate": 0.05, "logq_correction": False,
        "query_layers": "64,32", "rating_tower": "shared"}
    assert configs["hparam-shortcuts-override-hparams"].hparams == {
        "epochs": 2, "batch_size": 64, "optimizer": "adagrad"}
    bound = configs["bound-buckets-beam-cache"]
    assert (bound.rmse_upper_bound, bound.timestamp_buckets, bound.enable_cache) == (
        1.5, 50, False)
    assert bound.beam_pipeline_args == tuple(BEAM_ARGS.split())
    workers = configs["beam-workers-warm-start"]
    assert (workers.beam_workers, workers.warm_start) == (2, True)
    roots = configs["object-store-roots"]
    assert (roots.pipeline_root, roots.serving_dir) == ("gs://movierec-b/root",
                                                        "gs://movierec-b/serving")
    assert (configs["defaults"].pipeline_root, configs["defaults"].serving_dir) == (
        str(tmp_path / "pipeline"), str(tmp_path / "serving" / "movierec"))


@pytest.mark.parametrize("argv, variables, variable, message", [c[1:] for c in BAD],
                         ids=[c[0] for c in BAD])
def test_a_bad_setting_is_the_same_error_everywhere(no_pipeline, ml100k_dir, tmp_path,
                                                    capsys, argv, variables, variable,
                                                    message):
    nowhere = str(tmp_path / "nowhere")
    argv, variables, message = (_fill(argv, nowhere), _fill(variables, nowhere),
                                _fill(message, nowhere))
    out = tmp_path / "out"

    capsys.readouterr()
    assert cli.main(["run", *_with_data_dir(argv, ml100k_dir), "--output-dir",
                     str(out)]) == 2
    printed = capsys.readouterr()
    assert printed.err.strip() == f"movierec: error: {message}"
    assert printed.out == "" and not out.exists()  # refused before touching anything

    with pytest.raises(airflow_dag.ConfigError) as raised:
        airflow_config(variables, ml100k_dir, out)
    assert str(raised.value) == f"{variable}: {message}"
    assert isinstance(raised.value, UserError) and not out.exists()

    spec = tmp_path / "spec.json"
    assert cli.main(kubeflow_args(argv, ml100k_dir, spec)) == 2
    assert capsys.readouterr().err.strip() == f"movierec: error: {message}"
    assert not spec.exists()
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        kubeflow.pipeline_config(cli.build_parser().parse_args(
            kubeflow_args(argv, ml100k_dir, spec)))


def test_a_missing_dataset_named_data_dir(no_pipeline, tmp_path, capsys):
    """A path named like a dataset that is not there: `movierec run` and Airflow both
    refuse it (Kubeflow takes it for a path inside its containers)."""
    missing = tmp_path / "ml-100k"
    assert cli.main(["run", "--data-dir", str(missing), "--output-dir",
                     str(tmp_path / "out")]) == 2
    message = f"data directory does not exist: {missing}"
    assert capsys.readouterr().err.strip() == f"movierec: error: {message}"
    with pytest.raises(airflow_dag.ConfigError) as raised:
        airflow_config({}, missing, tmp_path / "out")
    assert str(raised.value) == f"MOVIEREC_DATA_DIR: {message}"
