"""AS-Speed for a model that already exists: `adaptive(model)`.

`adaptive` turns a built model, such as a keras-hub task with its
preprocessor or a functional model, into an `AdaptiveModel` in place: its
class becomes `AdaptiveModel` placed before the model's own class, so every
method the model had (its `fit` on raw strings, `predict`, `generate`) stays,
and AS-Speed's train step comes first. The model saves to `.keras` as its own
class plus the AS-Speed settings, and loads back as the same conversion.
"""

import keras

from keras_as_softmax._keras_private import drop_step_functions
from keras_as_softmax._keras_private import serialize_with_public_class
from keras_as_softmax._keras_private import unlocked
from keras_as_softmax.as_speed import AdaptiveModel
from keras_as_softmax.pruning import PRUNE_UNTIL

_REGISTERED_NAME = "AdaptiveModelOf"
_classes = {}


def adaptive(
    model,
    max_accumulation_steps=2,
    accumulation_lambda=1.0,
    skip_masked=False,
    prune_masked=0.0,
    prune_until=PRUNE_UNTIL,
    prune_seed=None,
):
    """Gives an existing model AS-Speed, without subclassing.

    The model is converted in place (its weights, preprocessor, compiled
    loss and optimizer stay) and returned. Compile it with one AS-Softmax
    loss before `fit`, as any `AdaptiveModel`.

    Args:
        model: A `keras.Model`: a keras-hub task, a functional or
            `Sequential` model, or a registered subclassed model.
        max_accumulation_steps, accumulation_lambda, skip_masked,
        prune_masked, prune_until, prune_seed: As in `AdaptiveModel`.

    Returns:
        `model`, now also an `AdaptiveModel`.

    Example:

    >>> from keras_as_softmax import AdaptiveModel, SparseASSoftmaxCrossentropy
    >>> from keras_as_softmax import adaptive
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> model = adaptive(model, max_accumulation_steps=2, accumulation_lambda=2.0)
    >>> type(model).__name__, isinstance(model, AdaptiveModel)
    ('SequentialWithASSpeed', True)
    >>> model.compile(optimizer="sgd", loss=SparseASSoftmaxCrossentropy())
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.standard_normal((32, 4)), rng.integers(0, 3, 32)
    >>> logs = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    >>> int(logs["optimizer_updates"][-1])  # 4 batches, windows of 2.
    2
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`adaptive` takes a `keras.Model`; received {type(model).__name__}."
        )
    if isinstance(model, AdaptiveModel):
        raise ValueError(
            f"`{model.name}` already trains with AS-Speed; change its "
            "settings with `model.gradient_accumulator.configure(...)` and "
            "`model.configure_skipping(...)`."
        )
    model_class = type(model)
    model.__class__ = _adaptive_class(model_class)
    try:
        with unlocked(model):
            model._create_as_speed_state(
                max_accumulation_steps, accumulation_lambda, skip_masked
            )
        model.configure_pruning(prune_masked, prune_until, prune_seed)
    except Exception:
        model.__class__ = model_class
        raise
    # Steps compiled before the conversion would train without AS-Speed.
    drop_step_functions(model)
    return model


@keras.saving.register_keras_serializable(
    package="keras_as_softmax", name=_REGISTERED_NAME
)
class AdaptiveModelOf(AdaptiveModel):
    """The base of the classes `adaptive` makes: `AdaptiveModel` before the
    model's own class (`model_class`).

    Its config holds the model's own serialized config under `"model"` and
    the AS-Speed settings; `from_config` rebuilds the model from it and
    calls `adaptive` again.

    Example:

    >>> from keras_as_softmax import adaptive
    >>> model = adaptive(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]))
    >>> isinstance(model, AdaptiveModelOf), model.model_class.__name__
    (True, 'Sequential')
    >>> copy = AdaptiveModelOf.from_config(model.get_config())
    >>> type(copy).__name__, copy.max_accumulation_steps
    ('SequentialWithASSpeed', 2)
    """

    model_class = None

    def get_config(self):
        own_config = super(AdaptiveModel, self).get_config()
        return {"model": model_config(self.model_class, own_config),
                **self.as_speed_config()}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        return adaptive(model, **config)


def _adaptive_class(model_class):
    """`AdaptiveModelOf` for `model_class`, made once per class."""
    return conversion_class(model_class, AdaptiveModelOf, "WithASSpeed", _REGISTERED_NAME)


def conversion_class(model_class, base, suffix, registered_name):
    """The class of a model of `model_class` converted in place: `base`
    before `model_class`, named with `suffix`, made once per pair. Every such
    class saves under `base`'s registered name, which keeps pointing at
    `base` to load them (its `from_config` converts again)."""
    key = (model_class, base)
    if key not in _classes:
        converted = type(
            f"{model_class.__name__}{suffix}",
            (base, model_class),
            {"model_class": model_class, "__module__": base.__module__},
        )
        register = keras.saving.register_keras_serializable(
            package="keras_as_softmax", name=registered_name
        )
        register(converted)
        register(base)
        _classes[key] = converted
    return _classes[key]


def model_config(model_class, own_config):
    """A converted model's own serialized config, as its `model_class`."""
    return serialize_with_public_class(model_class, own_config) or {
        "module": model_class.__module__,
        "class_name": model_class.__name__,
        "config": own_config,
        "registered_name": None,
    }
