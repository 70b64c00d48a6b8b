"""torchvision AlexNet state dict -> Keras alexnet: same function, both layouts."""

import numpy as np
import pytest

import sqjl_tf
from sqjl_tf.models.convert import load_torchvision_alexnet


def _torch_style_forward(state, image):
    """The torchvision AlexNet forward pass (channels-first) in NumPy, up to fc6."""
    def conv(x, w, b, stride, pad):  # x [C,H,W], w [O,C,kh,kw]
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
        o, c, kh, kw = w.shape
        h = (x.shape[1] - kh) // stride + 1
        wd = (x.shape[2] - kw) // stride + 1
        cols = np.stack([x[:, i * stride:i * stride + kh, j * stride:j * stride + kw].ravel()
                         for i in range(h) for j in range(wd)], 1)
        return (w.reshape(o, -1) @ cols).reshape(o, h, wd) + b[:, None, None]

    def pool(x):
        c, h, w = x.shape
        oh, ow = (h - 3) // 2 + 1, (w - 3) // 2 + 1
        return np.stack([[x[:, i * 2:i * 2 + 3, j * 2:j * 2 + 3].max((1, 2)) for j in range(ow)]
                         for i in range(oh)], 0).transpose(2, 0, 1)

    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    x = pool(relu(conv(image, state["features.0.weight"], state["features.0.bias"], 4, 2)))
    x = pool(relu(conv(x, state["features.3.weight"], state["features.3.bias"], 1, 2)))
    x = relu(conv(x, state["features.6.weight"], state["features.6.bias"], 1, 1))
    x = relu(conv(x, state["features.8.weight"], state["features.8.bias"], 1, 1))
    x = pool(relu(conv(x, state["features.10.weight"], state["features.10.bias"], 1, 1)))
    return x.reshape(-1) @ state["classifier.1.weight"].T + state["classifier.1.bias"]


def test_alexnet_conversion_matches_torch_layout(tmp_path):
    model = sqjl_tf.build_model("alexnet", 10)
    rng = np.random.default_rng(0)
    shapes = {"features.0": (64, 3, 11, 11), "features.3": (192, 64, 5, 5),
              "features.6": (384, 192, 3, 3), "features.8": (256, 384, 3, 3),
              "features.10": (256, 256, 3, 3), "classifier.1": (4096, 9216),
              "classifier.4": (4096, 4096), "classifier.6": (10, 4096)}
    state = {}
    for name, shape in shapes.items():
        state[f"{name}.weight"] = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        state[f"{name}.bias"] = (rng.standard_normal(shape[0]) * 0.01).astype(np.float32)
    path = tmp_path / "alexnet.torch.npz"
    np.savez(path, **state)
    load_torchvision_alexnet(model, str(path))
    image = rng.standard_normal((3, 224, 224)).astype(np.float32)
    fc6 = model.get_layer("fc6")
    import keras

    probe = keras.Model(model.inputs, fc6.output)
    ours = probe.predict(image.transpose(1, 2, 0)[None], verbose=0)[0]
    np.testing.assert_allclose(ours, _torch_style_forward(state, image), rtol=2e-3, atol=2e-3)


def test_alexnet_conversion_rejects_wrong_shapes():
    model = sqjl_tf.build_model("alexnet", 10)
    with pytest.raises(ValueError, match="features.0.weight"):
        load_torchvision_alexnet(model, {"features.0.weight": np.zeros((1, 1, 1, 1))})
