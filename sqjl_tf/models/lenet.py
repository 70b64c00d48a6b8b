"""Caffe LeNet-5 for MNIST-like 28x28x1 inputs (the reference's ``caffelenet``)."""

from __future__ import annotations

from typing import Optional, Sequence

import keras

from sqjl_tf.models import _blocks

DEFAULT_INPUT_SHAPE = (28, 28, 1)


def caffelenet(
    num_classes: int = 10,
    input_shape: Optional[Sequence[int]] = None,
    dropout: float = 0.0,
    name: str = "caffelenet",
) -> keras.Model:
    """Builds Caffe's LeNet-5 (the ``caffelenet`` of the reference).

    Layout: Conv 20@5x5 -> MaxPool 2 -> Conv 50@5x5 -> MaxPool 2 -> Flatten ->
    Dense 500 + ReLU -> Dense ``num_classes``. As in the reference (and Caffe's
    ``lenet.prototxt``) there is no activation after the convolutions. All layers
    have biases. With 28x28x1 inputs and 10 classes the kernels hold
    500 + 25,000 + 400,000 + 5,000 = 430,500 weights.

    Args:
        num_classes: Number of output logits.
        input_shape: Input shape ``(H, W, C)``, channels_last. Defaults to
            ``(28, 28, 1)``.
        dropout: Rate of an optional Dropout before the last Dense layer (the
            reference has none; 0 adds no layer).
        name: Model name.

    Returns:
        A built functional ``keras.Model`` that outputs logits.

    Raises:
        ValueError: If an argument is invalid.

    Example:

    >>> model = caffelenet()
    >>> model.output_shape
    (None, 10)
    """
    num_classes, dropout, inputs = _blocks._prologue(
        num_classes, dropout, input_shape, DEFAULT_INPUT_SHAPE
    )
    x = keras.layers.Conv2D(20, 5, padding="valid", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(2, strides=2, name="pool1")(x)
    x = keras.layers.Conv2D(50, 5, padding="valid", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, strides=2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(500, name="fc1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="fc2")(x)
    return keras.Model(inputs, outputs, name=name)
