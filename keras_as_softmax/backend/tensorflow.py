"""TensorFlow-specific code."""

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from keras import tree

from keras_as_softmax._keras_private import loss_tracker
from keras_as_softmax._keras_private import strategy_supports_no_merge_call
from keras_as_softmax._keras_private import unscale_loss_for_distribution


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
    """

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if not self.built:
            # Without a strategy Keras builds the model in this step's first
            # trace: build it here, outside the branches of the step.
            self(x, training=False)
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
            if self.skip_masked:
                # The branches of the step must agree: sparse gradients
                # (e.g. of an `Embedding`) become dense.
                grads = [tf.convert_to_tensor(g) for g in grads]
            self._record_backward(training_pass)
            return grads, self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

        grads, logs = self._train_pass(
            x,
            self.gradient_accumulator.selection_due(),
            lambda: self._sub_batch(y, self(x, training=False), sample_weight),
            run_pass,
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
