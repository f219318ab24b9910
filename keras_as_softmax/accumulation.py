"""AS-Speed's window: gradient accumulation over a number of batches chosen
from the masked ratio.

A batch of `B` counted samples of which `m` are masked by AS-Softmax carries
the gradient signal of only `B - m` samples. `AdaptiveModel` accumulates the
gradients of `k` consecutive batches before one optimizer update, so that
each update again sees about `B` informative samples. At the first batch of
each window:

    k = max(1, round(accumulation_lambda * B / (B - m)))

then `k` is kept between the current window and one more than it, and at
most `max_accumulation_steps`; the update uses the mean of the window's batch
gradients. `GradientAccumulator` holds that rule and the state it needs.
"""

import math
import numbers

import keras
from keras import ops

from keras_as_softmax._keras_private import untrack
from keras_as_softmax.skipping import run_cond


class GradientAccumulator(keras.metrics.Metric):
    """AS-Speed's training state, owned by an `AdaptiveModel`.

    It holds one gradient accumulator per trainable variable, the current
    window, the number of batches in the open window, the number of updates,
    and the last training batch's masked and counted samples. It is a
    `Metric` so that on JAX its variables travel in the training state, on
    `tf.distribute` each replica keeps its own accumulators. Unlike other
    metrics it keeps its state across epochs (`reset_state` does nothing),
    reports nothing by itself (the training step logs the window and the
    updates), and is saved with the model's weights.

    Args:
        max_accumulation_steps: The largest window, an integer >= 1.
        accumulation_lambda: `lambda >= 0` in the window rule.
        name: Name of the metric.

    Example:

    >>> from keras_as_softmax import AdaptiveSequential
    >>> model = AdaptiveSequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> accumulator = model.gradient_accumulator
    >>> type(accumulator).__name__, int(accumulator.window.numpy())
    ('GradientAccumulator', 1)
    """

    def __init__(
        self,
        max_accumulation_steps=2,
        accumulation_lambda=1.0,
        name="gradient_accumulator",
    ):
        super().__init__(name=name)
        self.configure(max_accumulation_steps, accumulation_lambda)
        # On tf.distribute every replica holds the same counters (read from
        # the first) and its own gradient sum (read as the mean, which the
        # optimizer's cross-replica sum turns back into the total).
        self.window = self._counter("window", initial_value=1)
        self.micro_step = self._counter("micro_step")
        self.updates = self._counter("updates")
        self.batch_masked = self._counter("batch_masked")
        self.batch_counted = self._counter("batch_counted")
        self.batch_needed = self._counter("batch_needed")
        self.batch_samples = self._counter("batch_samples")
        self.sub_batch_size = self._counter("sub_batch_size")
        self.gradients = []
        self.built = False

    def configure(self, max_accumulation_steps, accumulation_lambda):
        """Checks and sets the window rule's settings.

        Example:

        >>> from keras_as_softmax import AdaptiveSequential
        >>> model = AdaptiveSequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> model.gradient_accumulator.configure(4, accumulation_lambda=0.5)
        >>> model.max_accumulation_steps, model.accumulation_lambda
        (4, 0.5)
        """
        if (
            isinstance(max_accumulation_steps, bool)
            or not isinstance(max_accumulation_steps, numbers.Integral)
            or max_accumulation_steps < 1
        ):
            raise ValueError(
                "`max_accumulation_steps` must be an integer >= 1 (1 turns "
                "accumulation off; the reference uses 2); received "
                f"{max_accumulation_steps!r}."
            )
        if (
            isinstance(accumulation_lambda, bool)
            or not isinstance(accumulation_lambda, numbers.Real)
            or not 0 <= accumulation_lambda < math.inf
        ):
            raise ValueError(
                "`accumulation_lambda` must be a finite number >= 0 (the "
                f"reference uses 1.0); received {accumulation_lambda!r}."
            )
        self.max_accumulation_steps = int(max_accumulation_steps)
        self.accumulation_lambda = float(accumulation_lambda)

    def _counter(self, name, initial_value=0):
        return self.add_variable(
            shape=(),
            initializer=keras.initializers.Constant(initial_value),
            dtype="int32",
            aggregation="only_first_replica",
            name=name,
        )

    def build(self, trainable_variables):
        """Creates one accumulator per trainable variable.

        Later calls check them, and make new ones if the trainable
        variables changed (e.g. layers unfrozen) while no window is open.
        """
        shapes = [tuple(v.shape) for v in trainable_variables]
        if self.built and shapes == [tuple(g.shape) for g in self.gradients]:
            return
        if self.built and int(self.micro_step.numpy()) > 0:
            raise ValueError(
                "The model's trainable variables changed while an AS-Speed "
                "window is open; call `model.apply_accumulated_gradients()` "
                "before freezing or unfreezing layers."
            )
        self._create_gradients(shapes, [v.dtype for v in trainable_variables])

    def _create_gradients(self, shapes, dtypes):
        for total in self.gradients:
            untrack(self, total)
        self.gradients = [
            self.add_variable(
                shape=shape,
                initializer="zeros",
                dtype=dtype,
                aggregation="mean",
                name=f"gradient_{i}",
            )
            for i, (shape, dtype) in enumerate(zip(shapes, dtypes))
        ]
        self.built = True

    def record_batch(self, num_masked, num_counted, num_needed, num_samples):
        """Stores a training batch's counts: masked and counted positions
        for the window rule, samples that needed a backward pass and samples
        for the choice of the next step's pass."""
        self.batch_masked.assign(ops.cast(num_masked, "int32"))
        self.batch_counted.assign(ops.cast(num_counted, "int32"))
        self.batch_needed.assign(ops.cast(num_needed, "int32"))
        self.batch_samples.assign(ops.cast(num_samples, "int32"))

    def last_counts(self):
        """The last training batch's samples that needed a backward pass,
        and its samples: what the next step's choice of pass reads."""
        return self.batch_needed.value, self.batch_samples.value

    def next_window(self, window, micro_step, num_masked, num_counted):
        """The window rule, on tensors (no Python branching: it runs under jit).

        Args:
            window, micro_step: The current window and how many batches the
                open window already holds (0 at the first batch of a window).
            num_masked, num_counted: This batch's masked and counted samples.

        Returns:
            `(window, is_update)`: the window this batch belongs to, and
            whether this batch closes it.

        Example:

        >>> accumulator = GradientAccumulator(max_accumulation_steps=4)
        >>> # A window's first batch, 4 of its 8 samples masked:
        >>> window, is_update = accumulator.next_window(1, 0, 4, 8)
        >>> int(window), bool(is_update)
        (2, False)
        """
        counted = ops.cast(num_counted, "float32")
        unmasked = counted - ops.cast(num_masked, "float32")
        proposed = ops.round(
            self.accumulation_lambda * counted / ops.maximum(unmasked, 1.0)
        )
        proposed = ops.where(unmasked > 0, proposed, self.max_accumulation_steps)
        proposed = ops.cast(ops.maximum(proposed, 1.0), "int32")
        proposed = ops.minimum(
            ops.clip(proposed, window, window + 1), self.max_accumulation_steps
        )
        # A batch with nothing counted says nothing: keep the window.
        proposed = ops.where(num_counted > 0, proposed, window)
        window = ops.where(ops.equal(micro_step, 0), proposed, window)
        return window, ops.greater_equal(micro_step + 1, window)

    def accumulate_or_update(
        self, grads, totals, micro_step, window, is_update, apply, cond=run_cond
    ):
        """One batch of a window, the same for every trainer.

        Adds `grads` to the window's sums (a window's first batch starts
        afresh) and, when `is_update`, applies their mean.

        Args:
            grads: This batch's gradients.
            totals: The accumulators' values.
            micro_step, window, is_update: As from `next_window`.
            apply: `apply(mean_gradients)`, the trainer's optimizer update.
            cond: `cond(is_update, update_fn, accumulate_fn, operands)`, how
                the trainer branches (by default `skipping.run_cond`); each
                branch returns the new totals.

        Returns:
            The new `(totals, micro_step, updates_added)`. After an update
            the totals are left stale: the next batch starts afresh.
        """

        def sums(grads, totals, micro_step):
            first_batch = ops.equal(micro_step, 0)
            return [
                ops.where(first_batch, grad, total + grad)
                for grad, total in zip(grads, totals)
            ]

        def update(grads, totals, micro_step, window):
            apply(
                [
                    total / ops.cast(window, total.dtype)
                    for total in sums(grads, totals, micro_step)
                ]
            )
            return totals

        def accumulate(grads, totals, micro_step, window):
            return sums(grads, totals, micro_step)

        totals = cond(is_update, update, accumulate, (grads, totals, micro_step, window))
        return (
            totals,
            ops.where(is_update, 0, micro_step + 1),
            ops.cast(is_update, "int32"),
        )

    def advance(self):
        """`next_window` on this state's variables.

        Stores the window and returns `(micro_step, window, is_update)`.
        """
        micro_step = self.micro_step.value
        window, is_update = self.next_window(
            self.window.value, micro_step, self.batch_masked.value, self.batch_counted.value
        )
        self.window.assign(window)
        return micro_step, window, is_update

    def update_state(self, *args, **kwargs):
        raise NotImplementedError(
            "The AS-Speed state is updated by `AdaptiveModel.train_step`."
        )

    def reset_state(self):
        pass  # Training state, not a per-epoch statistic.

    def result(self):
        return {}  # The training step logs the window and the updates.

    def logs(self, skipping, window=None, updates=None, sub_batch_size=None):
        """AS-Speed's training logs: the window, the update count and, when
        `skipping`, the sub-batch size; by default those in the variables."""
        # Tensors, not the variables themselves: an eager TensorFlow step
        # (`run_eagerly=True`) cannot return a variable.
        logs = {
            "accumulation_steps": ops.convert_to_tensor(
                self.window if window is None else window
            ),
            "optimizer_updates": ops.convert_to_tensor(
                self.updates if updates is None else updates
            ),
        }
        if skipping:
            logs["sub_batch_size"] = ops.convert_to_tensor(
                self.sub_batch_size if sub_batch_size is None else sub_batch_size
            )
        return logs

    def get_config(self):
        return {
            "max_accumulation_steps": self.max_accumulation_steps,
            "accumulation_lambda": self.accumulation_lambda,
            "name": self.name,
        }

    def save_own_variables(self, store):
        for i, variable in enumerate(self.variables):
            store[str(i)] = variable.numpy()

    def load_own_variables(self, store):
        num_counters = len(self.variables) - len(self.gradients)
        saved = [store[str(i)] for i in range(num_counters, len(store))]
        if saved and [s.shape for s in saved] != [tuple(g.shape) for g in self.gradients]:
            # Saved from a model whose accumulators this one lacks (not yet
            # trained, or other trainable variables): shape them now.
            self._create_gradients(
                [s.shape for s in saved], [str(s.dtype) for s in saved]
            )
        for i, variable in enumerate(self.variables[:num_counters]):
            variable.assign(store[str(i)])
        for total, value in zip(self.gradients, saved or [None] * len(self.gradients)):
            # Weights saved before training hold no sums: start with none.
            total.assign(ops.zeros(total.shape, total.dtype) if value is None else value)
