"""Training a model through the fused loss: `fuse_output_projection(model)`.

A language model's training step computes `logits = projection(hidden)`,
`(tokens, V)`, only for the loss to reduce them. `fuse_output_projection`
converts a functional model whose output is such a projection (a keras-hub
causal LM's tied `ReversibleEmbedding`, or a `Dense` layer) in place, as
`adaptive` does: in training (`call(..., training=True)`, which is what
`fit` runs) the model returns its last hidden states, and its compiled
`LinearSparseASSoftmaxCrossentropy` projects them chunk by chunk with the
output layer's own variables. Outside training it returns logits as before,
and the same loss takes them (`evaluate`); `generate` does not use `call`
and is unchanged. The model saves to `.keras` as its own class plus the
conversion, and loads back converted.
"""

import keras

from keras_as_softmax._keras_private import compile_metrics
from keras_as_softmax._keras_private import drop_step_functions
from keras_as_softmax._keras_private import is_functional
from keras_as_softmax._keras_private import output_call
from keras_as_softmax.existing_models import conversion_class
from keras_as_softmax.existing_models import model_config
from keras_as_softmax.linear_as_softmax import LinearSparseASSoftmaxCrossentropy

_REGISTERED_NAME = "FusedProjectionOf"


def fuse_output_projection(model):
    """Makes `model` train through the fused loss, without its logits.

    The model is converted in place and returned; compile it with a
    `LinearSparseASSoftmaxCrossentropy` (its projection is bound to the
    model's output layer when `compile` is called; a keras-hub task must be
    compiled again anyway to use an AS loss). Metrics compiled on logits are
    not updated in training, where the logits do not exist (the training
    logs show them at their initial value); validation computes them. Works
    before or after `adaptive` (AS-Speed; with `skip_masked` its selection
    pass, an inference pass, computes the logits).

    Args:
        model: A functional `keras.Model` (e.g. a keras-hub `CausalLM`) with
            one output, computed by a `ReversibleEmbedding` called with
            `reverse=True` (tied or not, no `logit_soft_cap`) or by a `Dense`
            layer without activation.

    Returns:
        `model`, now training through the fused loss.

    Example:

    >>> from keras_as_softmax import LinearSparseASSoftmaxCrossentropy
    >>> inputs = keras.Input((3,), dtype="int32")
    >>> embedding = keras.layers.ReversibleEmbedding(10, 4)
    >>> hidden = keras.layers.Dense(4)(embedding(inputs))
    >>> model = keras.Model(inputs, embedding(hidden, reverse=True))
    >>> model = fuse_output_projection(model)
    >>> model.compile(optimizer="sgd", loss=LinearSparseASSoftmaxCrossentropy(delta=0.1))
    >>> tuple(model.loss.kernel.shape), model.loss.transposed_kernel
    ((10, 4), True)
    >>> x = np.random.default_rng(0).integers(0, 10, (8, 3))
    >>> history = model.fit(x, x, epochs=1, verbose=0)
    >>> tuple(model(x[:2]).shape), tuple(model(x[:2], training=True).shape)
    ((2, 3, 10), (2, 3, 4))
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            "`fuse_output_projection` takes a `keras.Model`; received "
            f"{type(model).__name__}."
        )
    if isinstance(model, FusedProjectionOf):
        raise ValueError(f"`{model.name}` already trains through the fused loss.")
    projection = OutputProjection.of(model)
    model_class = type(model)
    model.__class__ = conversion_class(
        model_class, FusedProjectionOf, "WithFusedLoss", _REGISTERED_NAME
    )
    model._output_projection = projection
    drop_step_functions(model)
    model._bind_fused_loss(getattr(model, "loss", None))
    return model


class OutputProjection:
    """A model's output projection: its layer, its variables in the fused
    loss's layout, and a model of the same layers up to its input.

    Not a layer: the model tracks the layers already (as its own).

    Attributes:
        layer: The output layer.
        hidden_model: A functional model from the model's inputs to the
            hidden states that the output layer projects.
        kernel, bias, transposed_kernel: As the fused loss takes them.
        dtype: The dtype of the projection's computation (the layer's
            `reverse_dtype`), or None for the hidden states' own.
        num_classes: The width of the logits.
    """

    def __init__(self, layer, hidden_model, kernel, bias, transposed_kernel, dtype):
        self.layer = layer
        self.hidden_model = hidden_model
        self.kernel = kernel
        self.bias = bias
        self.transposed_kernel = transposed_kernel
        self.dtype = dtype
        self.num_classes = kernel.shape[0 if transposed_kernel else 1]
        if self.num_classes == kernel.shape[1 if transposed_kernel else 0]:
            raise ValueError(
                f"The output layer `{layer.name}` projects {self.num_classes} "
                "hidden units onto as many classes: the model's outputs in "
                "training (hidden states) and outside it (logits) would be "
                "told apart by their width only, so it cannot be fused."
            )

    @classmethod
    def of(cls, model):
        """The output projection of `model`; raises naming what is missing."""
        if not is_functional(model) or len(model.outputs) != 1:
            raise ValueError(
                f"`fuse_output_projection` needs a functional model with one "
                f"output, projected by its last layer; `{model.name}` "
                f"({type(model).__name__}) is not one. Build the model "
                "functionally, or call `linear_sparse_as_softmax_crossentropy` "
                "on its hidden states and output kernel yourself."
            )
        layer, args, kwargs = output_call(model)
        hidden = args[0] if args else kwargs.get("inputs")
        if isinstance(layer, keras.layers.ReversibleEmbedding) and (
            kwargs.get("reverse") or (len(args) > 1 and args[1])
        ):
            if layer.logit_soft_cap is not None:
                raise ValueError(
                    f"The output layer `{layer.name}` soft-caps its logits "
                    f"(`logit_soft_cap={layer.logit_soft_cap}`), which the "
                    "fused loss does not compute; it fuses plain projections."
                )
            if layer.tie_weights:
                kernel, transposed = layer.embeddings, True
            else:
                kernel, transposed = layer.reverse_embeddings, False
            return cls(
                layer, keras.Model(model.input, hidden), kernel, None, transposed,
                layer.reverse_dtype,
            )
        if isinstance(layer, keras.layers.Dense):
            if layer.activation not in (None, keras.activations.linear):
                raise ValueError(
                    f"The output layer `{layer.name}` has activation "
                    f"`{layer.activation.__name__}`; the fused loss takes "
                    "logits, so its projection must be linear "
                    "(`activation=None`)."
                )
            return cls(
                layer, keras.Model(model.input, hidden), layer.kernel, layer.bias,
                False, None,
            )
        raise ValueError(
            f"The output of `{model.name}` comes from `{layer.name}` "
            f"({type(layer).__name__}); `fuse_output_projection` fuses a "
            "`ReversibleEmbedding` called with `reverse=True` or a `Dense` "
            "layer without activation."
        )

    def hidden_states(self, inputs, training):
        hidden = self.hidden_model(inputs, training=training)
        return hidden if self.dtype is None else keras.ops.cast(hidden, self.dtype)

    def bind(self, loss):
        """Points `loss` at this projection's variables."""
        loss.kernel, loss.bias = self.kernel, self.bias
        loss.transposed_kernel = self.transposed_kernel


