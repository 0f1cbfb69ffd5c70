"""RetrievalEvaluator: top-K retrieval metrics of the trained model over the full catalog.

TFMA (the Evaluator) judges the rating task; this component measures the retrieval task on
the eval split through the exported `recommend_at` signature, writes metrics.json into its
artifact and records every metric as a custom property of that artifact in ML Metadata.
"""


import json
import os

from tfx import types
from tfx.dsl.component.experimental.annotations import (InputArtifact, OutputArtifact,
                                                        Parameter)
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import path_utils

METRICS_FILE = "metrics.json"


class RetrievalEvaluation(types.Artifact):
    """Retrieval metrics of one model on one eval split."""

    TYPE_NAME = "movierec.RetrievalEvaluation"


def read_metrics(artifact_uri: str) -> dict:
    with open(os.path.join(artifact_uri, METRICS_FILE)) as f:
        return json.load(f)


@component
def RetrievalEvaluator(
    examples: InputArtifact[standard_artifacts.Examples],
    model: InputArtifact[standard_artifacts.Model],
    evaluation: OutputArtifact[RetrievalEvaluation],
    split: Parameter[str] = "eval",
    max_examples: Parameter[int] = 200_000,
):
    """Computes top-1/5/10/50/100 accuracy of `model` on `split` of `examples`."""
    from trainer import evaluation as ev  # TensorFlow loads only when the component runs

    served = ev.load_serving_model(path_utils.serving_model_path(model.uri))
    batches = ev.serialized_batches(artifact_utils.get_split_uri([examples], split),
                                    max_examples=max_examples)
    metrics = ev.evaluate(served, batches, rating=False)
    os.makedirs(evaluation.uri, exist_ok=True)
    with open(os.path.join(evaluation.uri, METRICS_FILE), "w") as f:
        json.dump(metrics, f, indent=1, sort_keys=True)
    for name, value in metrics.items():
        evaluation.set_float_custom_property(name, float(value))
    evaluation.set_string_custom_property("split", split)
