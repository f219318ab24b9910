"""PyTorch-specific code."""

import contextlib

import keras
import torch
from keras import tree

from keras_as_softmax._keras_private import loss_tracker


def known_values(x):
    """`x` as a NumPy array if its values are known now, else None.

    Under `torch.compile` reading values would break the graph, so they count
    as unknown.
    """
    if torch.compiler.is_compiling():
        return None
    return x.detach().cpu().numpy()


def sum_across_replicas(x):
    """`x` summed over replicas: Keras's torch trainer runs on one device."""
    return x



class _SparseASSoftmaxLoss(torch.autograd.Function):
    """The sparse AS-Softmax loss as one autograd node, computed in place.

    Eager PyTorch runs one kernel, and allocates one buffer, per operation;
    Keras's own sparse cross-entropy is PyTorch's fused `cross_entropy`.
    Working in place in the buffer of `log_softmax` keeps this to about the
    same number of passes over the logits; the values and the mask are those
    of `keras_as_softmax.as_softmax._keep_mask`.
    """

    @staticmethod
    def forward(ctx, target_index, logits, delta):
        probs = torch.log_softmax(logits, dim=-1)
        target_log_prob = probs.gather(-1, target_index)
        probs.exp_()
        target_prob = probs.gather(-1, target_index)
        dropped = probs < target_prob - delta
        dropped &= logits < logits.gather(-1, target_index)
        probs.masked_fill_(dropped, 0.0)
        kept_sum = probs.sum(-1, keepdim=True)
        # Only the target kept: its sum is exactly `p_t`, and the loss 0.
        masked = kept_sum == target_prob
        ctx.save_for_backward(target_index, probs, kept_sum, masked)
        losses = torch.where(masked, 0.0, kept_sum.log() - target_log_prob)
        masked_positions = masked.squeeze(-1)
        ctx.mark_non_differentiable(masked_positions)
        return losses.squeeze(-1), masked_positions

    @staticmethod
    def backward(ctx, upstream, _):
        target_index, kept_probs, kept_sum, masked = ctx.saved_tensors
        upstream = torch.where(masked, 0.0, upstream.unsqueeze(-1))
        grad = kept_probs * (upstream / kept_sum)
        return None, grad.scatter_add_(-1, target_index, -upstream), None


def fused_sparse_as_softmax_loss(target_index, logits, delta):
    """Per-position sparse AS-Softmax `(losses, masked)` of `logits` (classes
    last) for `target_index` (their shape, last axis 1) and a float or
    tensor `delta`."""
    return _SparseASSoftmaxLoss.apply(target_index, logits, delta)


@torch.compiler.disable
def branch_value(x):
    """The value of scalar `x`, to branch on in Python: PyTorch's steps
    always branch in Python (under `torch.compile` a quiet graph break)."""
    return x.item() if isinstance(x, torch.Tensor) else x


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
            x, self.gradient_accumulator.selection_due(), select, run_pass
        )
        with torch.no_grad():
            self._accumulate_or_update(grads)
        return {**logs, **self.gradient_accumulator.logs(self.skip_masked)}

    def _distribution_scope(self):
        return contextlib.nullcontext()

    def _apply_gradients(self, compute_gradients):
        with torch.no_grad():
            self.optimizer.apply(compute_gradients(), self.trainable_variables)
