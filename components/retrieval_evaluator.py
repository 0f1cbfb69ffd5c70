"""RetrievalEvaluator: retrieval metrics over the full catalog, and the pipeline's blessing.

TFMA (the Evaluator) judges the rating task: RMSE under its bound and no regression against
the latest blessed model. This component measures the retrieval task of the candidate model
(and of that same baseline, on the same eval split) through the exported signatures, and
blesses the model only when TFMA blessed it **and** its retrieval metric did not regress
beyond a tolerance (nor fall under a floor). The Pusher pushes on this blessing; the
latest-blessed-model resolver reads only this component's blessings.

Outputs: `evaluation` (metrics.json + every metric as a custom property in ML Metadata) and
`blessing` (a ModelBlessing with `blessed`, `reason`, and the model ids the resolver uses).
"""

import json
import os
from typing import Optional

from tfx import types
from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.component.experimental.annotations import (InputArtifact, OutputArtifact,
                                                        Parameter)
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import io_utils, path_utils

from trainer import features as F
from trainer import metrics as M

METRICS_FILE = "metrics.json"


class RetrievalEvaluation(types.Artifact):
    """Retrieval metrics of one model on one eval split."""

    TYPE_NAME = "movierec.RetrievalEvaluation"


# How the held-out split is measured (the `protocol` of metrics.json and of `inspect
# metrics`): a time split by REPLAY, every other split HELD_OUT.
HELD_OUT, REPLAY, PROTOCOLS = M.HELD_OUT, M.REPLAY, M.PROTOCOLS


def read_metrics(artifact_uri: str) -> dict:
    from trainer import storage

    with storage.open(storage.join(artifact_uri, METRICS_FILE)) as f:
        return json.load(f)


def decide(rating_blessed: bool, candidate: float, baseline: Optional[float],
           tolerance: float, floor: float, metric: str) -> tuple:
    """(blessed, reason) of the combined rating + retrieval decision."""
    if not rating_blessed:
        return False, "rating: TFMA did not bless the model (RMSE bound or regression)"
    if candidate < floor:
        return False, f"retrieval: {metric} {candidate:.4f} under the floor {floor:.4f}"
    if baseline is not None and candidate < baseline - tolerance:
        return False, (f"retrieval: {metric} {candidate:.4f} regressed from the blessed "
                       f"model's {baseline:.4f} by more than {tolerance:.4f}")
    if baseline is None:
        return True, f"rating and retrieval pass ({metric} {candidate:.4f}; no baseline yet)"
    return True, f"rating and retrieval pass ({metric} {candidate:.4f} vs {baseline:.4f})"


@component
def RetrievalEvaluator(
    examples: InputArtifact[standard_artifacts.Examples],
    model: InputArtifact[standard_artifacts.Model],
    rating_blessing: InputArtifact[standard_artifacts.ModelBlessing],
    evaluation: OutputArtifact[RetrievalEvaluation],
    blessing: OutputArtifact[standard_artifacts.ModelBlessing],
    baseline_model: InputArtifact[standard_artifacts.Model] = None,  # optional
    split: Parameter[str] = F.EVAL_SPLIT,
    max_examples: Parameter[int] = 200_000,
    metric: Parameter[str] = "top_100_accuracy",
    tolerance: Parameter[float] = 0.01,
    floor: Parameter[float] = 0.0,
    protocol: Parameter[str] = HELD_OUT,
):
    """Retrieval metrics of `model` (and `baseline_model`) on `split` by `protocol`; the
    final blessing.

    HELD_OUT: each held-out rating ranked for its user at its time, "filtered" without the
    movies the user rated in training, plus per-user recall / nDCG. REPLAY (a time
    split): the held-out ratings replayed in time order, each a request that knows its
    user's earlier ratings (train and replay), "filtered" without them, and the replay's
    rmse / mae through serving_default with the same history (trainer/replay.py).
    """
    from trainer import evaluation as ev  # TensorFlow loads only when the component runs
    from trainer import saved_model

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    split_uri = artifact_utils.get_split_uri([examples], split)
    train_uri = artifact_utils.get_split_uri([examples], F.TRAIN_SPLIT)
    train_rated = (ev.rated_movies(ev.serialized_batches(train_uri))
                   if protocol == HELD_OUT else None)

    def measure(artifact):
        served = saved_model.load(path_utils.serving_model_path(artifact.uri))
        if protocol == REPLAY:
            # the replay's RMSE too: each rating given its history (TFMA's examples have
            # none), so `inspect metrics` shows the protocol's rmse
            return ev.evaluate_replay(served, ev.serialized_batches(train_uri),
                                      ev.serialized_batches(split_uri), rating=True,
                                      max_requests=max_examples)
        return ev.evaluate(served, ev.serialized_batches(split_uri, max_examples=max_examples),
                           rating=False, train_rated=train_rated)

    metrics = measure(model)
    baseline = measure(baseline_model) if baseline_model is not None else None
    import tensorflow as tf

    tf.io.gfile.makedirs(evaluation.uri)
    with tf.io.gfile.GFile(os.path.join(evaluation.uri, METRICS_FILE), "w") as f:
        json.dump({**metrics, **({f"baseline_{k}": v for k, v in baseline.items()}
                                 if baseline else {})}, f, indent=1, sort_keys=True)
    for name, value in metrics.items():
        if name != "protocol":
            evaluation.set_float_custom_property(name, float(value))
    evaluation.set_string_custom_property("split", split)
    evaluation.set_string_custom_property("protocol", protocol)

    blessed, reason = decide(
        rating_blessing.get_int_custom_property("blessed") == 1, metrics[metric],
        baseline[metric] if baseline else None, tolerance, floor, metric)
    io_utils.write_string_file(os.path.join(
        blessing.uri, evaluator_constants.BLESSED_FILE_NAME if blessed
        else evaluator_constants.NOT_BLESSED_FILE_NAME), reason)
    blessing.set_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY,
                                     1 if blessed else 0)
    blessing.set_string_custom_property("reason", reason)
    blessing.set_string_custom_property(
        evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, model.uri)
    blessing.set_int_custom_property(
        evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, model.id)
    if baseline_model is not None:
        blessing.set_string_custom_property(
            evaluator_constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY, baseline_model.uri)
        blessing.set_int_custom_property(
            evaluator_constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY, baseline_model.id)
