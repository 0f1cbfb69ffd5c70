"""Tuner module: tuner_fn for TFX's Tuner component (keras-tuner random search).

The search runs on a validation split carved out of the *training* split (never the eval
split) and minimises the validation RMSE plus the validation retrieval loss per example
(both tasks count). The space is declared once, in SEARCH_SPACE; the Trainer takes the best
values through its `hyperparameters` input (see trainer.run.hparams_for).
"""

from __future__ import annotations

import keras_tuner
import tensorflow_transform as tft
from tfx.components.tuner.component import TunerFnResult

from trainer import data, fit
from trainer.model import HParams, Vocab

# name -> the values tried. Every name is a field of trainer.model.HParams.
SEARCH_SPACE = {
    "learning_rate": [0.002, 0.005, 0.01],
    "dropout": [0.0, 0.3, 0.5],
    "session_tau": [0.0, 600.0, 1800.0, 7200.0],
    "embedding_dim": [32, 64],
    "history_len": [100, 200],
}
OBJECTIVE = fit.VAL_OBJECTIVE


class MovieRecTuner(keras_tuner.engine.base_tuner.BaseTuner):
    """Random search that trains movierec's tf-keras model itself.

    keras-tuner's Keras `Tuner` expects a Keras 3 model (Keras 3 is installed beside
    tf-keras), so this tuner drives the trials directly: each trial builds the model from
    the trial's values, fits it and reports the last epoch's objective."""

    def __init__(self, build_model, batch_size: int, **kwargs):
        super().__init__(**kwargs)
        self._build_model, self._batch = build_model, batch_size

    def run_trial(self, trial, x=None, validation_data=None, epochs=1, **_):
        model = self._build_model(trial.hyperparameters.values)
        history = model.fit(x, validation_data=validation_data, epochs=epochs, verbose=0,
                            callbacks=[fit.ValidationObjective(self._batch)])
        return {OBJECTIVE: float(history.history[OBJECTIVE][-1])}

    def save_model(self, trial_id, model, step=0):
        """Trials' models are not kept: the Trainer retrains with the best values."""

    def load_model(self, trial):
        raise NotImplementedError("movierec's tuner keeps hyperparameters, not models")


def search_space() -> keras_tuner.HyperParameters:
    space = keras_tuner.HyperParameters()
    for name, choices in SEARCH_SPACE.items():
        space.Choice(name, choices)
    return space


def tuner_fn(fn_args) -> TunerFnResult:
    """TFX Tuner entry point."""
    config = fn_args.custom_config or {}
    base_values = dict(config.get("hparams") or {})
    base = HParams.from_dict(base_values)
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    vocab = Vocab.from_tft_output(tft_output)
    ratings, _ = data.load_ratings(data.tfrecord_files(fn_args.train_files),
                                   tft_output.transform_features_layer())
    train, validation = data.split_validation(ratings, base.validation_fraction or 0.1,
                                              base.seed)

    def build(values):
        return fit.build_model(train, vocab, HParams.from_dict({**base_values, **values}))[0]

    oracle = keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective(OBJECTIVE, "min"),
        max_trials=int(config.get("trials", 4)), hyperparameters=search_space(),
        seed=base.seed)
    tuner = MovieRecTuner(build, base.batch_size, oracle=oracle, overwrite=True,
                          directory=fn_args.working_dir, project_name="movierec_tuning")
    return TunerFnResult(tuner=tuner, fit_kwargs={
        "x": data.training_dataset(train, base),
        "validation_data": data.training_dataset(validation, base, shuffle=False),
        "epochs": base.epochs_for(len(train)),
    })
