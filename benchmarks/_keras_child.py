"""One Keras variant of ``benchmarks/compare.py``, run by the Keras virtual environment's Python.

Reads a JSON spec (the path is the only argument), trains as a Keras user
would (``model.fit`` on NumPy arrays, or on ``ImageDataGenerator.flow`` for
augmentation), and prints one JSON line with the timings, peak memory and
test accuracy. It imports nothing from cnnlab or torch: the initial weights
come from the parent as NumPy arrays named as in the PyTorch state dict, and
are copied into Keras layers of the same architecture, so all three
pipelines start from identical weights.

Layout: Keras' default channels-last (NHWC), which is also TensorFlow's fast
layout on the CPU. Batch norm uses PyTorch's momentum (0.1 = Keras 0.9) and
epsilon (1e-5).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter


def set_threads(threads: int) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def image_data_generator():
    """``ImageDataGenerator`` wherever this Keras keeps it (Keras 3 moved it to legacy)."""
    try:
        from keras.preprocessing.image import ImageDataGenerator
    except ImportError:
        from keras.src.legacy.preprocessing.image import ImageDataGenerator
    return ImageDataGenerator


# ---- architectures, layer names = PyTorch module paths with "." -> "_" ----------------------


def conv(layers, x, name, filters, kernel, stride=1, padding=0, bias=False):
    if padding:
        # PyTorch pads symmetrically; Keras' "same" pads more at the end for stride 2.
        x = layers.ZeroPadding2D(padding)(x)
    return layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=bias,
                         name=name)(x)


def batch_norm(layers, x, name):
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)(x)


def basic_block(layers, x, prefix, filters, stride):
    shortcut = x
    out = conv(layers, x, f"{prefix}_conv1", filters, 3, stride, 1)
    out = layers.ReLU()(batch_norm(layers, out, f"{prefix}_bn1"))
    out = conv(layers, out, f"{prefix}_conv2", filters, 3, 1, 1)
    out = batch_norm(layers, out, f"{prefix}_bn2")
    if stride != 1 or x.shape[-1] != filters:
        shortcut = conv(layers, x, f"{prefix}_downsample_0", filters, 1, stride)
        shortcut = batch_norm(layers, shortcut, f"{prefix}_downsample_1")
    return layers.ReLU()(layers.Add()([out, shortcut]))


def resnet18_features(layers, x, cifar_stem: bool, prefix: str = ""):
    """torchvision's ResNet-18 up to the global average pool."""
    if cifar_stem:
        x = conv(layers, x, f"{prefix}conv1", 64, 3, 1, 1)
        x = layers.ReLU()(batch_norm(layers, x, f"{prefix}bn1"))
    else:
        x = conv(layers, x, f"{prefix}conv1", 64, 7, 2, 3)
        x = layers.ReLU()(batch_norm(layers, x, f"{prefix}bn1"))
        # Zero padding equals PyTorch's -inf padding here: the input is after a ReLU.
        x = layers.MaxPooling2D(3, strides=2)(layers.ZeroPadding2D(1)(x))
    for stage, filters in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            stride = 2 if stage > 1 and block == 0 else 1
            x = basic_block(layers, x, f"{prefix}layer{stage}_{block}", filters, stride)
    return layers.GlobalAveragePooling2D()(x)


def build_model(spec: dict, shape: tuple, mean, std):
    import keras
    from keras import layers

    inputs = keras.Input(shape=shape)  # [H, W, C] floats in [0, 1]
    if spec["model"] == "transfer":
        size = spec["transfer_size"]
        x = layers.Resizing(size, size, interpolation="bilinear")(inputs)
        x = layers.Normalization(mean=mean, variance=[s * s for s in std])(x)
        backbone_input = keras.Input(shape=(size, size, shape[-1]))
        backbone = keras.Model(backbone_input, resnet18_features(layers, backbone_input, False,
                                                                 "features_"),
                               name="backbone")
        backbone.trainable = False  # frozen: batch norm runs in inference mode too
        outputs = layers.Dense(spec["num_classes"], name="head")(backbone(x, training=False))
        return keras.Model(inputs, outputs), backbone
    x = layers.Normalization(mean=mean, variance=[s * s for s in std])(inputs)
    if spec["model"] == "lenet5":
        x = layers.Conv2D(6, 5, activation="relu", name="features_0")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Conv2D(16, 5, activation="relu", name="features_3")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Flatten()(x)
        x = layers.Dense(120, activation="relu", name="classifier_1")(x)
        x = layers.Dense(84, activation="relu", name="classifier_3")(x)
        outputs = layers.Dense(spec["num_classes"], name="classifier_5")(x)
    elif spec["model"] == "resnet18":
        x = resnet18_features(layers, x, cifar_stem=True)
        outputs = layers.Dense(spec["num_classes"], name="fc")(x)
    else:
        raise SystemExit(f"unknown model {spec['model']!r}")
    return keras.Model(inputs, outputs), None


