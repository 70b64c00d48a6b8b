"""Tests of sqjl_tf.models: layouts, parameter counts, output shapes."""

import numpy as np
import pytest

import keras

from sqjl_tf import models


def _kernel_count(model):
    return sum(
        int(np.prod(v.shape))
        for v in model.weights
        if v.path.endswith("kernel") or v.path.endswith("depthwise_kernel")
    )


def _trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def _forward(model):
    x = np.random.default_rng(0).normal(size=(1,) + tuple(model.input_shape[1:]))
    return keras.ops.convert_to_numpy(model(x.astype("float32"), training=False))


def test_caffelenet_layout_and_counts():
    model = models.build_model("caffelenet", num_classes=10)
    assert model.input_shape == (None, 28, 28, 1)
    assert model.output_shape == (None, 10)
    assert _kernel_count(model) == 500 + 25_000 + 400_000 + 5_000 == 430_500
    assert model.count_params() == 430_500 + 20 + 50 + 500 + 10
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [20, 50]
    # As the reference: no activation after the convolutions.
    assert all(c.activation is keras.activations.linear for c in convs)
    assert not any(isinstance(l, keras.layers.ReLU) for l in model.layers[:6])
    assert _forward(model).shape == (1, 10)


def test_resnet20_counts():
    model = models.build_model("resnet20", num_classes=10)
    assert model.input_shape == (None, 32, 32, 3)
    # 269,722 with option-A shortcuts, + 2,752 for the two projection shortcuts.
    assert _trainable_count(model) == 272_474
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == 19 + 2  # 19 weighted conv layers + 2 projections
    assert not any(c.use_bias for c in convs)
    assert sum(isinstance(l, keras.layers.BatchNormalization) for l in model.layers) == 21
    out = _forward(model)
    assert out.shape == (1, 10) and np.all(np.isfinite(out))


def test_alexnet_kernel_count():
    model = models.build_model("alexnet", num_classes=1000, dropout=0.5)
    expected = (
        11 * 11 * 3 * 64 + 5 * 5 * 64 * 192 + 3 * 3 * 192 * 384 + 3 * 3 * 384 * 256
        + 3 * 3 * 256 * 256 + 6 * 6 * 256 * 4096 + 4096 * 4096 + 4096 * 1000
    )
    assert _kernel_count(model) == expected == 61_090_496
    assert model.count_params() == 61_100_840
    assert sum(isinstance(l, keras.layers.Dropout) for l in model.layers) == 2
    assert _forward(model).shape == (1, 1000)


@pytest.mark.parametrize(
    "arch, num_classes, input_shape, expected_input, expected_trainable",
    [
        # CIFAR ResNet-50: bottlenecks [3, 4, 6, 3] with a CIFAR stem.
        ("resnet50", 10, None, (32, 32, 3), 23_520_842),
        # MobileNet v1 at 1000 classes: the usual 4.2M parameters.
        ("mobilenetv1", 1000, None, (224, 224, 3), 4_231_976),
        # torchvision resnet18 has 11,689,512 parameters at 1000 classes.
        ("resnet18", 1000, None, (224, 224, 3), 11_689_512),
        ("keras.MobileNet", 4, (32, 32, 3), (32, 32, 3), None),
    ],
)
def test_output_shapes(arch, num_classes, input_shape, expected_input, expected_trainable):
    model = models.build_model(arch, num_classes, input_shape=input_shape)
    assert model.input_shape == (None,) + expected_input
    assert model.output_shape == (None, num_classes)
    if expected_trainable is not None:
        assert _trainable_count(model) == expected_trainable
    out = _forward(model)
    assert out.shape == (1, num_classes)
    assert np.all(np.isfinite(out))
    if arch.startswith("keras."):
        # Logits, not probabilities.
        assert model.layers[-1].activation is keras.activations.linear
    if arch == "mobilenetv1":
        assert sum(isinstance(l, keras.layers.DepthwiseConv2D) for l in model.layers) == 13


def test_dropout_layer():
    model = models.build_model("resnet20", 10, dropout=0.3)
    drops = [l for l in model.layers if isinstance(l, keras.layers.Dropout)]
    assert len(drops) == 1 and drops[0].rate == pytest.approx(0.3)


def test_unknown_arch_raises():
    with pytest.raises(ValueError, match="`arch`.*'foo'"):
        models.build_model("foo", 10)
    with pytest.raises(ValueError, match="`arch`"):
        models.build_model("keras.NoSuchNet", 10)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="`dropout`"):
        models.build_model("caffelenet", 10, dropout=1.5)
    with pytest.raises(ValueError, match="`depth`"):
        models.resnet_cifar(21)
    with pytest.raises(ValueError, match="`num_classes`"):
        models.build_model("resnet20", 0)
    with pytest.raises(ValueError, match="`input_shape`"):
        models.build_model("caffelenet", 10, input_shape=(28, 28))


def test_available_models():
    names = models.available_models()
    for arch in ("caffelenet", "resnet20", "resnet50", "alexnet", "mobilenetv1", "resnet18"):
        assert arch in names
    assert "keras.MobileNetV2" in names
