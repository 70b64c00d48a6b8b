"""ImageNet ResNet-18 (torchvision layout) for 224x224x3 inputs."""

from __future__ import annotations

from typing import Optional, Sequence

import keras

from sqjl_tf.models import _blocks

DEFAULT_INPUT_SHAPE = (224, 224, 3)


def resnet18(
    num_classes: int = 1000,
    input_shape: Optional[Sequence[int]] = None,
    dropout: float = 0.0,
    name: str = "resnet18",
) -> keras.Model:
    """Builds ResNet-18 as ``torchvision.models.resnet18``.

    Stem: Conv 64@7x7 stride 2 pad 3 + BN + ReLU, MaxPool 3x3 stride 2 pad 1.
    Four stages of two basic blocks with 64/128/256/512 channels and strides
    1/2/2/2; projection shortcuts (1x1 conv + BN) where the shape changes;
    global average pooling and a Dense classifier. 11,689,512 trainable
    parameters with 1000 classes.

    Args:
        num_classes: Number of output logits.
        input_shape: Input shape ``(H, W, C)``; defaults to ``(224, 224, 3)``.
        dropout: Rate of an optional Dropout before the classifier (torchvision
            has none; 0 adds no layer).
        name: Model name.

    Returns:
        A built functional ``keras.Model`` that outputs logits.

    Raises:
        ValueError: If an argument is invalid.

    Example:

    >>> resnet18(num_classes=10, input_shape=(64, 64, 3)).output_shape
    (None, 10)
    """
    num_classes, dropout, inputs = _blocks._prologue(
        num_classes, dropout, input_shape, DEFAULT_INPUT_SHAPE
    )
    x = _blocks._conv(inputs, 64, 7, strides=2, padding=3, name="conv1")
    x = _blocks._bn(x, name="bn1")
    x = keras.layers.ReLU(name="relu1")(x)
    x = _blocks._max_pool(x, 3, 2, padding=1, name="maxpool")
    for stage, filters in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            strides = 2 if stage > 1 and block == 0 else 1
            x = _blocks._basic_block(x, filters, strides, name=f"layer{stage}_block{block}")
    outputs = _blocks._classifier(x, num_classes, dropout)
    return keras.Model(inputs, outputs, name=name)
