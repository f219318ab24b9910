"""AS-Speed's training step, one module per Keras trainer, chosen once at import.

Each module's `AdaptiveTrainer` is a base of `AdaptiveModel`. It provides
`train_step` and `make_train_function` (where the pass is chosen on the
host, and for `skip_masked="buffer"`), `_distribution_scope()`,
`_apply_gradients(compute_gradients)` and `_with_state(function)` (runs a
`sample_buffer.BufferedSteps` call on the model's variables). It calls
`AdaptiveModel`'s `_train_pass`, `_sub_batch`, `_record_backward` and
`_accumulate_or_update` (JAX within a `keras.StatelessScope`); for the
buffer, `_buffered_steps_for`, then `_buffer_write`, `_rest_of`,
`_write_rest` and `_summed_loss` (JAX) or `_observe`, `_select_rest`,
`_buffer_loss` and `_count_update` (stateful).
"""

import keras

_BACKEND = keras.backend.backend()
if _BACKEND == "tensorflow":
    from keras_as_softmax.trainers.tensorflow import AdaptiveTrainer
elif _BACKEND == "jax":
    from keras_as_softmax.trainers.jax import AdaptiveTrainer
else:  # `keras_as_softmax.backend` has refused other backends.
    from keras_as_softmax.trainers.torch import AdaptiveTrainer

__all__ = ["AdaptiveTrainer"]
