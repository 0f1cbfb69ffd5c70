"""What autograph rewrites when the model is traced (trainer/tracing.py): Keras 2's own code
is left as written, as autograph leaves the `keras` package; the layers of trainer/ and any
layer's `call` are still converted, so a Python `if` on a tensor inside one still traces."""

import numpy as np
import tensorflow as tf
import tf_keras

from trainer import model  # importing the model adds the rule
from trainer import pooling, tracing


def test_keras_engine_optimizers_and_losses_are_left_as_written():
    for function in (tf_keras.layers.Layer.__call__, tf_keras.Model.train_step,
                     tf_keras.optimizers.Adam.apply_gradients,
                     tf_keras.losses.MeanSquaredError.__call__):
        assert not tracing.converts(function), function


def test_the_layers_of_the_trainer_are_still_converted():
    assert tracing.converts(pooling.MeanPooling.call)
    assert tracing.converts(model.MovieRecModel.compute_loss)


def test_the_rule_is_added_once():
    from tensorflow.python.autograph.core import config

    before = tuple(config.CONVERSION_RULES)
    tracing.skip_keras_internals()
    assert tuple(config.CONVERSION_RULES) == before


class _Flip(tf_keras.layers.Layer):
    """Flips a batch whose sum is negative: a Python `if` on a tensor."""

    def call(self, x):
        if tf.reduce_sum(x) < 0:
            return -x
        return x


def test_a_python_if_on_a_tensor_in_a_layer_still_traces():
    layer = _Flip()

    @tf.function
    def apply(x):
        return layer(x)

    np.testing.assert_array_equal(apply(tf.constant([-1.0, -2.0])).numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(apply(tf.constant([3.0, -1.0])).numpy(), [3.0, -1.0])
