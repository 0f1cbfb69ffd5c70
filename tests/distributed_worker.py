"""One training process for tests/test_distributed.py: train_and_export with the given
hyperparameters, the summary written as JSON. Runs in its own process, so that logical
devices and TF_CONFIG are set before TensorFlow initializes (and the test process keeps
its own TensorFlow untouched).

    python tests/distributed_worker.py ARGS.json
ARGS: train, catalog, transform, serving_dir, summary (paths), hparams (dict),
cpu_devices (logical CPU devices to split the one CPU into, 0: as is), base_model
(optional: an export to warm-start from)."""

import json
import logging
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(path):
    with open(path) as f:
        args = json.load(f)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stdout)
    import tensorflow as tf

    if args.get("cpu_devices"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args["cpu_devices"])
    from trainer.model import HParams
    from trainer.run import train_and_export

    summary = train_and_export([args["train"]], [args["catalog"]], args["transform"],
                               args["serving_dir"], HParams.from_dict(args["hparams"]),
                               base_model=args.get("base_model"))
    with open(args["summary"], "w") as f:
        json.dump(summary, f)


if __name__ == "__main__":
    main(sys.argv[1])
