"""SchemaGate: stops the pipeline when ExampleValidator found anomalies.

ExampleValidator only records anomalies; TFX would carry on into Transform. This component
reads them and either fails with one line naming every anomalous feature, or passes the
schema on unchanged, so Transform (which consumes the gate's schema) runs only on data that
matched it.
"""


import os

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import io_utils

SCHEMA_FILE = "schema.pbtxt"


class AnomaliesFound(RuntimeError):
    """The data does not match the schema."""


def describe_anomalies(anomalies_dir: str, split_names) -> list:
    """'split: feature: description' for every anomaly, in a stable order."""
    problems = []
    for split in split_names:
        path = os.path.join(anomalies_dir, f"Split-{split}", "SchemaDiff.pb")
        if not tf.io.gfile.exists(path):
            continue
        anomalies = anomalies_pb2.Anomalies()
        anomalies.ParseFromString(io_utils.read_bytes_file(path))
        for feature, info in sorted(anomalies.anomaly_info.items()):
            reasons = "; ".join(r.short_description for r in info.reason) or info.description
            problems.append(f"{split}: feature '{feature}': {reasons}")
        if anomalies.HasField("dataset_anomaly_info"):
            reasons = "; ".join(r.short_description
                                for r in anomalies.dataset_anomaly_info.reason)
            problems.append(f"{split}: dataset: {reasons}")
    return problems


@component
def SchemaGate(
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    schema: InputArtifact[standard_artifacts.Schema],
    validated_schema: OutputArtifact[standard_artifacts.Schema],
):
    """Fails on any anomaly; otherwise emits the schema for Transform."""
    splits = artifact_utils.decode_split_names(anomalies.split_names)
    problems = describe_anomalies(anomalies.uri, splits)
    if problems:
        raise AnomaliesFound("data does not match the schema: " + " | ".join(problems))
    io_utils.copy_file(os.path.join(schema.uri, SCHEMA_FILE),
                       os.path.join(validated_schema.uri, SCHEMA_FILE), overwrite=True)
