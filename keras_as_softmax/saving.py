"""Loading a `.keras` file with its loss and optimizer state, for any model.

`keras.saving.load_model` replays the saved `compile()` only for models that
do not override `compile`. keras-hub tasks do override it, so a task loaded
that way gets its default loss and a fresh optimizer (with a warning).
`AdaptiveModel` replays it itself; `load_model` here does it for any model.
"""

import warnings

import keras

from keras_as_softmax._keras_private import saved_compile_config


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """`keras.saving.load_model` that also restores a keras-hub task's
    compiled loss, metrics and optimizer state.

    Args:
        filepath, custom_objects, compile, safe_mode: As in
            `keras.saving.load_model`, for a `.keras` file.

    Returns:
        The model, compiled as it was saved when `compile` is True.

    Example:

    >>> import os, tempfile
    >>> from keras_as_softmax import SparseASSoftmaxCrossentropy, load_model
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> model.compile(optimizer="adam", loss=SparseASSoftmaxCrossentropy(0.2))
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.standard_normal((16, 4)), rng.integers(0, 3, 16)
    >>> _ = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    >>> directory = tempfile.TemporaryDirectory()
    >>> path = os.path.join(directory.name, "model.keras")
    >>> model.save(path)
    >>> loaded = load_model(path)
    >>> type(loaded.loss).__name__, loaded.loss.delta
    ('SparseASSoftmaxCrossentropy', 0.2)
    >>> int(loaded.optimizer.iterations.numpy())  # Adam's state came back.
    2
    >>> directory.cleanup()
    """
    filepath = str(filepath)
    if not filepath.endswith(".keras"):
        raise ValueError(
            f"`load_model` reads `.keras` files; received filepath={filepath!r}."
        )
    with warnings.catch_warnings():
        # A task compiles itself when built, so Keras tries to give the saved
        # optimizer state to that default optimizer and warns that it cannot;
        # the state is loaded below, into the optimizer it belongs to.
        warnings.filterwarnings(
            "ignore", message="Skipping variable loading for optimizer"
        )
        model = keras.saving.load_model(
            filepath, custom_objects=custom_objects, compile=False, safe_mode=safe_mode
        )
    compile_config = saved_compile_config(filepath)
    if not (compile and compile_config):
        return model
    with keras.saving.custom_object_scope(custom_objects or {}):
        compile_from_saved_config(model, compile_config, safe_mode=safe_mode)
    # Read the file's variables again, now that the optimizer has its own.
    model.load_weights(filepath)
    return model


def compile_from_saved_config(model, compile_config, safe_mode=True):
    """Compiles `model` as its saved `compile_config` says, and builds the
    optimizer of a built model so that saved optimizer state can load.

    Args:
        model: A `keras.Model`.
        compile_config: What `model.get_compile_config()` returns (and a
            `.keras` file holds).
        safe_mode: As in `keras.saving.deserialize_keras_object`.

    Example:

    >>> from keras_as_softmax import SparseASSoftmaxCrossentropy
    >>> source = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> source.compile(optimizer="adam", loss=SparseASSoftmaxCrossentropy())
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> compile_from_saved_config(model, source.get_compile_config())
    >>> type(model.loss).__name__, model.optimizer.built
    ('SparseASSoftmaxCrossentropy', True)
    """
    model.compile(
        **keras.saving.deserialize_keras_object(compile_config, safe_mode=safe_mode)
    )
    if model.built:
        model.optimizer.build(model.trainable_variables)
