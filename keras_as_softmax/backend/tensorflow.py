"""TensorFlow-specific code."""

import functools

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from keras import tree

from keras_as_softmax._keras_private import loss_tracker
from keras_as_softmax._keras_private import strategy_supports_no_merge_call
from keras_as_softmax._keras_private import unscale_loss_for_distribution
from keras_as_softmax.skipping import PassChooser
from keras_as_softmax.skipping import SubBatch


def known_values(x):
    """`x` as a NumPy array if its values are known now, else None (in a graph).

    Example:

    >>> known_values(keras.ops.convert_to_tensor([1, 2])).tolist()
    [1, 2]
    """
    if tf.is_symbolic_tensor(x):
        return None
    return np.asarray(x)


def branch_value(x):
    """The value of scalar `x` if known now (eager), else None: a graph
    branches with `tf.cond`/`tf.switch_case`."""
    if tf.is_symbolic_tensor(x):
        return None
    return np.asarray(x).item()


# XLA fuses the `keras.ops` form of the sparse loss well: no kernel of our own.
fused_sparse_as_softmax_loss = None


def sum_across_replicas(x):
    """`x` summed over the replicas of a `tf.distribute` strategy."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return x
    return context.all_reduce(tf.distribute.ReduceOp.SUM, x)


class AdaptiveTrainer:
    """AS-Speed's training step for the TensorFlow trainer.

    As Keras's TensorFlow `train_step`, with `GradientTape`; `ops.cond`
    chooses between an optimizer update and accumulation, so the step
    compiles with XLA. Under a `tf.distribute` strategy that needs merge
    calls (e.g. `MirroredStrategy`) the choice is made in cross-replica
    context, as Keras's `LossScaleOptimizer` does, because an optimizer update
    inside a replica-context `cond` fails there.

    With `skip_masked`, unless it runs eagerly, `skipping.PassChooser`
    chooses each step's pass on the host between `tf.function`s (a selection
    pass, and one step per size of the ladder), as on JAX.
    """

    def make_train_function(self, force=False):
        if not self.skip_masked or self.run_eagerly:
            return super().make_train_function(force=force)
        if self.train_function is not None and not force:
            self._pass_chooser.reset()
            return self.train_function

        def compiled(function):
            return tf.function(
                function, jit_compile=self.jit_compile, reduce_retracing=True
            )

        accumulator = self.gradient_accumulator
        self._pass_chooser = PassChooser(
            compiled(self._select),
            lambda branch: compiled(functools.partial(self._train_step, branch=branch)),
            lambda args, outputs: (
                accumulator.batch_needed.value,
                accumulator.batch_samples.value,
            ),
        )

        def function(iterator):
            # Keras's loop over `steps_per_execution`, in Python.
            outputs = None
            for _, data in zip(range(self.steps_per_execution), iterator):
                outputs = self._pass_chooser(_without_optionals(data))
            if outputs is None:
                raise StopIteration
            return outputs

        self.train_function = function
        return function

    def _select(self, data):
        """The selection pass: `(needs, selection_pred, counts)`."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._build_before_branches(x)
        sub_batch = self._sub_batch(y, self(x, training=False), sample_weight)
        return sub_batch.needs, sub_batch.selection_pred, sub_batch.counts

    def _build_before_branches(self, x):
        if not self.built:
            # Without a strategy Keras builds the model in this step's first
            # trace: build it here, outside the branches of the step.
            self(x, training=False)

    def train_step(self, data):
        return self._train_step(data)

    def _train_step(self, data, selection=None, branch=None):
        """The step; `branch` and `selection` as chosen on the host, if so."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._build_before_branches(x)
        variables = self.trainable_variables
        self.gradient_accumulator.build(variables)

        def run_pass(training_pass):
            with tf.GradientTape() as tape:
                y_pred = training_pass.predictions(
                    lambda x: self(x, training=True), x
                )
                loss = self.compute_loss(
                    x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
                )
                loss_tracker(self).update_state(
                    unscale_loss_for_distribution(loss),
                    sample_weight=tf.shape(
                        next(i for i in tree.flatten(x) if i is not None)
                    )[0],
                )
                if self.optimizer is not None:
                    loss = self.optimizer.scale_loss(loss)
            grads = [
                tf.zeros_like(v.value) if g is None else g
                for v, g in zip(variables, tape.gradient(loss, variables))
            ]
            self._record_backward(training_pass)
            return grads, self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

        def select():
            if selection is not None:
                return SubBatch(*selection)
            return self._sub_batch(y, self(x, training=False), sample_weight)

        grads, logs = self._train_pass(
            x, self.gradient_accumulator.selection_due(), select, run_pass, branch
        )
        self._accumulate_or_update(
            grads,
            **({} if strategy_supports_no_merge_call() else {"cond": self._cross_replica_cond}),
        )
        return {**logs, **self.gradient_accumulator.logs(self.skip_masked)}

    def _cross_replica_cond(self, is_update, update, accumulate, operands):
        """`cond` for `accumulate_or_update` under a strategy that needs merge
        calls: the choice is made in cross-replica context (every replica saw
        the same global counts, hence the same choice), and each replica
        stores its own sums."""
        accumulator = self.gradient_accumulator

        def on_each_replica(branch):
            def run(*operands):
                _, totals = branch(*operands)
                for total, new_value in zip(accumulator.gradients, totals):
                    total.assign(new_value)

            return run

        def merge_fn(strategy, is_update, operands):
            is_update = strategy.experimental_local_results(is_update)[0]
            ops.cond(
                is_update,
                lambda: strategy.extended.call_for_each_replica(
                    on_each_replica(update), args=operands
                ),
                lambda: strategy.extended.call_for_each_replica(
                    on_each_replica(accumulate), args=operands
                ),
            )

        tf.distribute.get_replica_context().merge_call(
            merge_fn, args=(is_update, operands)
        )
        return operands[0], [total.value for total in accumulator.gradients]

    def _distribution_scope(self):
        return self.distribute_strategy.scope()

    def _apply_gradients(self, compute_gradients):
        # In replica context: each replica's own sums, summed by the optimizer.
        self.distribute_strategy.run(
            lambda: self.optimizer.apply(compute_gradients(), self.trainable_variables)
        )


def _without_optionals(data):
    """`data` with Keras's empty `tf.experimental.Optional`s (its stand-in for
    None inputs in a `tf.data` pipeline) as None, as Keras's step gets it."""
    return tree.map_structure(
        lambda t: None if isinstance(t, tf.experimental.Optional) else t, data
    )
