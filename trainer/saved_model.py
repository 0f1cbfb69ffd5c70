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


def call(model, name: str, **inputs) -> dict:
    """Calls signature `name` of a loaded model with `inputs` (tensors or arrays, [batch]
    first), the inputs it leaves out that a request may leave out
    (trainer/signatures.py's OPTIONAL_INPUTS: no history, no demographics, ...) filled in
    for the batch, as `movierec serve` fills them."""
    import numpy as np

    from trainer import signatures as S

    fn = model.signatures[name]
    specs = fn.structured_input_signature[1]
    inputs = {k: tf.convert_to_tensor(v, dtype=specs[k].dtype) if k in specs else v
              for k, v in inputs.items()}
    batch = int(next(iter(inputs.values())).shape[0]) if inputs else 1
    for key, value in S.OPTIONAL_INPUTS.get(name, {}).items():
        if key in specs and key not in inputs:
            spec = specs[key]
            array = np.array([value] * batch, dtype=object if spec.dtype == tf.string
                             else spec.dtype.as_numpy_dtype)
            if spec.shape.rank == 2:
                array = array.reshape(batch, -1)
            inputs[key] = tf.constant(array, spec.dtype)
    return fn(**inputs)


def load_session(path: str, threads: int = 0):
    """(Session, MetaGraphDef): a version loaded as a TF1 graph into a Session of its own,
    for serving. The signatures then run as one graph: Transform's function and the
    towers' are inlined into the caller and pruned to what the signature reads (Grappler
    keeps a loaded TF2 function's calls as calls, which runs all 238 nodes of Transform's
    function per request): about a quarter less CPU per call, and about half with the
    calls on the caller's thread (serving/model.py). threads: TensorFlow's inter- and
    intra-op threads (0: one per core)."""
    from tensorflow.python.saved_model import tag_constants
    from tensorflow.python.util import deprecation

    try:
        import scann  # noqa: F401 - registers ScaNN's TensorFlow ops
    except ImportError:
        pass
    config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=threads,
                                      intra_op_parallelism_threads=threads)
    config.graph_options.optimizer_options.do_function_inlining = True
    # a pool of the session's own, so that a call may run on its caller's thread instead
    # (RunOptions.inter_op_thread_pool = -1: serving/model.py's GraphSignature)
    config.session_inter_op_thread_pool.add().num_threads = threads
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=config)
    try:
        with graph.as_default(), deprecation.silence():
            meta_graph = tf.compat.v1.saved_model.loader.load(
                session, [tag_constants.SERVING], path)
    except BaseException:
        session.close()
        raise
    return session, meta_graph
