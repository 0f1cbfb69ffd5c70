"""Which code autograph rewrites when a tf.function traces the model.

Autograph converts a traced function's Python control flow into graph ops, function by
function, recursively, except for modules its rules exclude. Its rules exclude Keras 2 under
the name it had inside TensorFlow (`keras`), but not under the name TFRS needs it by here
(`tf_keras`). So every trace of a train step, a signature or a Keras layer also rewrote
Keras's own engine, optimizer, losses and metrics, code written to run in graph mode as is:
on the tests' tiny data, 20 s of a 3-epoch fit's 21 s was that first trace.

`skip_keras_internals()` adds the rule autograph lacks. Keras still converts each layer's
`call` (the layers of trainer/ keep their autograph), and the traced graphs are the same:
training gives the same losses to the last digit (benchmarks/tracing.py)."""

from __future__ import annotations

KERAS_2_MODULE = "tf_keras"


def is_keras_rule(rule) -> bool:
    """Whether `rule`, one of autograph's conversion rules, is the one added here."""
    from tensorflow.python.autograph.core import config

    return isinstance(rule, config.DoNotConvert) and rule.matches(KERAS_2_MODULE)


def skip_keras_internals() -> None:
    """Adds 'do not convert tf_keras' to autograph's rules (once; later calls do nothing)."""
    from tensorflow.python.autograph.core import config

    if not any(map(is_keras_rule, config.CONVERSION_RULES)):
        config.CONVERSION_RULES = ((config.DoNotConvert(KERAS_2_MODULE),)
                                   + tuple(config.CONVERSION_RULES))


def converts(function) -> bool:
    """Whether autograph would rewrite `function` when a traced function calls it."""
    from tensorflow.python.autograph.impl import conversion

    return not conversion.is_allowlisted(function)
