"""JAX-specific code."""

import contextlib

import jax
import keras
import numpy as np


def known_values(x):
    """`x` as a NumPy array if its values are known now, else None (traced)."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


# XLA fuses the `keras.ops` form of the sparse loss well: no kernel of our own.
fused_sparse_as_softmax_loss = None


def sum_across_replicas(x):
    """`x` summed over data-parallel replicas: JAX arrays are already global."""
    return x


class AdaptiveTrainer:
    """AS-Speed's training step for the JAX trainer.

    Stateless, as Keras's JAX `train_step`: the accumulators and counters are
    metric variables of the model, read from and returned in `state`, and
    `lax.cond` chooses between an optimizer update and accumulation.
    """

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_state, metrics_state = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        grad_fn = jax.value_and_grad(self.compute_loss_and_updates, has_aux=True)
        (_, aux), grads = grad_fn(
            trainable,
            non_trainable,
            metrics_state,
            x,
            y,
            sample_weight,
            training=True,
            optimizer_variables=optimizer_state,
        )
        unscaled_loss, y_pred, non_trainable, metrics_state = aux

        accumulator = self.gradient_accumulator
        metrics_state = list(metrics_state)
        position = {id(v): i for i, v in enumerate(self.metrics_variables)}

        def value(variable):
            return metrics_state[position[id(variable)]]

        def assign(variable, new_value):
            metrics_state[position[id(variable)]] = new_value

        micro_step = value(accumulator.micro_step)
        window, is_update = accumulator.next_window(
            value(accumulator.window),
            micro_step,
            value(accumulator.batch_masked),
            value(accumulator.batch_counted),
        )
        first_batch = micro_step == 0

        def window_sums(totals):
            return [
                jax.numpy.where(first_batch, grad, total + grad)
                for total, grad in zip(totals, grads)
            ]

        def update(trainable, optimizer_state, totals):
            mean = [total / window.astype(total.dtype) for total in window_sums(totals)]
            trainable, optimizer_state = self.optimizer.stateless_apply(
                optimizer_state, mean, trainable
            )
            return trainable, optimizer_state, totals  # Stale: the next batch starts afresh.

        def accumulate(trainable, optimizer_state, totals):
            return trainable, optimizer_state, window_sums(totals)

        operands = (
            trainable,
            optimizer_state,
            [value(total) for total in accumulator.gradients],
        )
        if isinstance(is_update, jax.core.Tracer):
            trainable, optimizer_state, totals = jax.lax.cond(
                is_update, update, accumulate, *operands
            )
        else:
            # Eager (`jit_compile=False`): an untraced `lax.cond` would trace
            # and compile both branches again at every batch.
            branch = update if bool(is_update) else accumulate
            trainable, optimizer_state, totals = branch(*operands)
        assign(accumulator.window, window)
        assign(accumulator.micro_step, jax.numpy.where(is_update, 0, micro_step + 1))
        updates = value(accumulator.updates) + is_update
        assign(accumulator.updates, updates)
        for total, new_value in zip(accumulator.gradients, totals):
            assign(total, new_value)

        logs, metrics_state = self._update_metrics_variables(
            metrics_state, unscaled_loss, x, y, y_pred, sample_weight
        )
        logs = {**logs, **accumulator.logs(window, updates)}
        return logs, (trainable, non_trainable, optimizer_state, metrics_state)

    def _distribution_scope(self):
        return contextlib.nullcontext()

    def _apply_gradients(self, compute_gradients):
        # Stateless, as in the step: an eager `optimizer.apply` fails on JAX
        # under a `LossScaleOptimizer` (its `cond` assigns variables).
        optimizer, variables = self.optimizer, self.trainable_variables
        new_variables, new_optimizer_state = optimizer.stateless_apply(
            [v.value for v in optimizer.variables],
            compute_gradients(),
            [v.value for v in variables],
        )
        for variable, new_value in zip(variables, new_variables):
            variable.assign(new_value)
        for variable, new_value in zip(optimizer.variables, new_optimizer_state):
            variable.assign(new_value)