def load_torch_weights(model, state: dict, flatten_from: tuple | None = None) -> int:
    """Copy PyTorch tensors (NumPy arrays keyed by state-dict name) into same-named layers.

    ``flatten_from`` is the (C, H, W) shape that PyTorch flattened before its
    first linear layer: Keras flattens (H, W, C), so that layer's rows are
    permuted. Returns the number of layers loaded.
    """
    import numpy as np

    loaded, first_dense = 0, True
    for layer in _all_layers(model):
        prefix = layer.name.replace("_", ".")
        if f"{prefix}.weight" not in state and f"{prefix}.running_mean" not in state:
            continue
        kind = type(layer).__name__
        if kind == "Conv2D":
            weights = [state[f"{prefix}.weight"].transpose(2, 3, 1, 0)]  # OIHW -> HWIO
            if layer.use_bias:
                weights.append(state[f"{prefix}.bias"])
        elif kind == "BatchNormalization":
            weights = [state[f"{prefix}.{key}"] for key in
                       ("weight", "bias", "running_mean", "running_var")]
        elif kind == "Dense":
            kernel = state[f"{prefix}.weight"]  # [out, in]
            if first_dense and flatten_from is not None:
                C, H, W = flatten_from
                kernel = kernel.reshape(-1, C, H, W).transpose(0, 2, 3, 1).reshape(len(kernel), -1)
            first_dense = False
            weights = [kernel.T, state[f"{prefix}.bias"]]
        else:
            continue
        layer.set_weights([np.asarray(w, dtype="float32") for w in weights])
        loaded += 1
    return loaded


def _all_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
        else:
            yield layer


def main() -> None:
    with open(sys.argv[1]) as handle:
        spec = json.load(handle)
    set_threads(spec["threads"])
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    arrays = np.load(spec["data"])
    train_key = "fit" if spec["model"] == "transfer" else "train"
    # NCHW uint8 (as cnnlab stores them) -> NHWC floats in [0, 1], as a Keras user prepares them.
    x_train = arrays[f"x_{train_key}"].transpose(0, 2, 3, 1).astype("float32") / 255.0
    y_train = arrays[f"y_{train_key}"]
    x_test = arrays["x_test"].transpose(0, 2, 3, 1).astype("float32") / 255.0
    y_test = arrays["y_test"]
    mean, std = [float(v) for v in arrays["mean"]], [float(v) for v in arrays["std"]]
    if spec["model"] == "transfer":  # the backbone's own statistics, as cnnlab's adapter uses
        mean, std = spec["transfer_mean"], spec["transfer_std"]
    spec["num_classes"] = int(arrays["num_classes"])

    model, _ = build_model(spec, x_train.shape[1:], mean, std)
    state = dict(np.load(spec["weights"]))
    flatten_from = None
    if spec["model"] == "lenet5":
        side = ((x_train.shape[1] - 4) // 2 - 4) // 2
        flatten_from = (16, side, side)
    loaded = load_torch_weights(model, state, flatten_from)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=spec["lr"]),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])

    epoch_seconds = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self.started)

    from compare import cores_between, cpu_clock  # benchmarks/ is this script's folder

    clock = cpu_clock()
    started = time.perf_counter()
    if spec["augment"]:
        generator = image_data_generator()(
            rotation_range=30, width_shift_range=0.1, height_shift_range=0.1, shear_range=0.1,
            zoom_range=0.1, horizontal_flip=True)  # fill_mode="nearest" is its default
        model.fit(generator.flow(x_train, y_train, batch_size=spec["batch_size"], seed=0),
                  epochs=spec["epochs"], verbose=0, callbacks=[Clock()])
    else:
        model.fit(x_train, y_train, batch_size=spec["batch_size"], epochs=spec["epochs"],
                  shuffle=True, verbose=0, callbacks=[Clock()])
    train_seconds = time.perf_counter() - started
    cores = cores_between(clock, cpu_clock())

    _, accuracy = model.evaluate(x_test, y_test, batch_size=512, verbose=0)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec from the parent process.
    with open("/proc/self/status") as status:
        own = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({
        "images": len(x_train), "epochs": spec["epochs"], "train_seconds": train_seconds,
        "epoch_seconds": epoch_seconds, "test_accuracy": float(accuracy),
        "test_images": len(x_test), "peak_memory_mib": (own + children) / 1024, "cores": cores,
        "weights_loaded": loaded, "versions": {"keras": keras.__version__,
                                               "backend": keras.backend.backend()}}))


if __name__ == "__main__":
    main()
