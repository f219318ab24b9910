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
    """`x` as a NumPy array if its values are known now, else None (in a graph)."""
    if tf.is_symbolic_tensor(x):
        return None
    return np.asarray(x)


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
            self._record_backward(training_pass)
            return grads, self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

        grads, logs = self._train_pass(
            x,
            y,
            sample_weight,
            self.gradient_accumulator.selection_due(),
            lambda x: self(x, training=False),
            run_pass,
        )
        self._accumulate_or_update(grads, variables)
        return {**logs, **self.gradient_accumulator.logs(self.skip_masked)}

    def _accumulate_or_update(self, grads, variables):
        accumulator = self.gradient_accumulator
        micro_step, window, is_update = accumulator.advance()
        first_batch = ops.equal(micro_step, 0)

        def window_sums(grads):
            return [
                tf.where(first_batch, grad, total.value + grad)
                for total, grad in zip(accumulator.gradients, grads)
            ]

        def update(grads, window):
            # The accumulators keep stale sums: the next batch starts afresh.
            self.optimizer.apply(
                [total / tf.cast(window, total.dtype) for total in window_sums(grads)],
                variables,
            )
            accumulator.micro_step.assign(0)
            accumulator.updates.assign_add(1)

        def accumulate(grads):
            for total, new_value in zip(accumulator.gradients, window_sums(grads)):
                total.assign(new_value)
            accumulator.micro_step.assign_add(1)

        if strategy_supports_no_merge_call():
            ops.cond(is_update, lambda: update(grads, window), lambda: accumulate(grads))
            return

        def cross_replica(strategy, is_update, grads, window):
            # Every replica saw the same global counts, hence the same choice.
            is_update = strategy.experimental_local_results(is_update)[0]
            ops.cond(
                is_update,
                lambda: strategy.extended.call_for_each_replica(
                    update, args=(grads, window)
                ),
                lambda: strategy.extended.call_for_each_replica(
                    accumulate, args=(grads,)
                ),
            )

        tf.distribute.get_replica_context().merge_call(
            cross_replica, args=(is_update, grads, window)
        )

    def _distribution_scope(self):
        return self.distribute_strategy.scope()

    def _apply_gradients(self, compute_gradients):
        # In replica context: each replica's own sums, summed by the optimizer.
        self.distribute_strategy.run(
            lambda: self.optimizer.apply(compute_gradients(), self.trainable_variables)
        )
