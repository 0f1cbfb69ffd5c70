"""movierec serving: a TF-Serving-compatible REST server for the pushed models."""

import os

# TFRS 0.7.3 needs Keras 2 (tf-keras); set before TensorFlow is first imported.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
