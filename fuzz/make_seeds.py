"""Writes the fuzzers' seed corpus (fuzz/corpus/TARGET/seed-*): small files
as the real tools write them (Pillow, h5py, safetensors, Python's pickle and
zipfile), in each format retrain reads. Run once from the repository root:

    pip install pillow h5py numpy safetensors
    python3 fuzz/make_seeds.py [CLASSIFIER]

CLASSIFIER is a classifier file written by `retrain` (its head is 16 KB for
MobileNet V2); without it that target gets no seed from a real run.
"""

import hashlib
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict

import h5py
import numpy as np
from PIL import Image
from safetensors.numpy import save as st_save

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
rng = np.random.default_rng(0)


def put(target, name, data):
    # No extensions the repository ignores (*.safetensors): seeds are named plainly.
    folder = os.path.join(ROOT, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "seed-" + name), "wb") as f:
        f.write(data)


def images():
    pixels = (rng.random((6, 9, 3)) * 255).astype(np.uint8)
    rgb = Image.fromarray(pixels)
    cases = {
        "rgb.png": (rgb, "PNG", {}),
        "palette.png": (rgb.convert("P"), "PNG", {}),
        "grey_alpha.png": (rgb.convert("LA"), "PNG", {}),
        "rgba.png": (rgb.convert("RGBA"), "PNG", {}),
        "grey16.png": (Image.fromarray((pixels[..., 0].astype(np.uint16) * 257)), "PNG", {}),
        "baseline.jpg": (rgb, "JPEG", {"quality": 80}),
        "progressive.jpg": (rgb, "JPEG", {"progressive": True}),
        "grey.jpg": (rgb.convert("L"), "JPEG", {}),
        "cmyk.jpg": (rgb.convert("CMYK"), "JPEG", {}),
        "rgb.bmp": (rgb, "BMP", {}),
        "rgb.webp": (rgb, "WEBP", {"lossless": True}),
    }
    for name, (img, fmt, opts) in cases.items():
        out = io.BytesIO()
        img.save(out, fmt, **opts)
        put("image", name, out.getvalue())
    out = io.BytesIO()
    frames = [rgb.convert("P"), rgb.rotate(90, expand=True).convert("P")]
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=50)
    put("image", "animated.gif", out.getvalue())


# A TF.js layers model with one conv and its batch norm, as a minifier and
# tensorflowjs_converter write it.
TOPOLOGY = {
    "class_name": "Model",
    "keras_version": "2.2.4",
    "model_config": {
        "class_name": "Model",
        "config": {
            "name": "model_1",
            "layers": [
                {"class_name": "InputLayer", "name": "input_1", "inbound_nodes": [],
                 "config": {"batch_input_shape": [None, 299, 299, 3], "dtype": "float32"}},
                {"class_name": "Conv2D", "name": "conv2d_1",
                 "inbound_nodes": [[["input_1", 0, 0, {}]]],
                 "config": {"filters": 2, "kernel_size": [3, 3], "strides": [2, 2],
                            "padding": "valid", "use_bias": False, "activation": "linear"}},
                {"class_name": "BatchNormalization", "name": "batch_normalization_1",
                 "inbound_nodes": [[["conv2d_1", 0, 0, {}]]],
                 "config": {"epsilon": 0.001, "scale": False, "center": True}},
            ],
        },
    },
}


