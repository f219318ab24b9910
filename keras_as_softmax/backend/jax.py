"""JAX-specific code."""

import contextlib

import jax
import keras
import numpy as np

from keras_as_softmax._keras_private import forward_losses
from keras_as_softmax._keras_private import training_kwargs
from keras_as_softmax._keras_private import update_metrics_variables


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
        accumulator = self.gradient_accumulator
        position = {id(v): i for i, v in enumerate(self.metrics_variables)}

        def value(variable):
            return metrics_state[position[id(variable)]]

        def run_pass(training_pass):
            def loss_fn(trainable):
                # What the forward pass updates: none when no row goes through it.
                updates = {"non_trainable": non_trainable, "losses": []}

                def call(inputs):
                    y_pred, updates["non_trainable"], updates["losses"] = (
                        self.stateless_call(
                            trainable,
                            non_trainable,
                            inputs,
                            return_losses=True,
                            **training_kwargs(self, True),
                        )
                    )
                    return y_pred

                y_pred = training_pass.predictions(call, x)
                return self._loss_and_updates(
                    trainable,
                    updates["non_trainable"],
                    metrics_state,
                    updates["losses"],
                    optimizer_state,
                    x,
                    y,
                    y_pred,
                    sample_weight,
                )

            grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
            (_, (loss, y_pred, new_non_trainable, new_metrics)), grads = grad_fn(
                trainable
            )
            new_metrics = self._stateless(
                new_metrics, lambda: self._record_backward(training_pass)
            )
            logs, new_metrics = update_metrics_variables(
                self, new_metrics, loss, x, y, y_pred, sample_weight
            )
            return grads, logs, new_non_trainable, new_metrics

        def predict(x):
            return self.stateless_call(
                trainable,
                non_trainable,
                x,
                return_losses=True,
                **training_kwargs(self, False),
            )[0]

        grads, logs, non_trainable, metrics_state = self._train_pass(
            x,
            y,
            sample_weight,
            accumulator.selection_due(
                value(accumulator.batch_needed), value(accumulator.batch_samples)
            ),
            predict,
            run_pass,
        )

        metrics_state = list(metrics_state)

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

        logs = {
            **logs,
            **accumulator.logs(
                self.skip_masked, window, updates, value(accumulator.sub_batch_size)
            ),
        }
        return logs, (trainable, non_trainable, optimizer_state, metrics_state)

    def _loss_and_updates(
        self,
        trainable,
        non_trainable,
        metrics_state,
        forward_losses_,
        optimizer_state,
        x,
        y,
        y_pred,
        sample_weight,
    ):
        """Keras's `compute_loss_and_updates` after its forward pass: the
        scaled loss, and `(loss, y_pred, non_trainable, metrics_state)`."""
        with forward_losses(self, forward_losses_):
            loss, (_, non_trainable, metrics_state) = self.stateless_compute_loss(
                trainable,
                non_trainable,
                metrics_state,
                x=x,
                y=y,
                y_pred=y_pred,
                sample_weight=sample_weight,
                training=True,
            )
        scaled_loss = loss
        if self.optimizer is not None:
            mapping = list(zip(self.optimizer.variables, optimizer_state))
            with keras.StatelessScope(state_mapping=mapping):
                scaled_loss = self.optimizer.scale_loss(loss)
        return scaled_loss, (loss, y_pred, non_trainable, metrics_state)

    def _stateless(self, metrics_state, update):
        """Runs `update()` on the metrics' values `metrics_state`; returns
        their new values."""
        mapping = list(zip(self.metrics_variables, metrics_state))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            update()
        return [scope.get_current_value(v) for v in self.metrics_variables]

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
