"""delta warm-up: start AS-Softmax as plain softmax and tighten it gradually.

`DeltaWarmup` moves the delta of every AS loss of a model linearly, per
batch, from `initial_delta` (1.0: softmax cross-entropy) to the loss's own
`delta` over the first warm-up steps, then holds it there.

A Python float captured when a training step is compiled would never change,
so during `fit` each AS loss reads its delta from a variable that the model
carries: the variable of a small metric that the callback attaches to the
model. Metric variables travel with the JAX training state, are re-read
after a callback changes them, and appear in the logs.
"""

import math
import numbers

import keras
import numpy as np
from keras import ops
from keras import tree

from keras_as_softmax._keras_private import rebuild_train_function
from keras_as_softmax._keras_private import unlocked
from keras_as_softmax._keras_private import untrack
from keras_as_softmax.as_softmax import ASLoss


@keras.saving.register_keras_serializable(package="keras_as_softmax")
class DeltaWarmup(keras.callbacks.Callback):
    """Warms up the delta of a model's AS-Softmax losses during `fit`.

    Exactly one of `warmup_steps` and `warmup_fraction` is given. At batch
    `s` of training (counted across epochs) each AS loss uses
    `initial_delta + (delta - initial_delta) * min(s / warmup_steps, 1)`.
    The current delta is logged as `as_softmax_delta` (or `<loss name>_delta`
    when the model has several AS losses). After `fit` the losses use their
    own `delta` again.

    Args:
        initial_delta: delta at the first batch, in `[0, 1]`; 1.0 is plain
            softmax cross-entropy.
        warmup_steps: Number of batches over which delta moves.
        warmup_fraction: Fraction of all training batches (`epochs` times
            steps per epoch) over which delta moves, in `(0, 1]`.

    Example:

    >>> from keras_as_softmax import DeltaWarmup, SparseASSoftmaxCrossentropy
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> model.compile(optimizer="adam", loss=SparseASSoftmaxCrossentropy(0.1))
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.standard_normal((32, 4)), rng.integers(0, 3, 32)
    >>> warmup = DeltaWarmup(initial_delta=1.0, warmup_steps=4)
    >>> history = model.fit(x, y, batch_size=16, epochs=3, verbose=0,
    ...                     callbacks=[warmup])
    >>> [round(delta, 3) for delta in history.history["as_softmax_delta"]]
    [0.775, 0.325, 0.1]
    >>> model.loss.delta  # The loss's own delta again after `fit`.
    0.1
    """

    def __init__(self, initial_delta=1.0, warmup_steps=None, warmup_fraction=None):
        super().__init__()
        if isinstance(initial_delta, np.ndarray) and initial_delta.ndim == 0:
            initial_delta = initial_delta.item()
        if isinstance(initial_delta, bool) or not isinstance(initial_delta, numbers.Real):
            raise TypeError(
                "`initial_delta` must be a number in [0, 1] (1.0 starts as "
                "plain softmax cross-entropy); received "
                f"{type(initial_delta).__name__}: {initial_delta!r}."
            )
        if not 0 <= initial_delta <= 1:
            raise ValueError(
                "`initial_delta` must be in [0, 1] (1.0 starts as plain "
                f"softmax cross-entropy); received initial_delta={initial_delta}."
            )
        if (warmup_steps is None) == (warmup_fraction is None):
            raise ValueError(
                "Pass exactly one of `warmup_steps` and `warmup_fraction`; "
                f"received warmup_steps={warmup_steps}, "
                f"warmup_fraction={warmup_fraction}."
            )
        if warmup_steps is not None and (
            isinstance(warmup_steps, bool)
            or not isinstance(warmup_steps, numbers.Integral)
            or warmup_steps < 1
        ):
            raise ValueError(
                "`warmup_steps` must be a positive integer (a number of "
                f"batches); received {warmup_steps!r}."
            )
        if warmup_fraction is not None and (
            isinstance(warmup_fraction, bool)
            or not isinstance(warmup_fraction, numbers.Real)
            or not 0 < warmup_fraction <= 1
        ):
            raise ValueError(
                "`warmup_fraction` must be in (0, 1] (a number: the fraction "
                f"of all training batches); received {warmup_fraction!r}."
            )
        self.initial_delta = float(initial_delta)
        self.warmup_steps = None if warmup_steps is None else int(warmup_steps)
        self.warmup_fraction = (
            None if warmup_fraction is None else float(warmup_fraction)
        )
        self._trackers = {}
        self._epoch = 0
        self._batches_seen = 0
        self._progress = None

    def get_config(self):
        return {
            "initial_delta": self.initial_delta,
            "warmup_steps": self.warmup_steps,
            "warmup_fraction": self.warmup_fraction,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def on_train_begin(self, logs=None):
        model = self.model
        losses = [
            loss for loss in tree.flatten(model.loss) if isinstance(loss, ASLoss)
        ]
        if not losses:
            raise ValueError(
                "DeltaWarmup needs a model compiled with an AS-Softmax loss "
                "(SparseASSoftmaxCrossentropy, ASSoftmaxCrossentropy or "
                f"MultiLabelASSoftmaxCrossentropy); the model's loss is "
                f"{model.loss!r}."
            )
        self._total_steps = self._resolve_warmup_steps()
        self._batches_seen = 0
        for loss in losses:
            name = "as_softmax_delta" if len(losses) == 1 else f"{loss.name}_delta"
            tracker = _DeltaTracker(self.initial_delta, name=name)
            # Attribute assignment makes the model track the metric.
            with unlocked(model):
                setattr(model, f"_{name}_tracker", tracker)
            loss.delta_variable = tracker.delta
            self._trackers[loss] = tracker
        # A training function traced before (e.g. by an earlier `fit`) holds
        # the delta it saw then: trace anew.
        rebuild_train_function(model)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        steps_per_epoch = self.params.get("steps")
        if steps_per_epoch:
            step = self._epoch * steps_per_epoch + batch
        else:
            step = self._batches_seen
        self._batches_seen += 1
        progress = min(step / self._total_steps, 1.0)
        if progress == self._progress:
            return  # Unchanged (warm-up over): leave the training state alone.
        self._progress = progress
        _ = self.model  # The property syncs the JAX state: the values below are used.
        for loss, tracker in self._trackers.items():
            delta = self.initial_delta + (loss.delta - self.initial_delta) * progress
            tracker.delta.assign(delta)

    def on_train_end(self, logs=None):
        model = self.model
        for loss, tracker in self._trackers.items():
            loss.delta_variable = None
            untrack(model, tracker)
            delattr(model, f"_{tracker.name}_tracker")
        self._trackers = {}
        self._progress = None
        rebuild_train_function(model)

    def _resolve_warmup_steps(self):
        if self.warmup_steps is not None:
            return self.warmup_steps
        steps_per_epoch = self.params.get("steps")
        if not steps_per_epoch:
            raise ValueError(
                "`warmup_fraction` needs the number of steps per epoch, which "
                "this dataset does not tell; pass `steps_per_epoch` to `fit` "
                "or use `warmup_steps`."
            )
        total = steps_per_epoch * self.params["epochs"]
        return max(1, math.ceil(self.warmup_fraction * total))


class _DeltaTracker(keras.metrics.Metric):
    """Holds one loss's current delta in a model-tracked variable.

    It is a metric so that its variable travels in the JAX training state and
    its value appears in the logs; `reset_state` keeps the value.
    """

    def __init__(self, initial_delta, name):
        super().__init__(name=name)
        self.delta = self.add_variable(
            shape=(),
            initializer=keras.initializers.Constant(initial_delta),
            name="delta",
        )

    def update_state(self, *args, **kwargs):
        pass

    def reset_state(self):
        pass

    def result(self):
        return ops.convert_to_tensor(self.delta)
