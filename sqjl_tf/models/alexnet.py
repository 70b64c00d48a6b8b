"""AlexNet with the torchvision layout (channels_last), for 224x224x3 inputs."""

from __future__ import annotations

from typing import Optional, Sequence

import keras

from sqjl_tf.models import _blocks

DEFAULT_INPUT_SHAPE = (224, 224, 3)


def alexnet(
    num_classes: int = 1000,
    input_shape: Optional[Sequence[int]] = None,
    dropout: float = 0.5,
    name: str = "alexnet",
) -> keras.Model:
    """Builds AlexNet as ``torchvision.models.alexnet`` (the reference's model).

    Features: Conv 64@11x11 stride 4 pad 2 + ReLU -> MaxPool 3/2 -> Conv
    192@5x5 pad 2 + ReLU -> MaxPool 3/2 -> Conv 384@3x3 + ReLU -> Conv 256@3x3 +
    ReLU -> Conv 256@3x3 + ReLU -> MaxPool 3/2. Then adaptive average pooling to
    6x6, flatten, Dropout(``dropout``) -> Dense 4096 + ReLU -> Dropout(``dropout``)
    -> Dense 4096 + ReLU -> Dense ``num_classes``. Layers have biases and no
    BatchNorm. With 1000 classes the kernels hold 61,090,496 weights (61,100,840
    parameters with the biases).

    The flatten order is channels_last (H, W, C), unlike PyTorch's (C, H, W):
    converting ``fc6`` weights from PyTorch needs a permutation.

    Args:
        num_classes: Number of output logits.
        input_shape: Input shape ``(H, W, C)``; defaults to ``(224, 224, 3)``.
            Other sizes work down to 63x63 (the adaptive pooling yields 6x6).
        dropout: Dropout rate of the classifier (torchvision: 0.5). 0 adds no
            Dropout layers.
        name: Model name.

    Returns:
        A built functional ``keras.Model`` that outputs logits.

    Raises:
        ValueError: If an argument is invalid.

    Example:

    >>> alexnet(num_classes=10).output_shape
    (None, 10)
    """
    num_classes, dropout, inputs = _blocks._prologue(
        num_classes, dropout, input_shape, DEFAULT_INPUT_SHAPE
    )
    x = keras.layers.ZeroPadding2D(2, name="conv1_pad")(inputs)
    x = keras.layers.Conv2D(64, 11, strides=4, name="conv1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = keras.layers.ZeroPadding2D(2, name="conv2_pad")(x)
    x = keras.layers.Conv2D(192, 5, name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool2")(x)
    x = keras.layers.Conv2D(384, 3, padding="same", name="conv3")(x)
    x = keras.layers.ReLU(name="relu3")(x)
    x = keras.layers.Conv2D(256, 3, padding="same", name="conv4")(x)
    x = keras.layers.ReLU(name="relu4")(x)
    x = keras.layers.Conv2D(256, 3, padding="same", name="conv5")(x)
    x = keras.layers.ReLU(name="relu5")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool5")(x)
    x = keras.layers.AdaptiveAveragePooling2D((6, 6), name="avgpool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout6")(x)
    x = keras.layers.Dense(4096, name="fc6")(x)
    x = keras.layers.ReLU(name="relu6")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout7")(x)
    x = keras.layers.Dense(4096, name="fc7")(x)
    x = keras.layers.ReLU(name="relu7")(x)
    outputs = keras.layers.Dense(num_classes, name="fc8")(x)
    return keras.Model(inputs, outputs, name=name)
