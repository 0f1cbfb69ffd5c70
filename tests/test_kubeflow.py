"""`movierec export-dag kubeflow`: the spec TFX's Kubeflow V2 runner compiles from
create_pipeline, read back with KFP's own pipeline-spec protos."""

import dataclasses
import importlib
import json
import pathlib

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline import cli, configs, kubeflow

REPO = pathlib.Path(__file__).resolve().parent.parent
IMAGE = "europe-docker.pkg.dev/proj/repo/movierec:test-1"
LAUNCHER = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"


def _export(capsys, *argv):
    capsys.readouterr()
    rc = cli.main(["export-dag", "kubeflow", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out.strip(), out.err.strip()


def _nodes(data_dir, layout, **options):
    """create_pipeline's components for the same settings, built here independently."""
    from pipeline.pipeline import create_pipeline

    config = configs.PipelineConfig(data_dir=str(data_dir), output_dir="/tmp/unused",
                                    layout=layout, **options)
    if "baseline_excludes_candidate" in {f.name for f in dataclasses.fields(config)}:
        config.baseline_excludes_candidate = False
    return create_pipeline(config).components


def _parameters(task) -> dict:
    """A task's constant parameters as Python values."""
    return {name: json_format.MessageToDict(spec.runtime_value.constant_value)
            for name, spec in task.inputs.parameters.items()}


def _value(parameter: dict):
    (value,) = parameter.values()
    return value


def _check_tasks(spec, nodes, image):
    """Every node of create_pipeline is a task of the spec, run by the TFX launcher in
    `image` with its own executor class (resolvers: TFX's two query tasks); no others."""
    from tfx.dsl.components.common.resolver import Resolver

    tasks = dict(spec.root.dag.tasks)
    executors = spec.deployment_spec.fields["executors"]
    expected = set()
    for node in nodes:
        if isinstance(node, Resolver):
            resolver_tasks = [name for name in tasks if name.startswith(f"{node.id}-")]
            assert len(resolver_tasks) == 2, (node.id, sorted(tasks))
            for name in resolver_tasks:
                label = spec.components[tasks[name].component_ref.name].executor_label
                assert "resolver" in executors.struct_value.fields[label].struct_value.fields
            expected.update(resolver_tasks)
            continue
        expected.add(node.id)
        assert node.id in tasks, f"{node.id} is not a task of the spec"
        label = spec.components[tasks[node.id].component_ref.name].executor_label
        container = json_format.MessageToDict(
            executors.struct_value.fields[label].struct_value)["container"]
        assert container["image"] == image, node.id
        assert LAUNCHER in container["command"], (node.id, container["command"])
        cls = node.executor_spec.executor_class
        class_path = f"{cls.__module__}.{cls.__name__}"
        args = container["args"]
        assert args[args.index("--executor_class_path") + 1] == class_path, node.id
        module, _, name = class_path.rpartition(".")
        assert getattr(importlib.import_module(module), name) is cls  # loadable by path
    assert set(tasks) == expected


def test_json_spec_runs_every_component_in_the_image(tmp_path, ml100k_dir, capsys):
    from components.movielens_example_gen import movielens

    output = tmp_path / "specs" / "movierec.json"
    rc, out, err = _export(capsys, "--output", output, "--image", IMAGE,
                           "--data-dir", ml100k_dir, "--pipeline-root", "gs://bkt/movierec/",
                           "--hparam", "epochs=3", "--hparam", "embedding_dim=24",
                           "--hparam", "query_layers=[64, 32]", "--seed", 7)
    assert rc == 0, err
    assert out.startswith(f"movierec: wrote {output}") and len(out.splitlines()) == 1

    job = json_format.Parse(output.read_text(), pipeline_spec_pb2.PipelineJob())
    spec = json_format.ParseDict(json_format.MessageToDict(job.pipeline_spec),
                                 pipeline_spec_pb2.PipelineSpec())
    assert spec.pipeline_info.name == configs.PIPELINE_NAME
    nodes = _nodes(ml100k_dir, "ml-100k")
    _check_tasks(spec, nodes, IMAGE)

    tasks = spec.root.dag.tasks
    example_gen = _parameters(tasks["MovieLensExampleGen"])
    assert _value(example_gen["data_dir"]) == str(ml100k_dir)
    assert _value(example_gen["layout"]) == "ml-100k"
    assert _value(example_gen["seed"]) in ("7", 7)
    # a local directory is fingerprinted as `movierec run` does, for the cache
    assert _value(example_gen["input_fingerprint"]) == movielens.fingerprint(ml100k_dir)

    trainer = json.loads(_value(_parameters(tasks["Trainer"])["custom_config"]))
    assert trainer["hparams"] == {"epochs": 3, "embedding_dim": 24, "query_layers": [64, 32]}

    # the schema file is where the Dockerfile puts the repository
    schema_file = _value(_parameters(tasks["ImportSchemaGen"])["schema_file"])
    root = kubeflow.IMAGE_PACKAGE_ROOT
    assert schema_file == f"{root}/pipeline/schemas/ml-100k.pbtxt"
    assert (REPO / pathlib.PurePosixPath(schema_file).relative_to(root)).is_file()
    dockerfile = (REPO / "Dockerfile").read_text().splitlines()
    assert f"WORKDIR {root}" in dockerfile and f"COPY . {root}" in dockerfile

    assert job.runtime_config.gcs_output_directory == "gs://bkt/movierec"
    assert spec.default_pipeline_root == "gs://bkt/movierec"
    push = json.loads(_value(_parameters(tasks["Pusher"])["push_destination"]))
    assert push["filesystem"]["base_directory"] == "gs://bkt/movierec/serving/movierec"
    assert all(tasks[node.id].caching_options.enable_cache
               for node in nodes if node.id in tasks)


@pytest.mark.parametrize("data_dir", ["/gcs/bkt/data/ml-1m", "gs://bkt/data/ml-1m"])
def test_yaml_spec_for_a_directory_only_the_cluster_sees(tmp_path, capsys, data_dir):
    from components.movielens_example_gen import movielens

    fingerprint = movielens.fingerprint
    output = tmp_path / "movierec.yaml"
    rc, _, err = _export(capsys, "--output", output, "--image", IMAGE,
                         "--data-dir", data_dir, "--pipeline-root", "gs://bkt/r",
                         "--serving-dir", "gs://other/models/movierec", "--trials", 2,
                         "--split", "time", "--no-cache")
    assert rc == 0, err
    assert movielens.fingerprint is fingerprint  # restored after the export

    spec = json_format.ParseDict(yaml.safe_load(output.read_text()),
                                 pipeline_spec_pb2.PipelineSpec())
    nodes = _nodes(tmp_path, "ml-1m", tune_trials=2)
    assert "Tuner" in {node.id for node in nodes}
    _check_tasks(spec, nodes, IMAGE)

    tasks = spec.root.dag.tasks
    example_gen = _parameters(tasks["MovieLensExampleGen"])
    assert _value(example_gen["data_dir"]) == data_dir
    assert _value(example_gen["layout"]) == "ml-1m"  # from the directory's name
    assert _value(example_gen["split"]) == "time"
    assert _value(example_gen["input_fingerprint"]) == ""
    assert _value(_parameters(tasks["ImportSchemaGen"])["schema_file"]).endswith(
        "/pipeline/schemas/ml-1m.pbtxt")
    push = json.loads(_value(_parameters(tasks["Pusher"])["push_destination"]))
    assert push["filesystem"]["base_directory"] == "gs://other/models/movierec"
    assert spec.default_pipeline_root == "gs://bkt/r"
    assert not any(task.caching_options.enable_cache for task in tasks.values())


@pytest.mark.parametrize("argv, message", [
    (["--data-dir", "https://files.example/ml-100k"], "a gs:// / s3:// URI, not a URL"),
    (["--data-dir", "data/ml-100k"], "--data-dir must be an absolute path"),
    (["--data-dir", "/gcs/bkt/ratings"], "layout is required"),
    (["--layout", "ml-7m"], "unknown MovieLens layout 'ml-7m'"),
    (["--layout", "ml-1m", "--data-dir", "{ml100k}"], "does not match the files"),
    (["--hparam", "no_such_thing=1"], "unknown hyperparameters: no_such_thing"),
    (["--hparam", "epochs"], "--hparam expects KEY=VALUE"),
    (["--split", "halves"], "split must be"),
    (["--image", "my image"], "is not an image reference"),
    (["--output", "{tmp}/spec.txt"], "--output must end with .json, .yaml, .yml"),
    (["--output", "{tmp}/dir.json"], "is a directory"),
    (["--no-root"], "--pipeline-root is required"),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_bad_arguments_are_one_line(argv, message, tmp_path, ml100k_dir, capsys):
    (tmp_path / "dir.json").mkdir()
    argv = [a.format(tmp=tmp_path, ml100k=ml100k_dir) for a in argv]
    base = {"--output": str(tmp_path / "spec.json"), "--pipeline-root": "gs://bkt/r"}
    if argv == ["--no-root"]:
        argv, base = [], {"--output": base["--output"]}
    args = [a for pair in base.items() if pair[0] not in argv for a in pair] + argv
    rc, out, err = _export(capsys, *args)
    assert rc == 2 and not out
    assert len(err.splitlines()) == 1 and err.startswith("movierec: error: "), err
    assert message in err, err
    assert not (tmp_path / "spec.json").exists()
