"""TFLite export of a compressed model, with the converter's sparsity optimisation."""

from __future__ import annotations

import os
import tempfile

import keras
from absl import logging

from sqjl_tf._files import write_bytes
from sqjl_tf._quiet import tensorflow_info_off


def save_tflite(model: keras.Model, path: str) -> int:
    """Converts ``model`` to TFLite with ``EXPERIMENTAL_SPARSITY`` and writes it atomically.

    Args:
        model: a Keras 3 model (usually the compressed one).
        path: output ``.tflite`` file.

    Returns:
        The file size in bytes.
    """
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "saved_model")
        with tensorflow_info_off():
            model.export(saved, verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(saved)
            converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
            flatbuffer = converter.convert()
    write_bytes(path, flatbuffer)
    logging.info("TFLite model: %s (%d bytes)", path, len(flatbuffer))
    return len(flatbuffer)
