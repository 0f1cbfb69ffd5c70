"""Loading an exported movierec SavedModel: the one loader of the project.

The pipeline's evaluators, `movierec evaluate`, `recommend` / `rate`, the server, warm start
and the benchmarks all load a model through `load(path)`, which first makes sure of what
such a model needs: Keras 2 (TF_USE_LEGACY_KERAS, before TensorFlow loads) and ScaNN's
TensorFlow ops (models exported with `--index scann` hold ScaNN ops; registering them
needs `import scann`). TFRS itself is not imported, which keeps the server light.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported

import tensorflow as tf  # noqa: E402


def load(path: str):
    """tf.saved_model.load of a version directory, with ScaNN's ops registered first
    (when ScaNN is installed; without it only a brute-force model loads)."""
    try:
        import scann  # noqa: F401 - registers ScaNN's TensorFlow ops
    except ImportError:
        pass
    return tf.saved_model.load(path)
