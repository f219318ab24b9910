"""Every private Keras symbol this package uses, in one place.

Keras keeps tensor masks, loss reduction, its symbolic-build scope (in
which tensors hold placeholder values), the (un)tracking of a layer's
attributes, the serialized name of a class, the loss unscaling of
`tf.distribute` (TensorFlow's own test for merge calls, and the TensorFlow
trainer's reduction of a replicated step's outputs), the layout of a
`.keras` file, a functional model's graph nodes, a `CallbackList`'s list of
callbacks, `fit`'s split of arrays for `validation_split` and its class
weights, and parts of
its trainers (the loss tracker, the JAX step's metric
update and forward-pass losses, the cached step functions and their
rebuilding) out of its public API. This
package needs them, so a Keras upgrade that moves them breaks here and
nowhere else.

The trainers in `keras_as_softmax.trainers` also override the trainers'
`make_train_function`/`make_test_function` (not in Keras's API docs, but
what `fit` calls) and, on JAX, set `train_function` as Keras's own does.
"""

import contextlib
import json
import zipfile

from keras.src.backend.common.masking import get_keras_mask
from keras.src.backend.common.masking import set_keras_mask
from keras.src.backend.common.symbolic_scope import in_symbolic_scope
from keras.src.losses.loss import reduce_weighted_values
from keras.src.models.functional import Functional
from keras.src.losses.loss import unscale_loss_for_distribution
from keras.src.saving.serialization_lib import serialize_with_public_class
from keras.src.trainers.data_adapters.array_slicing import train_validation_split
from keras.src.trainers.data_adapters.data_adapter_utils import (
    class_weight_to_sample_weights,
)


@contextlib.contextmanager
def unlocked(layer):
    """Lets a built layer (e.g. a subclassed model) track new state: Keras
    locks it after `build`."""
    tracker = layer._tracker
    was_locked = tracker.locked
    tracker.unlock()
    try:
        yield
    finally:
        if was_locked:
            tracker.lock()


def untrack(layer, value):
    """Stops `layer` tracking `value` (e.g. a metric), as `__delattr__` does
    for variables only."""
    layer._tracker.untrack(value)


def loss_tracker(model):
    """The `Mean` metric that a Keras trainer logs as `loss`."""
    return model._loss_tracker


def compile_metrics(model):
    """The metrics `compile` gave `model` (one container), or None."""
    return model._compile_metrics


def update_metrics_variables(model, metrics_variables, loss, x, y, y_pred, sample_weight):
    """The JAX trainer's stateless update of the loss tracker and the
    compiled metrics; returns `(logs, metrics_variables)`."""
    return model._update_metrics_variables(
        metrics_variables, loss, x, y, y_pred, sample_weight
    )


def training_kwargs(model, training):
    """`{"training": training}` if the model's `call` takes it, else `{}`,
    as Keras's JAX trainer passes it to `stateless_call`."""
    return {"training": training} if model._call_has_training_arg else {}


@contextlib.contextmanager
def forward_losses(model, losses):
    """Makes a stateless forward pass's `losses` (e.g. activity
    regularisers) `model.losses` for the loss computed within, as the JAX
    trainer's `compute_loss_and_updates` does."""
    if not losses:
        yield
        return
    model._losses_override.clear()
    model._losses_override = losses
    try:
        yield
    finally:
        model._losses_override.clear()


def make_step_function(model, step_function):
    """The JAX trainer's `train_function` around `step_function(state, data)`
    (its loop over `steps_per_execution`)."""
    return model._make_function(step_function)


def append_callback(callback_list, callback):
    """Adds `callback` last to a `keras.callbacks.CallbackList`: it has no
    public method for it, only its undocumented `callbacks` list."""
    callback_list.callbacks.append(callback)


def prepend_callback(callback_list, callback):
    """Adds `callback` first to a `keras.callbacks.CallbackList` (see
    `append_callback`)."""
    callback_list.callbacks.insert(0, callback)


def drop_step_functions(model):
    """Makes the next `fit`/`evaluate` build their steps anew (e.g. after the
    model's class changed): only `compile` does it publicly, and it would
    reset the optimizer."""
    model.train_function = None
    model.test_function = None


def rebuild_train_function(model):
    """Retraces `model`'s training step now, e.g. from a callback's
    `on_train_begin` (`fit` builds it before): `make_train_function(force=True)`
    is not in Keras's API docs."""
    model.make_train_function(force=True)


def saved_compile_config(filepath):
    """The `compile_config` saved in a `.keras` file, or None: Keras has no
    public reader for it (it sits in the archive's `config.json`)."""
    with zipfile.ZipFile(filepath) as archive:
        return json.loads(archive.read("config.json")).get("compile_config")


def strategy_supports_no_merge_call():
    """Whether the current `tf.distribute` strategy can update variables in
    replica context (TensorFlow's internal API, as Keras's own
    `LossScaleOptimizer` uses it)."""
    import tensorflow as tf

    return tf.__internal__.distribute.strategy_supports_no_merge_call()


def reduce_per_replica(values, strategy):
    """A `strategy.run`'s outputs reduced to single values, as Keras's
    TensorFlow trainer reduces its training step's (`reduction="auto"`)."""
    from keras.src.backend.tensorflow.trainer import reduce_per_replica as reduce

    return reduce(values, strategy, reduction="auto")


__all__ = [
    "append_callback",
    "class_weight_to_sample_weights",
    "drop_step_functions",
    "forward_losses",
    "get_keras_mask",
    "in_symbolic_scope",
    "loss_tracker",
    "make_step_function",
    "rebuild_train_function",
    "prepend_callback",
    "reduce_per_replica",
    "reduce_weighted_values",
    "saved_compile_config",
    "serialize_with_public_class",
    "set_keras_mask",
    "strategy_supports_no_merge_call",
    "train_validation_split",
    "training_kwargs",
    "unlocked",
    "unscale_loss_for_distribution",
    "untrack",
    "update_metrics_variables",
]


def is_functional(model):
    """Whether `model` is a functional model (Keras's `Functional`, also the
    base of a keras-hub task built on its backbone's graph)."""
    return isinstance(model, Functional)


def output_call(model):
    """The layer that computes a functional model's single output and the
    arguments of that call: `(layer, args, kwargs)` (Keras keeps its graph's
    nodes private)."""
    operation, node_index, _ = model.outputs[0]._keras_history
    arguments = operation._inbound_nodes[node_index].arguments
    return operation, arguments.args, arguments.kwargs