def to_js(v):
    """A JSON value as a minified JS literal: bare keys, !0/!1, .5 for 0.5."""
    if v is True:
        return "!0"
    if v is False:
        return "!1"
    if v is None:
        return "null"
    if isinstance(v, dict):
        return "{" + ",".join(
            (k if k.isidentifier() else json.dumps(k)) + ":" + to_js(x) for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ",".join(to_js(x) for x in v) + "]"
    if isinstance(v, float) and 0 < abs(v) < 1:
        return ("-" if v < 0 else "") + repr(abs(v))[1:]
    return json.dumps(v)


def tfjs():
    kernel = rng.standard_normal((3, 3, 3, 2)).astype("<f4")
    beta = rng.standard_normal(2).astype("<f4")
    quantised = (rng.random(2) * 255).astype(np.uint8)
    manifest = [{
        "paths": ["group1-shard1of1.bin"],
        "weights": [
            {"name": "conv2d_1/kernel", "shape": [3, 3, 3, 2], "dtype": "float32"},
            {"name": "batch_normalization_1/beta", "shape": [2], "dtype": "float32"},
            {"name": "batch_normalization_1/moving_mean", "shape": [2], "dtype": "float32",
             "quantization": {"dtype": "uint8", "min": -0.5, "scale": 0.0039}},
        ],
    }]
    shard = kernel.tobytes() + beta.tobytes() + quantised.tobytes()
    model = {"format": "layers-model", "modelTopology": TOPOLOGY, "weightsManifest": manifest}
    json_text = json.dumps(model).encode()
    js_text = ("var e=" + to_js(model) + ";module.exports=e;").encode()
    for name, kind, text in [("model.json", 0, json_text), ("model.min.js", 1, js_text)]:
        put("tfjs_folder", name, bytes([kind]) + struct.pack("<H", len(text)) + text + shard)
    put("js_literal", "model.min.js", js_text[len("var e="):])
    put("js_literal", "strings.js", b"{a:'it\\'s',\"b c\":\"\\u00e9\",d:[.5,-2e-3,!0,!1,null,undefined]}")


class Storage:
    """Stands for a torch storage: pickled as a persistent id."""

    def __init__(self, key, numel):
        self.key, self.numel = key, numel


def torch_pickle(tensors):
    """A state dict pickled the way torch.save does (protocol 2, tensors
    rebuilt by torch._utils._rebuild_tensor_v2 from storages named by
    persistent ids), without torch: the globals are stand-ins registered
    under torch's module names."""
    utils = types.ModuleType("torch._utils")
    torch = types.ModuleType("torch")

    def _rebuild_tensor_v2(*args):
        raise RuntimeError("never called")

    class FloatStorage:
        pass

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    FloatStorage.__module__ = "torch"
    FloatStorage.__qualname__ = "FloatStorage"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch.FloatStorage = FloatStorage
    torch._utils = utils
    sys.modules.setdefault("torch", torch)
    sys.modules.setdefault("torch._utils", utils)

    class Tensor:
        def __init__(self, storage, shape):
            self.storage, self.shape = storage, shape

        def __reduce__(self):
            stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
            return (_rebuild_tensor_v2,
                    (self.storage, 0, tuple(self.shape), stride, False, OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
            return None

    state = OrderedDict()
    for i, (name, array) in enumerate(tensors):
        state[name] = Tensor(Storage(str(i), array.size), array.shape)
    out = io.BytesIO()
    Pickler(out, protocol=2).dump(state)
    return out.getvalue()


def torch_files():
    tensors = [
        ("Conv2d_1a_3x3.conv.weight", rng.standard_normal((2, 3, 3, 3)).astype("<f4")),
        ("Conv2d_1a_3x3.bn.running_mean", rng.standard_normal(2).astype("<f4")),
        ("Conv2d_1a_3x3.bn.num_batches_tracked", np.array([0], dtype="<f4")),
    ]
    data = torch_pickle(tensors)
    put("pickle", "state_dict.pkl", data)
    put("pickle", "plain.pkl", pickle.dumps(OrderedDict(a=(1, -2, 300, 70000, 1.5, True, None), b=["x"]), protocol=2))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/version", "3\n")
        for i, (_, array) in enumerate(tensors):
            z.writestr(f"archive/data/{i}", array.tobytes())
    put("pth", "torch_layout.pth", out.getvalue())
    put("safetensors_source", "timm", st_save(dict(tensors)))


def h5_bytes(fill):
    out = io.BytesIO()
    with h5py.File(out, "w") as f:
        fill(f)
    return out.getvalue()


def keras_files():
    kernel = rng.standard_normal((3, 3, 3, 2)).astype("f4")
    mean = rng.standard_normal(2).astype("f4")

    def keras2(f):
        f.attrs["layer_names"] = [b"conv2d_1", b"batch_normalization_1"]
        f["conv2d_1/conv2d_1/kernel:0"] = kernel
        f["batch_normalization_1/batch_normalization_1/moving_mean:0"] = mean

    def full(f):
        f.attrs["model_config"] = json.dumps(TOPOLOGY["model_config"])
        keras2(f.create_group("model_weights"))

    def keras3(f):
        f["layers/conv2d/vars/0"] = kernel
        f["layers/batch_normalization/vars/0"] = mean

    put("keras_h5", "keras2.h5", h5_bytes(keras2))
    put("keras_h5", "full_model.h5", h5_bytes(full))
    put("keras_h5", "keras3.weights.h5", h5_bytes(keras3))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.5.0"}))
        z.writestr("config.json", json.dumps(TOPOLOGY["model_config"]))
        z.writestr("model.weights.h5", h5_bytes(keras3))
    put("keras_archive", "model.keras", out.getvalue())


def retrain_files(classifier):
    # The metadata of the converted nsfwjs MobileNet V2, with two of its tensors.
    meta = {
        "architecture": "mobilenet_v2", "input_size": "224x224", "dtype": "f32",
        "input_scale": "[0.003921569, 0.003921569, 0.003921569]",
        "input_offset": "[0.0, 0.0, 0.0]", "average_pool_padding": "excluded",
        "fingerprint": "226d3ebd90adc5421a5a09589134edbb",
        "bottleneck_layer": "out_relu global average pool", "normalization": "unit",
        "layout": "retrain-v2: NAME.weight [kh,kw,in,out] f32 with batch norm folded, "
                  "NAME.bias [out]; NAME as the network definition names each conv",
        "source": "fuzz seed", "bottleneck_size": "1280",
    }
    tensors = {"Conv1.weight": rng.standard_normal((3, 3, 3, 32)).astype("<f4"),
               "Conv1.bias": rng.standard_normal(32).astype("<f4")}
    put("engine_weights", "mobilenet_v2", st_save(tensors, metadata=meta))
    if classifier:
        with open(classifier, "rb") as f:
            put("classifier", "mobilenet_v2_head", f.read())
    for magic, dtype in [(b"RTBNECK1", "<f4"), (b"RTACTF16", "<f2")]:
        body = magic + struct.pack("<I", 2048) + rng.standard_normal(2048).astype(dtype).tobytes()
        put("bottleneck_entry", magic.decode().lower(), body + hashlib.sha256(body).digest())
    tuning = {
        "device": "fuzz device",
        "choices": {"k3x3 s1 in32 out64 m1024": "Tiled",
                    "k1x1 s1 in64 out64 m1024": {"Direct": {"rows": 8, "cols": 2, "group": 16}}},
        "merges": {"k1x1+k1x1": True},
        "depthwise": {"k3x3 s1 c32 m1024": 128},
    }
    put("tuning_cache", "tuning.json", json.dumps(tuning, indent=2).encode())


if __name__ == "__main__":
    images()
    tfjs()
    torch_files()
    keras_files()
    retrain_files(sys.argv[1] if len(sys.argv) > 1 else None)
