"""AS-Speed's training step for Keras's PyTorch trainer."""

import contextlib

import keras
import torch
from keras import tree

from keras_as_softmax._keras_private import loss_tracker
from keras_as_softmax.sample_buffer import training_rows


class AdaptiveTrainer:
    """AS-Speed's training step for the PyTorch trainer.

    As Keras's torch `train_step`, with autograd; it runs eagerly, so the
    choice between an optimizer update and accumulation is a Python `if`.
    """

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables

        def run_pass(training_pass):
            y_pred = training_pass.predictions(lambda x: self(x, training=True), x)
            self.zero_grad()
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            loss_tracker(self).update_state(
                loss,
                sample_weight=next(i for i in tree.flatten(x) if i is not None).shape[0],
            )
            if self.optimizer is not None:
                loss = self.optimizer.scale_loss(loss)
            if loss.requires_grad:  # Not when no row goes backward and nothing regularises.
                loss.backward()
            grads = [
                torch.zeros_like(v.value) if v.value.grad is None else v.value.grad
                for v in variables
            ]
            self._record_backward(training_pass)
            return grads, self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

        def select():
            with torch.no_grad():
                return self._sub_batch(y, self(x, training=False), sample_weight)

        grads, logs = self._train_pass(
            x, self.gradient_accumulator.last_counts(), select, run_pass
        )
        with torch.no_grad():
            self._accumulate_or_update(grads)
        return {**logs, **self.gradient_accumulator.logs(self.skip_masked)}

    def make_train_function(self, force=False):
        if self.skip_masked != "buffer":
            return super().make_train_function(force=force)
        if self.train_function is not None and not force:
            return self.train_function

        def observe(state, data, rows, fill):
            with torch.no_grad():
                logs, rows, needs, shares = self._observe(data, rows, fill)
            return logs, None, rows, needs, shares

        def select_rest(state, data, rows, start):
            with torch.no_grad():
                return self._select_rest(data, rows, start)

        buffered = self._buffered_steps_for(
            observe,
            lambda state, rows, count, divisor: (None, self._buffer_train(rows, count, divisor)),
            select_rest,
        )
        # Eager: the host loop and its passes run as Python.
        self.train_function = lambda data: buffered(None, data[0])[0]
        return self.train_function

    def _buffer_train(self, rows, count, divisor):
        """The buffer's training pass and update; returns the updates."""
        x, y, sample_weight = training_rows(self.sample_buffer, rows, count, divisor)
        variables = self.trainable_variables
        y_pred = self(x, training=True)
        self.zero_grad()
        loss = self._buffer_loss(x, y, y_pred, sample_weight)
        if loss.requires_grad:
            loss.backward()
        grads = [
            torch.zeros_like(v.value) if v.value.grad is None else v.value.grad
            for v in variables
        ]
        with torch.no_grad():
            self.optimizer.apply(grads, variables)
            return self._count_update()

    def _with_state(self, function):
        function(None)

    def _distribution_scope(self):
        return contextlib.nullcontext()

    def _apply_gradients(self, compute_gradients):
        with torch.no_grad():
            self.optimizer.apply(compute_gradients(), self.trainable_variables)
