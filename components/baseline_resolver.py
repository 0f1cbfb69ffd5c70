"""The baseline a new model is evaluated against: the latest blessed model that is not the
candidate itself.

TFX's LatestBlessedModelStrategy returns the latest blessed model, which after an
unchanged re-run is the very model the (cached) Trainer hands over again: the Evaluator's
inputs then differ from the first run's, so it re-executes, compares the model with itself
and the Pusher pushes it once more. Leaving the candidate out keeps an unchanged re-run's
evaluation inputs identical to the first run's, so every component is a cache hit.
"""

from __future__ import annotations

from tfx import types
from tfx.components.evaluator import constants
from tfx.dsl.components.common import resolver

MODEL = "model"
BLESSING = "model_blessing"
CANDIDATE = "candidate"


class LatestBlessedBaselineStrategy(resolver.ResolverStrategy):
    """Resolves `model`/`model_blessing` to the newest blessed Model whose id is not in
    `candidate` (empty lists when there is none); `candidate` passes through."""

    def resolve_artifacts(self, store, input_dict: dict[str, list[types.Artifact]]
                          ) -> dict[str, list[types.Artifact]] | None:
        candidates = list(input_dict.get(CANDIDATE, []))
        excluded = {a.id for a in candidates}
        blessings = {
            b.get_int_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY): b
            for b in input_dict.get(BLESSING, [])
            if b.get_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY) == 1}
        for model in sorted(input_dict.get(MODEL, []), key=lambda a: a.id, reverse=True):
            if model.id in blessings and model.id not in excluded:
                return {MODEL: [model], BLESSING: [blessings[model.id]],
                        CANDIDATE: candidates}
        return {MODEL: [], BLESSING: [], CANDIDATE: candidates}
