"""Runs the same ADMM compression on 1 device and on MirroredStrategy over 2 CPUs.

Prints one JSON line: for each importance given, the max weight difference and the
bits/nnz of each run. Run as a subprocess: the logical CPU devices must be set before TF
starts. Arguments: the sparse projection's importances ("magnitude", "fisher").
"""

import json
import sys

import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import sqjl_tf  # noqa: E402
from sqjl_tf.loop import train_loop  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
rng = np.random.default_rng(0)
x = rng.standard_normal((256, 16)).astype("float32")  # 4 steps of 64 an epoch
y = np.argmax(x @ rng.standard_normal((16, 4)), 1).astype("int32")
keras.utils.set_random_seed(0)


def build():
    return keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)]
    )


init = build().get_weights()


def run(strategy, custom_loop, importance):
    with strategy.scope():
        model = build()
        model.set_weights(init)
        cb = sqjl_tf.ADMMCallback(nnz_budget=0.2, bit_budget=4, rho=0.05, projint=4, dualint=8,
                                  importance=importance)
        opt = sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), cb, weight_decay=1e-4)
        if custom_loop:
            state = cb.build(model)
            data = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
            train_loop(model, opt, data, 2, LOSS, 64, state=state, strategy=strategy)
        else:
            model.compile(optimizer=opt, loss=LOSS)
            model.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0, callbacks=[cb])
            state = cb.state
    return [w.numpy() for w in model.weights], state.current_bits, state.current_nnz


MIRRORED = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])  # one: its collectives' keys


def compare(importance):
    single = run(tf.distribute.OneDeviceStrategy("/cpu:0"), False, importance)
    mirrored = MIRRORED
    results = {"replicas": mirrored.num_replicas_in_sync, "single": single[1:]}
    for name, custom in (("mirrored_fit", False), ("mirrored_loop", True), ("single_loop", True)):
        strategy = (mirrored if name.startswith("mirrored")
                    else tf.distribute.OneDeviceStrategy("/cpu:0"))
        weights, bits, nnz = run(strategy, custom, importance)
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(single[0], weights))
        results[name] = {"bits": bits, "nnz": nnz, "max_weight_diff": diff}
    return results


sys.stdout.write(json.dumps({importance: compare(importance) for importance in sys.argv[1:]})
                 + "\n")
