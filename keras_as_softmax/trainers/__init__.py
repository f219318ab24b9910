"""AS-Speed's training step, one module per Keras trainer, chosen once at import.

Each module's `AdaptiveTrainer` is a base of `AdaptiveModel`: it provides
`train_step` (and, where the pass is chosen on the host, `make_train_function`),
`_distribution_scope()` and `_apply_gradients(compute_gradients)`; it calls
`AdaptiveModel`'s `_train_pass`, `_sub_batch`, `_record_backward` and, on the
stateful trainers, `_accumulate_or_update`.
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
