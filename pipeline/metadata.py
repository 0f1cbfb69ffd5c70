"""ML Metadata queries shared by the CLI (`run` summary, `inspect`)."""

from __future__ import annotations

import json
import os

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

RUN_CONTEXT = "pipeline_run"
PIPELINE_CONTEXT = "pipeline"


class MetadataError(RuntimeError):
    """The metadata store is missing or holds no run."""


def connect(path: str) -> metadata_store.MetadataStore:
    """The SQLite store at `path` (a metadata.sqlite file or an output directory)."""
    if os.path.isdir(path):
        path = os.path.join(path, "metadata.sqlite")
    if not os.path.isfile(path):
        raise MetadataError(f"no metadata store at {path}: run `movierec run` first")
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def runs(store) -> list:
    """Pipeline-run contexts, oldest first."""
    return sorted(store.get_contexts_by_type(RUN_CONTEXT),
                  key=lambda c: (c.create_time_since_epoch, c.id))


def find_run(store, run_id: str | None = None, evaluated: bool = False):
    """The run named `run_id`, else the latest run (with `evaluated`: the latest run that
    got as far as an evaluation, so a run that failed early does not hide the metrics)."""
    all_runs = runs(store)
    if not all_runs:
        raise MetadataError("the metadata store holds no pipeline run")
    if run_id is None:
        if evaluated:
            for context in reversed(all_runs):
                if run_artifacts(store, context, "ModelEvaluation"):
                    return context
        return all_runs[-1]
    for context in all_runs:
        if context.name == run_id or str(context.id) == str(run_id):
            return context
    raise MetadataError(f"no run {run_id!r}; known runs: "
                        + ", ".join(c.name for c in all_runs[-5:]))


def _type_names(store) -> dict:
    return {t.id: t.name for t in store.get_artifact_types()}


def run_artifacts(store, context, type_name: str | None = None) -> list:
    """Artifacts attributed to or produced within a run, oldest first."""
    names = _type_names(store)
    artifacts = store.get_artifacts_by_context(context.id)
    if type_name:
        artifacts = [a for a in artifacts if names.get(a.type_id) == type_name]
    return sorted(artifacts, key=lambda a: a.id)


def custom(artifact, key: str, default=None):
    if key not in artifact.custom_properties:
        return default
    value = artifact.custom_properties[key]
    kind = value.WhichOneof("value")
    if kind == "proto_value":  # TFX stores some values as Value protos
        return default
    return getattr(value, kind)


def _tfma_metrics(uri: str) -> dict:
    import logging

    import tensorflow_model_analysis as tfma  # heavy: only when asked

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # TFMA's deprecation notes
    names = {"root_mean_squared_error": "rmse", "mean_absolute_error": "mae",
             "mean_squared_error": "mse", "example_count": "example_count"}
    out = {}
    for metrics in tfma.load_metrics(uri):
        if metrics.slice_key.single_slice_keys:
            continue  # overall slice only
        for item in metrics.metric_keys_and_values:
            key = item.key
            if key.is_diff or key.model_name not in ("", "candidate"):
                continue
            if key.name in names:
                out[names[key.name]] = item.value.double_value.value
    if "example_count" in out:
        out["example_count"] = int(out["example_count"])
    return out


def run_metrics(store, context) -> dict:
    """The eval metrics, blessing and push of one run, as one flat dict."""
    from components.retrieval_evaluator import read_metrics

    result = {"run_id": context.name, "blessed": None, "pushed_model": None}
    evaluations = run_artifacts(store, context, "ModelEvaluation")
    if evaluations:
        result.update(_tfma_metrics(evaluations[-1].uri))
    retrieval = run_artifacts(store, context, "movierec.RetrievalEvaluation")
    if retrieval:
        result.update(read_metrics(retrieval[-1].uri))
    blessings = run_artifacts(store, context, "ModelBlessing")
    final = [b for b in blessings if custom(b, "reason") is not None] or blessings
    if final:
        result["blessed"] = bool(custom(final[-1], "blessed", 0))
        result["blessing_reason"] = custom(final[-1], "reason")
    examples = run_artifacts(store, context, "Examples")
    if examples:
        result["examples"] = examples[-1].uri
    models = run_artifacts(store, context, "Model")
    if models:
        result["model"] = models[-1].uri
    pushes = run_artifacts(store, context, "PushedModel")
    if pushes and custom(pushes[-1], "pushed", 0):
        result["pushed_model"] = custom(pushes[-1], "pushed_destination")
    return result


def best_hyperparameters(store, context=None) -> dict:
    """The values of the latest Tuner's best hyperparameters (of `context`, else any)."""
    artifacts = (run_artifacts(store, context, "HyperParameters") if context else
                 sorted(store.get_artifacts_by_type("HyperParameters"), key=lambda a: a.id))
    if not artifacts:
        return {}
    with open(os.path.join(artifacts[-1].uri, "best_hyperparameters.txt")) as f:
        return json.load(f).get("values", {})
