"""create_pipeline(config): the movierec DAG, read top to bottom."""

from __future__ import annotations

import tensorflow_model_analysis as tfma
# Direct imports, not `tfx.v1`: that one also loads the Google Cloud extensions (~6 s of
# every command's start-up, a cached re-run's biggest cost).
from tfx.components import (Evaluator, ExampleValidator, Pusher, StatisticsGen, Trainer,
                            Transform, Tuner)
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import (
    LatestBlessedModelStrategy)
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import pusher_pb2, trainer_pb2, transform_pb2
from tfx.types import standard_artifacts
from tfx.types.channel import Channel

from components.baseline_resolver import LatestBlessedBaselineStrategy
from components.movielens_example_gen.component import MovieLensExampleGen
from components import retrieval_evaluator as retrieval_evaluator_lib
from components.movielens_example_gen import splits
from components.retrieval_evaluator import RetrievalEvaluator
from components.validation_gate import SchemaGate
from pipeline import configs
from trainer import features as F
from trainer import signatures as S

RETRIEVAL_EVALUATOR_ID = "RetrievalEvaluator"
# Components that run Beam pipelines (they get config.all_beam_args()).
BEAM_COMPONENTS = ("MovieLensExampleGen", "StatisticsGen", "Transform", "Evaluator")


def eval_config(config: configs.PipelineConfig) -> tfma.EvalConfig:
    """Rating-task evaluation; blessing needs RMSE under its bound and no regression."""
    rmse_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(
            upper_bound={"value": config.rmse_upper_bound}),
        # Ignored on the first run, when no blessed baseline exists yet.
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.LOWER_IS_BETTER,
            absolute={"value": config.rmse_tolerance}))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name=S.SERVING_DEFAULT, label_key=F.RATING,
            prediction_key=S.RATING, model_type=tfma.TF_GENERIC)],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name="MeanAbsoluteError"),
            tfma.MetricConfig(class_name="MeanSquaredError"),
            tfma.MetricConfig(class_name="RootMeanSquaredError", threshold=rmse_threshold),
        ])])


def _final_blessings() -> dict:
    """Channels of every Model and of the final (rating + retrieval) blessings: TFMA's
    blessing alone does not make a model blessed."""
    return dict(
        model=Channel(type=standard_artifacts.Model),
        model_blessing=Channel(type=standard_artifacts.ModelBlessing,
                                       producer_component_id=RETRIEVAL_EVALUATOR_ID))


def create_pipeline(config: configs.PipelineConfig) -> Pipeline:
    # Raw MovieLens files -> rating examples (train/eval) + the full movie catalog.
    example_gen = MovieLensExampleGen(
        data_dir=config.data_dir, layout=config.layout or None, split=config.split,
        seed=config.seed, eval_fraction=config.eval_fraction,
        input_fingerprint=config.input_fingerprint,
        code=configs.code_fingerprint(*configs.EXAMPLE_GEN_CODE))
    examples = example_gen.outputs["examples"]

    # Statistics, the curated schema of this layout, and a gate that stops on anomalies.
    statistics_gen = StatisticsGen(
        examples=examples, exclude_splits=[F.CATALOG_SPLIT])
    schema_gen = ImportSchemaGen(schema_file=config.schema_file)
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"],
        schema=schema_gen.outputs["schema"], exclude_splits=[F.CATALOG_SPLIT])
    schema_gate = SchemaGate(anomalies=example_validator.outputs["anomalies"],
                             schema=schema_gen.outputs["schema"])

    # Vocabularies, buckets and normalization, analyzed on the train split.
    transform = Transform(
        examples=examples,
        schema=schema_gate.outputs["validated_schema"],
        preprocessing_fn="trainer.preprocessing.preprocessing_fn",
        splits_config=transform_pb2.SplitsConfig(analyze=[F.TRAIN_SPLIT]),
        materialize=False, disable_statistics=True,
        custom_config={
            **({F.TIMESTAMP_BUCKETS_CONFIG: config.timestamp_buckets}
               if config.timestamp_buckets is not None else {}),
            "code": configs.code_fingerprint(*configs.TRANSFORM_CODE)})

    # Optionally, a hyperparameter search on a validation split carved out of train.
    tuner = None
    if config.tune_trials:
        tuner = Tuner(
            tuner_fn="trainer.tuning.tuner_fn", examples=examples,
            transform_graph=transform.outputs["transform_graph"],
            train_args=trainer_pb2.TrainArgs(splits=[F.TRAIN_SPLIT]),
            eval_args=trainer_pb2.EvalArgs(splits=[F.TRAIN_SPLIT]),  # never the eval split
            custom_config={"hparams": dict(config.hparams), "trials": config.tune_trials,
                           "code": configs.code_fingerprint(*configs.TUNER_CODE)})

    # Optionally, warm start from the latest blessed model.
    warm_start = None
    if config.warm_start:
        warm_start = Resolver(
            strategy_class=LatestBlessedModelStrategy,
            **_final_blessings()).with_id("warm_start_model_resolver")

    # The multitask TFRS model, exported with its serving signatures.
    trainer = Trainer(
        run_fn="trainer.run.run_fn",
        examples=examples,
        transform_graph=transform.outputs["transform_graph"],
        hyperparameters=tuner.outputs["best_hyperparameters"] if tuner else None,
        base_model=warm_start.outputs["model"] if warm_start else None,
        custom_config={"hparams": dict(config.hparams),
                       "code": configs.code_fingerprint(*configs.TRAINER_CODE)})
    model = trainer.outputs["model"]

    # Rating metrics and blessing against the latest blessed model (TFMA) ...
    blessed = _final_blessings()
    if config.baseline_excludes_candidate:
        # the candidate itself never is its own baseline: an unchanged re-run stays cached
        latest_blessed = Resolver(
            strategy_class=LatestBlessedBaselineStrategy, candidate=model, **blessed)
    else:  # TFX's own strategy, for orchestrators that support no other (Kubeflow V2)
        latest_blessed = Resolver(
            strategy_class=LatestBlessedModelStrategy, **blessed)
    latest_blessed = latest_blessed.with_id("latest_blessed_model_resolver")
    evaluator = Evaluator(
        examples=examples, model=model, baseline_model=latest_blessed.outputs["model"],
        eval_config=eval_config(config), example_splits=[F.EVAL_SPLIT])
    # ... then retrieval metrics over the full catalog, against the same baseline; the
    # final blessing needs both tasks to pass.
    retrieval_evaluator = RetrievalEvaluator(
        examples=examples, model=model, baseline_model=latest_blessed.outputs["model"],
        rating_blessing=evaluator.outputs["blessing"], split=F.EVAL_SPLIT,
        max_examples=config.retrieval_max_examples, metric=config.retrieval_metric,
        tolerance=config.retrieval_tolerance, floor=config.retrieval_floor,
        protocol=retrieval_evaluator_lib.REPLAY if config.split == splits.TIME
        else retrieval_evaluator_lib.HELD_OUT,
    ).with_id(RETRIEVAL_EVALUATOR_ID)

    # Only a blessed model reaches the serving directory.
    pusher = Pusher(
        model=model, model_blessing=retrieval_evaluator.outputs["blessing"],
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(
                base_directory=config.serving_dir)))

    return Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, schema_gate,
                    transform, *([tuner] if tuner else []),
                    *([warm_start] if warm_start else []), trainer, latest_blessed,
                    evaluator, retrieval_evaluator, pusher],
        enable_cache=config.enable_cache,
        metadata_connection_config=config.metadata_connection_config(),
        beam_pipeline_args=config.all_beam_args())
