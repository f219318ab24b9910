"""AS-Speed's training step for Keras's JAX trainer."""

import contextlib
import functools

import jax
import keras

from keras_as_softmax._keras_private import forward_losses
from keras_as_softmax._keras_private import make_step_function
from keras_as_softmax._keras_private import training_kwargs
from keras_as_softmax._keras_private import update_metrics_variables
from keras_as_softmax.sample_buffer import training_rows
from keras_as_softmax.skipping import PassChooser
from keras_as_softmax.skipping import SubBatch
from keras_as_softmax.skipping import run_cond


class AdaptiveTrainer:
    """AS-Speed's training step for the JAX trainer.

    Stateless, as Keras's JAX `train_step`: the accumulators and counters are
    metric variables of the model, read from and returned in `state`. The
    accumulation code the stateful trainers run runs here too, within a
    `keras.StatelessScope` over the state's values (as Keras's
    `stateless_apply` runs `apply`), and `lax.cond` chooses between an
    optimizer update and accumulation.

    With `skip_masked` and `jit_compile`, `skipping.PassChooser` chooses each
    step's pass on the host between jitted functions (a selection pass, and
    one step per size of the ladder).
    """

    def make_train_function(self, force=False):
        if self.skip_masked == "buffer":
            return self._make_buffered_train_function(force)
        if not self.skip_masked or self.run_eagerly or not self.jit_compile:
            return super().make_train_function(force=force)
        if self.train_function is not None and not force:
            self._pass_chooser.reset()
            return
        self._pass_chooser = PassChooser(
            jax.jit(self._select),
            lambda branch: jax.jit(
                functools.partial(self._train_step, branch=branch), donate_argnums=0
            ),
            # The counts in the state before the step, or in the step's new one.
            lambda args, outputs: self._last_counts(
                (args[0] if outputs is None else outputs[1])[3]
            ),
            self.skipping_costs,
        )
        self.train_function = make_step_function(self, self._pass_chooser)

    def _make_buffered_train_function(self, force):
        if self.train_function is not None and not force:
            return
        jitted = not self.run_eagerly and self.jit_compile
        observe = jax.jit(self._buffer_observe) if jitted else self._buffer_observe
        train = (
            jax.jit(self._buffer_train, donate_argnums=0) if jitted else self._buffer_train
        )

        select_rest = (
            jax.jit(self._stateless_select_rest) if jitted else self._stateless_select_rest
        )

        def observe_state(state, data, rows, fill):
            logs, metrics_state, rows, needs, shares = observe(state, data, rows, fill)
            return logs, (*state[:3], metrics_state), rows, needs, shares

        self.train_function = make_step_function(
            self, self._buffered_steps_for(observe_state, train, select_rest)
        )

    def _stateless_select_rest(self, state, data, rows, start):
        """`AdaptiveModel._write_rest` after a stateless selection pass."""
        data, start = self._rest_of(data, start)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        sub_batch = self._stateless_select(state, x, y, sample_weight)
        return self._write_rest(data, rows, sub_batch.needs, start)

    def _buffer_observe(self, state, data, rows, fill):
        """The buffer mode's selection pass: the step's logs (on the
        selection pass's predictions), the metrics' new values, and the batch
        written into the rows."""
        trainable, non_trainable, optimizer_state, metrics_state = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred, _, losses = self.stateless_call(
            trainable, non_trainable, x, return_losses=True, **training_kwargs(self, False)
        )
        _, (loss, y_pred, _, metrics_state) = self._loss_and_updates(
            trainable,
            non_trainable,
            metrics_state,
            losses,
            optimizer_state,
            x,
            y,
            y_pred,
            sample_weight,
        )
        logs, metrics_state = update_metrics_variables(
            self, metrics_state, loss, x, y, y_pred, sample_weight
        )
        rows, needs, shares = self._buffer_write(data, rows, fill)

        def record_and_log():
            self._record_backward_rows(jax.numpy.sum(needs), needs.shape[0])
            return self.gradient_accumulator.logs(True)

        as_speed_logs, (metrics_state,) = self._stateless(
            (self.metrics_variables,), (metrics_state,), record_and_log
        )
        return {**logs, **as_speed_logs}, metrics_state, rows, needs, shares

    def _buffer_train(self, state, rows, count, divisor):
        """The buffer's training pass and update: `(state, updates)`."""
        trainable, non_trainable, optimizer_state, metrics_state = state
        x, y, sample_weight = training_rows(self.sample_buffer, rows, count, divisor)

        def loss_fn(trainable):
            y_pred, new_non_trainable, losses = self.stateless_call(
                trainable,
                non_trainable,
                x,
                return_losses=True,
                **training_kwargs(self, True),
            )
            with self._summed_loss():
                scaled_loss, (_, _, new_non_trainable, _) = self._loss_and_updates(
                    trainable,
                    new_non_trainable,
                    metrics_state,
                    losses,
                    optimizer_state,
                    x,
                    y,
                    y_pred,
                    sample_weight,
                )
            return scaled_loss, new_non_trainable

        (_, non_trainable), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        trainable, optimizer_state = self.optimizer.stateless_apply(
            optimizer_state, grads, trainable
        )
        updates, (metrics_state,) = self._stateless(
            (self.metrics_variables,), (metrics_state,), self._count_update
        )
        return (trainable, non_trainable, optimizer_state, metrics_state), updates

    def _with_state(self, function):
        """Runs `function(state) -> (state, changed)` on the model's
        variables (in `fit`, after the last step's state is put back)."""
        self.jax_state_sync()
        groups = (
            self.trainable_variables,
            self.non_trainable_variables,
            self.optimizer.variables,
            self.metrics_variables,
        )
        state, changed = function(tuple([v.value for v in group] for group in groups))
        if changed:
            for group, values in zip(groups, state):
                for variable, value in zip(group, values):
                    variable.assign(value)

    def _last_counts(self, metrics_state):
        """The last training batch's `(needed, samples)`, from the metrics'
        values."""
        return self._stateless(
            (self.metrics_variables,),
            (metrics_state,),
            self.gradient_accumulator.last_counts,
        )[0]

    def _select(self, state, data):
        """The selection pass: `(needs, selection_pred, counts)`."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        sub_batch = self._stateless_select(state, x, y, sample_weight)
        return sub_batch.needs, sub_batch.selection_pred, sub_batch.counts

    def _stateless_select(self, state, x, y, sample_weight):
        trainable, non_trainable, _, metrics_state = state
        selection_pred = self.stateless_call(
            trainable,
            non_trainable,
            x,
            return_losses=True,
            **training_kwargs(self, False),
        )[0]
        # The loss reads its delta (e.g. `DeltaWarmup`'s) from the state.
        return self._stateless(
            (self.metrics_variables,),
            (metrics_state,),
            lambda: self._sub_batch(y, selection_pred, sample_weight),
        )[0]

    def train_step(self, state, data):
        return self._train_step(state, data)

    def _train_step(self, state, data, selection=None, branch=None):
        """The step; `branch` and `selection` as chosen on the host, if so."""
        trainable, non_trainable, optimizer_state, metrics_state = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
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
            _, (new_metrics,) = self._stateless(
                (self.metrics_variables,),
                (new_metrics,),
                lambda: self._record_backward(training_pass),
            )
            logs, new_metrics = update_metrics_variables(
                self, new_metrics, loss, x, y, y_pred, sample_weight
            )
            return grads, logs, new_non_trainable, new_metrics

        def select():
            if selection is not None:
                return SubBatch(*selection)
            return self._stateless_select(state, x, y, sample_weight)

        grads, logs, non_trainable, metrics_state = self._train_pass(
            x,
            self._last_counts(metrics_state),
            select,
            run_pass,
            branch,
        )

        def accumulate_or_update():
            self._accumulate_or_update(
                grads, cond=self._cond_carrying_updates, apply=self._apply_statelessly
            )
            return self.gradient_accumulator.logs(self.skip_masked)

        as_speed_logs, (trainable, optimizer_state, metrics_state) = self._stateless(
            self._updated_groups(),
            (trainable, optimizer_state, metrics_state),
            accumulate_or_update,
        )
        logs = {**logs, **as_speed_logs}
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

    def _updated_groups(self):
        """The variables an update step assigns: trainable, optimizer's, metrics'."""
        optimizer_variables = [] if self.optimizer is None else self.optimizer.variables
        return self.trainable_variables, optimizer_variables, self.metrics_variables

    @staticmethod
    def _stateless(groups, values, function):
        """Runs `function()` with the variables of `groups` holding `values`,
        in a `keras.StatelessScope` (as Keras's `stateless_apply` runs
        `apply`); returns its result and the groups' new values."""
        mapping = [
            pair for group, group_values in zip(groups, values)
            for pair in zip(group, group_values)
        ]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            result = function()
        new_values = tuple(
            [scope.get_current_value(variable) for variable in group]
            for group in groups
        )
        return result, new_values

    def _cond_carrying_updates(self, is_update, update, accumulate, operands):
        """`run_cond` for `accumulate_or_update` within `_stateless`: each
        branch runs in a scope of its own and returns the values it assigned
        (a traced branch must not leave them in the enclosing scope), which
        are then assigned there."""
        groups = self._updated_groups()[:2]
        values = tuple([variable.value for variable in group] for group in groups)

        def carrying(branch):
            return lambda *operands: self._stateless(
                groups, values, lambda: branch(*operands)
            )

        totals, new_values = run_cond(
            is_update, carrying(update), carrying(accumulate), operands
        )
        for group, group_values in zip(groups, new_values):
            for variable, value in zip(group, group_values):
                variable.assign(value)
        return totals

    def _apply_statelessly(self, mean):
        """The optimizer update through its `stateless_apply`, assigned to
        the variables (within `_stateless`, to its scope). An
        `optimizer.apply` would fail under a `LossScaleOptimizer`, whose
        `cond` assigns variables."""
        optimizer, variables = self.optimizer, self.trainable_variables
        new_variables, new_optimizer_state = optimizer.stateless_apply(
            [v.value for v in optimizer.variables], mean, [v.value for v in variables]
        )
        for variable, new_value in zip(variables, new_variables):
            variable.assign(new_value)
        for variable, new_value in zip(optimizer.variables, new_optimizer_state):
            variable.assign(new_value)

    def _distribution_scope(self):
        return contextlib.nullcontext()

    def _apply_gradients(self, compute_gradients):
        # Stateless, as in the step.
        self._apply_statelessly(compute_gradients())
