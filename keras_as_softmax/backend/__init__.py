"""Backend-specific code: one module per Keras backend, chosen once at import."""

import keras

_BACKEND = keras.backend.backend()
if _BACKEND == "tensorflow":
    from keras_as_softmax.backend.tensorflow import known_values
elif _BACKEND == "jax":
    from keras_as_softmax.backend.jax import known_values
elif _BACKEND == "torch":
    from keras_as_softmax.backend.torch import known_values
else:
    raise ImportError(
        f"keras-as-softmax supports the tensorflow, jax and torch backends; "
        f"KERAS_BACKEND is {_BACKEND!r}."
    )

__all__ = ["known_values"]
