"""AS-Speed on two virtual CPU devices against one device; run in its own process.

`test_multi_device.py` runs this with `KERAS_BACKEND` set: on JAX it uses
`keras.distribution.DataParallel`, on TensorFlow `tf.distribute.MirroredStrategy`.
Arguments: the step's mode (`graph`, `jit` or `eager`), `skip_masked`
(`off`, `on` or `buffer`) and optionally `prune` (`prune_masked=0.5`, 4
epochs); a setting that raises a `ValueError` under the distribution prints
`{"error": message}`.
The device count must be set before the backend starts, hence a process of
its own. It prints one JSON line comparing the two runs.
"""

import contextlib
import json
import os
import sys

BACKEND = os.environ["KERAS_BACKEND"]
if BACKEND == "jax":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_as_softmax import AdaptiveModel  # noqa: E402
from keras_as_softmax import SparseASSoftmaxCrossentropy  # noqa: E402

if BACKEND == "tensorflow":
    import tensorflow as tf

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )

NUM_CLASSES, BATCH = 4, 8


def scripted_data(num_batches=12):
    """Masked rows sit in the first half of a batch, so the first device sees
    more of them than the second: only a global count gives the right window."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((num_batches * BATCH, NUM_CLASSES)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, len(x)).astype("int32")
    masked_counts = [1, 4, 0, 2, 4, 3, 4, 6, 0, 1, 4, 2][:num_batches]
    for batch, masked in enumerate(masked_counts):
        rows = np.arange(batch * BATCH, batch * BATCH + masked)
        x[rows, y[rows]] = 20.0
    return x, y


def train(distributed, mode, skip_masked, prune_masked=0.0):
    scope = contextlib.nullcontext()
    if BACKEND == "jax":
        keras.distribution.set_distribution(
            keras.distribution.DataParallel() if distributed else None
        )
    elif distributed:
        scope = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"]).scope()
    with scope:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((NUM_CLASSES,))
        correction = keras.layers.Dense(NUM_CLASSES, kernel_initializer="zeros")(inputs)
        model = AdaptiveModel(
            inputs,
            keras.layers.Add()([inputs, correction]),
            max_accumulation_steps=3,
            skip_masked=skip_masked,
            prune_masked=prune_masked,
            prune_seed=0,
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=SparseASSoftmaxCrossentropy(delta=0.5),
            jit_compile=mode == "jit",
            run_eagerly=mode == "eager",
        )
    windows, sub_batches = [], []

    def record_batch(batch, logs):
        windows.append(int(logs["accumulation_steps"]))
        if "sub_batch_size" in logs:
            sub_batches.append(int(logs["sub_batch_size"]))

    record = keras.callbacks.LambdaCallback(on_train_batch_end=record_batch)
    x, y = scripted_data()
    history = model.fit(
        x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[record],
        epochs=4 if prune_masked else 1,
    )
    return {
        "pruned": history.history.get("pruned_fraction"),
        "windows": windows,
        "sub_batches": sub_batches,
        "masked_ratio": float(history.history["masked_ratio"][-1]),
        "updates": int(model.optimizer.iterations.numpy()),
        "weights": [w.tolist() for w in model.get_weights()],
    }


def main():
    mode, skip = sys.argv[1], {"off": False, "on": True, "buffer": "buffer"}[sys.argv[2]]
    prune = 0.5 if sys.argv[3:] == ["prune"] else 0.0
    single = train(distributed=False, mode=mode, skip_masked=skip, prune_masked=prune)
    try:
        multi = train(distributed=True, mode=mode, skip_masked=skip, prune_masked=prune)
    except ValueError as error:  # A setting that cannot run distributed.
        print(json.dumps({"error": str(error)}))
        return
    weight_error = max(
        float(np.max(np.abs(np.array(a) - np.array(b))))
        for a, b in zip(single["weights"], multi["weights"])
    )
    print(
        json.dumps(
            {
                "devices": 2,
                "single": {k: v for k, v in single.items() if k != "weights"},
                "multi": {k: v for k, v in multi.items() if k != "weights"},
                "max_weight_difference": weight_error,
            }
        )
    )


if __name__ == "__main__":
    main()
