"""Backend-specific code: one module per Keras backend, chosen once at import."""

import keras

_BACKEND = keras.backend.backend()
if _BACKEND == "tensorflow":
    from keras_as_softmax.backend.tensorflow import AdaptiveTrainer
    from keras_as_softmax.backend.tensorflow import branch_value
    from keras_as_softmax.backend.tensorflow import fused_sparse_as_softmax_loss
    from keras_as_softmax.backend.tensorflow import known_values
    from keras_as_softmax.backend.tensorflow import sum_across_replicas
elif _BACKEND == "jax":
    from keras_as_softmax.backend.jax import AdaptiveTrainer
    from keras_as_softmax.backend.jax import branch_value
    from keras_as_softmax.backend.jax import fused_sparse_as_softmax_loss
    from keras_as_softmax.backend.jax import known_values
    from keras_as_softmax.backend.jax import sum_across_replicas
elif _BACKEND == "torch":
    from keras_as_softmax.backend.torch import AdaptiveTrainer
    from keras_as_softmax.backend.torch import branch_value
    from keras_as_softmax.backend.torch import fused_sparse_as_softmax_loss
    from keras_as_softmax.backend.torch import known_values
    from keras_as_softmax.backend.torch import sum_across_replicas
else:
    raise ImportError(
        f"keras-as-softmax supports the tensorflow, jax and torch backends; "
        f"KERAS_BACKEND is {_BACKEND!r}."
    )

__all__ = [
    "AdaptiveTrainer",
    "branch_value",
    "fused_sparse_as_softmax_loss",
    "known_values",
    "sum_across_replicas",
]
