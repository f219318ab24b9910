"""Backend-specific operations: one module per Keras backend, chosen once at
import. They import nothing of this package; the training steps that use
them are in `keras_as_softmax.trainers`."""

import keras

_BACKEND = keras.backend.backend()
if _BACKEND == "tensorflow":
    from keras_as_softmax.backend.tensorflow import add_chunk_gradients
    from keras_as_softmax.backend.tensorflow import branch_value
    from keras_as_softmax.backend.tensorflow import chunk_as_softmax
    from keras_as_softmax.backend.tensorflow import chunk_logits
    from keras_as_softmax.backend.tensorflow import compile_chunk_loop
    from keras_as_softmax.backend.tensorflow import eager_under_torch_compile
    from keras_as_softmax.backend.tensorflow import fused_sparse_as_softmax_loss
    from keras_as_softmax.backend.tensorflow import known_values
    from keras_as_softmax.backend.tensorflow import kernel_gradient_slice
    from keras_as_softmax.backend.tensorflow import scale_held_gradients
    from keras_as_softmax.backend.tensorflow import sequential_while_loop
    from keras_as_softmax.backend.tensorflow import sum_across_replicas
elif _BACKEND == "jax":
    from keras_as_softmax.backend.jax import add_chunk_gradients
    from keras_as_softmax.backend.jax import branch_value
    from keras_as_softmax.backend.jax import chunk_as_softmax
    from keras_as_softmax.backend.jax import chunk_logits
    from keras_as_softmax.backend.jax import compile_chunk_loop
    from keras_as_softmax.backend.jax import eager_under_torch_compile
    from keras_as_softmax.backend.jax import fused_sparse_as_softmax_loss
    from keras_as_softmax.backend.jax import known_values
    from keras_as_softmax.backend.jax import kernel_gradient_slice
    from keras_as_softmax.backend.jax import scale_held_gradients
    from keras_as_softmax.backend.jax import sequential_while_loop
    from keras_as_softmax.backend.jax import sum_across_replicas
elif _BACKEND == "torch":
    from keras_as_softmax.backend.torch import add_chunk_gradients
    from keras_as_softmax.backend.torch import branch_value
    from keras_as_softmax.backend.torch import chunk_as_softmax
    from keras_as_softmax.backend.torch import chunk_logits
    from keras_as_softmax.backend.torch import compile_chunk_loop
    from keras_as_softmax.backend.torch import eager_under_torch_compile
    from keras_as_softmax.backend.torch import fused_sparse_as_softmax_loss
    from keras_as_softmax.backend.torch import known_values
    from keras_as_softmax.backend.torch import kernel_gradient_slice
    from keras_as_softmax.backend.torch import scale_held_gradients
    from keras_as_softmax.backend.torch import sequential_while_loop
    from keras_as_softmax.backend.torch import sum_across_replicas
else:
    raise ImportError(
        f"keras-as-softmax supports the tensorflow, jax and torch backends; "
        f"KERAS_BACKEND is {_BACKEND!r}."
    )

__all__ = [
    "add_chunk_gradients",
    "branch_value",
    "chunk_as_softmax",
    "chunk_logits",
    "compile_chunk_loop",
    "eager_under_torch_compile",
    "fused_sparse_as_softmax_loss",
    "kernel_gradient_slice",
    "known_values",
    "scale_held_gradients",
    "sequential_while_loop",
    "sum_across_replicas",
]
