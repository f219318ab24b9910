"""AS-Speed's training step for Keras's TensorFlow trainer."""

import functools

import keras
import tensorflow as tf
from keras import ops
from keras import tree

from keras_as_softmax._keras_private import loss_tracker
from keras_as_softmax._keras_private import reduce_per_replica
from keras_as_softmax._keras_private import strategy_supports_no_merge_call
from keras_as_softmax._keras_private import unscale_loss_for_distribution
from keras_as_softmax.sample_buffer import training_rows
from keras_as_softmax.skipping import PassChooser
from keras_as_softmax.skipping import SubBatch


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
    pass, and one step per size of the ladder), as on JAX; under a strategy
    every replica runs the size that the one with the most samples to train
    needs.
    """

    def make_train_function(self, force=False):
        if self.skip_masked == "buffer":
            return self._make_buffered_train_function(force)
        if not self.skip_masked or self.run_eagerly:
            return super().make_train_function(force=force)
        if self.train_function is not None and not force:
            self._pass_chooser.reset()
            return self.train_function
        strategy = self.distribute_strategy

        def select(data):
            needs, selection_pred, counts = strategy.run(self._select, args=(data,))
            return needs, selection_pred, _over_replicas(strategy, counts)

        accumulator = self.gradient_accumulator

        def compile_step(branch):
            def step(data, selection):
                outputs = strategy.run(
                    functools.partial(self._train_step, branch=branch),
                    args=(data, selection),
                )
                # The counts for the next step's choice, read in the step: on
                # the host each read is an eager op.
                return reduce_per_replica(outputs, strategy), tf.stack(accumulator.last_counts())

            return self._compiled(step)

        def batch_size(args):
            # Under a strategy the batch is distributed: its first replica's.
            first = tree.flatten(args[0])[0]
            return strategy.experimental_local_results(first)[0].shape[0]

        self._pass_chooser = PassChooser(
            self._compiled(select),
            compile_step,
            lambda args, outputs: accumulator.last_counts() if outputs is None else outputs[1],
            self.skipping_costs,
            batch_size,
        )

        def step(data):
            self._build_optimizer()
            return self._pass_chooser(data)[0]

        self.train_function = self._host_loop(step)
        return self.train_function

    def _build_optimizer(self):
        # Else a compiled step that updates traces twice: once to create the
        # optimizer's variables.
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)

    def _compiled(self, function):
        # As Keras compiles its step: without AutoGraph (the steps branch
        # with `ops.cond`).
        if self.run_eagerly:
            return function
        return tf.function(
            tf.autograph.experimental.do_not_convert(function),
            jit_compile=self.jit_compile,
            reduce_retracing=True,
        )

    def _host_loop(self, step):
        def function(iterator):
            # Keras's loop over `steps_per_execution`, in Python.
            outputs = None
            for _, data in zip(range(self.steps_per_execution), iterator):
                outputs = step(_without_optionals(data))
            if outputs is None:
                raise StopIteration
            return outputs

        return function

    def _make_buffered_train_function(self, force):
        if self.train_function is not None and not force:
            return self.train_function
        observe = self._compiled(self._observe)
        train = self._compiled(self._buffer_train)
        select_rest = self._compiled(self._select_rest)
        buffered = self._buffered_steps_for(
            lambda state, data, rows, fill: _with_state_none(observe(data, rows, fill)),
            lambda state, rows, count, divisor: (None, train(rows, count, divisor)),
            lambda state, data, rows, start: select_rest(data, rows, start),
        )

        def step(data):
            self._build_before_branches(keras.utils.unpack_x_y_sample_weight(data)[0])
            self._build_optimizer()
            return buffered(None, data)[0]

        self.train_function = self._host_loop(step)
        return self.train_function

    def _buffer_train(self, rows, count, divisor):
        """The buffer's training pass and update; returns the updates."""
        x, y, sample_weight = training_rows(self.sample_buffer, rows, count, divisor)
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            loss = self._buffer_loss(x, y, self(x, training=True), sample_weight)
        grads = [
            tf.zeros_like(v.value) if g is None else g
            for v, g in zip(variables, tape.gradient(loss, variables))
        ]
        self.optimizer.apply(grads, variables)
        return self._count_update()

    def _with_state(self, function):
        function(None)

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
            x, self.gradient_accumulator.last_counts(), select, run_pass, branch
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
                totals = branch(*operands)
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
        return [total.value for total in accumulator.gradients]

    def _distribution_scope(self):
        return self.distribute_strategy.scope()

    def _apply_gradients(self, compute_gradients):
        # In replica context: each replica's own sums, summed by the optimizer.
        self.distribute_strategy.run(
            lambda: self.optimizer.apply(compute_gradients(), self.trainable_variables)
        )


def _over_replicas(strategy, counts):
    """A selection's counts `[branch, needed, samples]` over the replicas of
    `strategy`: the branch of the largest sub-batch a replica needs (so that
    every replica runs the same compiled step), and the sums of the others."""
    per_replica = tf.stack(strategy.experimental_local_results(counts))
    return tf.concat(
        [tf.reduce_min(per_replica[:, :1], 0), tf.reduce_sum(per_replica[:, 1:], 0)], 0
    )


def _with_state_none(observed):
    logs, rows, needs, shares = observed
    return logs, None, rows, needs, shares


def _without_optionals(data):
    """`data` with Keras's empty `tf.experimental.Optional`s (its stand-in for
    None inputs in a `tf.data` pipeline) as None, as Keras's step gets it."""
    return tree.map_structure(
        lambda t: None if isinstance(t, tf.experimental.Optional) else t, data
    )
