"""Keras 3 (on its torch backend) next to PyTorch: parameter mapping and a side-by-side run.

``keras.layers.BatchNormalization`` and ``torch.nn.BatchNorm1d`` compute the
same thing under different conventions:

=====================  ================================  ==============================
                       Keras                             PyTorch
=====================  ================================  ==============================
moving average         ``m * old + (1 - m) * new``,      ``(1 - p) * old + p * new``,
                       ``momentum=0.99``                 ``momentum=0.1``
epsilon                ``1e-3``                          ``1e-5``
moving variance        biased batch variance (Keras 3)   unbiased, ``var * M / (M - 1)``
parameters             gamma, beta                       weight, bias
statistics             moving_mean, moving_variance      running_mean, running_var
channel axis           last (``axis=-1``)                1
=====================  ================================  ==============================

(tf.keras 2's fused kernel, its default for 4-D inputs, averages the unbiased variance,
like PyTorch; only Keras 3 is run here.)

Keras is imported lazily (:func:`import_keras`), so importing this module
needs neither Keras nor a choice of backend.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import DigitsSplit

__all__ = [
    "import_keras",
    "to_numpy",
    "torch_bn_kwargs_from_keras",
    "keras_bn_kwargs_from_torch",
    "copy_bn_keras_to_torch",
    "copy_bn_torch_to_keras",
    "ARTICLE_MODEL",
    "keras_digits_mlp",
    "torch_digits_mlp",
    "copy_keras_mlp_to_torch",
    "epoch_orders",
    "fit_torch",
    "fit_keras",
]


def import_keras() -> Any:
    """Import Keras 3 on its torch backend and return the module.

    Sets ``KERAS_BACKEND=torch`` unless it is already set (Keras reads it once,
    at import). Raises ``ValueError`` if Keras ended up on another backend.
    """
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    if keras.backend.backend() != "torch":
        raise ValueError(
            f"expected Keras on its torch backend, got {keras.backend.backend()!r}: "
            "set KERAS_BACKEND=torch before importing keras"
        )
    return keras


def to_numpy(value: Any) -> np.ndarray:
    """A NumPy copy of a Keras variable, a Keras output or a torch tensor.

    On the torch backend both Keras variables (via ``.value``) and Keras
    outputs are torch tensors; we convert them with ``Tensor.numpy()``, since
    ``np.array(tensor)`` (what ``keras.ops.convert_to_numpy`` does) goes
    through a ``__array__`` path that NumPy 2 deprecates.
    """
    keras = import_keras()
    if isinstance(value, keras.Variable):
        value = value.value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().copy()
    return np.array(value)


def torch_bn_kwargs_from_keras(layer: Any) -> dict[str, Any]:
    """Constructor arguments for a torch batch norm that behaves like Keras ``layer``.

    ``momentum_torch = 1 - momentum_keras`` (the weight on the new batch's
    statistic) and the same epsilon. ``affine=False`` unless the Keras layer
    has both ``scale`` and ``center`` (torch has no gamma-only layer).
    """
    return {
        "momentum": 1.0 - float(layer.momentum),
        "eps": float(layer.epsilon),
        "affine": bool(layer.scale and layer.center),
    }


def keras_bn_kwargs_from_torch(bn: nn.Module, axis: int = -1) -> dict[str, Any]:
    """Constructor arguments for a Keras ``BatchNormalization`` that behaves like ``bn``.

    ``axis`` is the channel axis of the Keras input: ``-1`` for channels-last
    data (Keras' default), ``1`` to feed Keras the same ``(N, C, ...)`` array as torch.
    """
    if bn.momentum is None:
        raise ValueError(
            "expected a torch batch norm with a float momentum, got momentum=None "
            "(a cumulative average has no Keras equivalent)"
        )
    return {
        "momentum": 1.0 - float(bn.momentum),
        "epsilon": float(bn.eps),
        "center": bn.affine,
        "scale": bn.affine,
        "axis": axis,
    }


def copy_bn_keras_to_torch(layer: Any, bn: nn.Module) -> None:
    """Copy gamma/beta/moving_mean/moving_variance into weight/bias/running_mean/running_var.

    The moving variance is copied as it is: the two layers then compute the
    same evaluation-mode output. (During training their variance *estimates*
    drift apart, since torch averages the unbiased batch variance.)
    """
    pairs = [("moving_mean", "running_mean"), ("moving_variance", "running_var")]
    if bn.affine:
        pairs = [("gamma", "weight"), ("beta", "bias")] + pairs
    with torch.no_grad():
        for k_name, t_name in pairs:
            value = to_numpy(getattr(layer, k_name))
            target = getattr(bn, t_name)
            if target.shape != value.shape:
                raise ValueError(
                    f"expected {k_name} of shape {tuple(target.shape)}, got {value.shape}"
                )
            target.copy_(torch.from_numpy(np.asarray(value)))


def copy_bn_torch_to_keras(bn: nn.Module, layer: Any) -> None:
    """The reverse of :func:`copy_bn_keras_to_torch` (``layer`` must be built)."""
    pairs = [("running_mean", "moving_mean"), ("running_var", "moving_variance")]
    if bn.affine:
        pairs = [("weight", "gamma"), ("bias", "beta")] + pairs
    for t_name, k_name in pairs:
        getattr(layer, k_name).assign(getattr(bn, t_name).detach().cpu().numpy())


#: The popular articles' Keras classifier, written down as data rather than as their code:
#: the layer stack (Keras layer class name, keyword arguments) and the settings they give
#: ``compile``. :func:`keras_digits_mlp` builds the model from this description, so what
#: runs is the articles' model while the code that runs it is the course's own.
ARTICLE_MODEL: dict[str, Any] = {
    "layers": [
        ("Dense", {"units": 64}),
        ("BatchNormalization", {}),
        ("Activation", {"activation": "relu"}),
        ("Dense", {"units": 10, "activation": "softmax"}),
    ],
    "training": {"optimizer": "adam", "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]},
}


def keras_digits_mlp(hidden: int = 64, inputs: int = 64, seed: int = 0, config: dict[str, Any] | None = None) -> Any:
    """Build and compile the Keras model described by ``config`` (default :data:`ARTICLE_MODEL`).

    ``Dense(hidden) -> BatchNormalization() -> ReLU -> Dense(10, softmax)`` with Adam
    (Keras defaults), sparse categorical cross-entropy and accuracy; ``hidden`` replaces
    the first ``Dense`` layer's width. Weights are drawn with Keras' own initializers
    from ``seed``.
    """
    keras = import_keras()
    config = ARTICLE_MODEL if config is None else config
    layers = [(name, dict(kwargs)) for name, kwargs in config["layers"]]
    if not layers or layers[0][0] != "Dense":
        raise ValueError(f"expected a layer stack that starts with a Dense layer, got {config['layers']!r}")
    layers[0][1]["units"] = hidden
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input(shape=(inputs,))] + [getattr(keras.layers, name)(**kwargs) for name, kwargs in layers]
    )
    model.compile(**config["training"])
    return model


def torch_digits_mlp(
    batchnorm: type[nn.Module], hidden: int = 64, inputs: int = 64, seed: int = 0
) -> nn.Sequential:
    """The same model in PyTorch: ``Linear -> batchnorm -> ReLU -> Linear`` (logits out).

    ``batchnorm`` is ``torch.nn.BatchNorm1d`` or ``bncourse.nn.BatchNorm1d``;
    it gets Keras' conventions (``momentum=0.01``, ``eps=1e-3``) so the three
    models are the same model. The softmax lives in the loss
    (``F.cross_entropy`` on logits). Weights from torch's initializers and ``seed``.
    """
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(inputs, hidden),
        batchnorm(hidden, momentum=0.01, eps=1e-3),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def copy_keras_mlp_to_torch(keras_model: Any, model: nn.Sequential) -> None:
    """Give ``model`` (from :func:`torch_digits_mlp`) the weights of ``keras_model``.

    A Keras ``Dense`` kernel is ``(in, out)`` and computes ``x @ kernel``; a
    torch ``Linear`` weight is ``(out, in)`` and computes ``x @ weight.T``: transpose.
    """
    dense1, bn, _, dense2 = keras_model.layers
    with torch.no_grad():
        for dense, linear in ((dense1, model[0]), (dense2, model[3])):
            kernel = to_numpy(dense.kernel)
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.T)))
            linear.bias.copy_(torch.from_numpy(to_numpy(dense.bias)))
    copy_bn_keras_to_torch(bn, model[1])


def epoch_orders(num_examples: int, epochs: int, seed: int = 0) -> list[np.ndarray]:
    """One shuffled order of ``range(num_examples)`` per epoch, shared by every framework."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(num_examples) for _ in range(epochs)]


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def fit_torch(
    model: nn.Module,
    data: DigitsSplit,
    orders: list[np.ndarray],
    batch_size: int = 32,
    lr: float = 1e-3,
) -> dict[str, list[float]]:
    """Train with Adam in Keras' configuration (``eps=1e-7``) on the given batch orders.

    Returns ``{"loss": [...], "test_accuracy": [...]}``, one value per epoch:
    the training cross-entropy averaged over the epoch's examples (each
    batch's loss weighted by its size, as Keras' ``fit`` reports it; computed
    in train mode, during the epoch) and the accuracy on ``data.x_test`` in eval mode.
    """
    if batch_size < 2:
        raise ValueError(f"expected batch_size >= 2 (batch norm needs 2 values), got {batch_size}")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-7)
    history: dict[str, list[float]] = {"loss": [], "test_accuracy": []}
    for order in orders:
        model.train()
        total = 0.0
        for idx in _batches(order, batch_size):
            idx_t = torch.from_numpy(idx)
            loss = nn.functional.cross_entropy(model(data.x_train[idx_t]), data.y_train[idx_t])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            predictions = model(data.x_test).argmax(1)
        history["loss"].append(total / len(order))
        history["test_accuracy"].append((predictions == data.y_test).double().mean().item())
    return history


def fit_keras(
    model: Any,
    data: DigitsSplit,
    orders: list[np.ndarray],
    batch_size: int = 32,
) -> dict[str, list[float]]:
    """Train a compiled Keras model, one ``fit`` epoch per order, without Keras' own shuffling.

    Same batches and same history format as :func:`fit_torch`, so the curves
    can be laid over each other. Test accuracy uses ``training=False``
    (moving statistics).
    """
    x_train, y_train = data.x_train.numpy(), data.y_train.numpy()
    x_test, y_test = data.x_test.numpy(), data.y_test.numpy()
    history: dict[str, list[float]] = {"loss": [], "test_accuracy": []}
    for order in orders:
        # Already in the epoch's order: Keras must not shuffle again.
        fitted = model.fit(
            x_train[order],
            y_train[order],
            batch_size=batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
        )
        probabilities = to_numpy(model(x_test, training=False))
        history["loss"].append(float(fitted.history["loss"][0]))
        history["test_accuracy"].append(float((probabilities.argmax(1) == y_test).mean()))
    return history