@keras.saving.register_keras_serializable(
    package="keras_as_softmax", name=_REGISTERED_NAME
)
class FusedProjectionOf:
    """The base of the classes `fuse_output_projection` makes, placed before
    the model's own class (`model_class`).

    Its config holds the model's own serialized config under `"model"`;
    `from_config` rebuilds the model and converts it again.
    """

    model_class = None

    def call(self, inputs, training=None, **kwargs):
        if training:
            if not isinstance(getattr(self, "loss", None), LinearSparseASSoftmaxCrossentropy):
                raise ValueError(
                    f"`{self.name}` trains through the fused loss: compile it "
                    "with `loss=LinearSparseASSoftmaxCrossentropy(...)`; it "
                    f"is compiled with {type(self.loss).__name__}."
                )
            return self._output_projection.hidden_states(inputs, training)
        return super().call(inputs, training=training, **kwargs)

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        self._bind_fused_loss(self.loss)

    def _bind_fused_loss(self, loss):
        if isinstance(loss, LinearSparseASSoftmaxCrossentropy):
            self._output_projection.bind(loss)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if y_pred.shape[-1] == self._output_projection.num_classes:
            return super().compute_metrics(x, y, y_pred, sample_weight)
        # Training: no logits for the compiled metrics, which stay as they
        # are (built, so that the logs can read them).
        on_logits = compile_metrics(self)
        if on_logits is not None and not on_logits.built:
            on_logits.build(y, y_pred)
        return self.get_metrics_result()

    def get_config(self):
        return {"model": model_config(self.model_class, super().get_config())}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        model = keras.saving.deserialize_keras_object(
            config["model"], custom_objects=custom_objects
        )
        return fuse_output_projection(model)
