"""Loading a `.keras` file with its loss and optimizer state, for any model.

`keras.saving.load_model` replays the saved `compile()` only for models that
do not override `compile`. keras-hub tasks do override it, so a task loaded
that way gets its default loss and a fresh optimizer (with a warning).
`AdaptiveModel` replays it itself; `load_model` here does it for any model.
"""

import json
import warnings
import zipfile

import keras


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """`keras.saving.load_model` that also restores a keras-hub task's
    compiled loss, metrics and optimizer state.

    Args:
        filepath, custom_objects, compile, safe_mode: As in
            `keras.saving.load_model`, for a `.keras` file.

    Returns:
        The model, compiled as it was saved when `compile` is True.

    Example:

    >>> task.compile(optimizer="adam", loss=SparseASSoftmaxCrossentropy())
    >>> task.fit(texts, labels)
    >>> task.save("task.keras")
    >>> task = keras_as_softmax.load_model("task.keras")  # Same loss, same Adam.
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
    with zipfile.ZipFile(filepath) as archive:
        compile_config = json.loads(archive.read("config.json")).get("compile_config")
    if not (compile and compile_config):
        return model
    with keras.saving.custom_object_scope(custom_objects or {}):
        compile_from_saved_config(model, compile_config, safe_mode=safe_mode)
    # Read the file's variables again, now that the optimizer has its own.
    model.load_weights(filepath)
    return model


def compile_from_saved_config(model, compile_config, safe_mode=True):
    """Compiles `model` as its saved `compile_config` says, and builds the
    optimizer of a built model so that saved optimizer state can load."""
    model.compile(
        **keras.saving.deserialize_keras_object(compile_config, safe_mode=safe_mode)
    )
    if model.built:
        model.optimizer.build(model.trainable_variables)
