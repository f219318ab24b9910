"""keras-hub task models with AS-Softmax and AS-Speed, as users meet them.

Tiny randomly initialised backbones (no preset can be downloaded here): a
`BertTextClassifier` fed raw strings, a tagger on a `BertBackbone` padded
three ways, a `GPT2CausalLM` whose preprocessor gives padding as
`sample_weight`, and a multi-label head. Each loss is checked against
Keras's cross-entropy at `delta=1` and against the float64 NumPy reference
(`tests/reference.py`) at `delta < 1`.
"""

import warnings

import keras
import keras_hub
import numpy as np
import pytest

import keras_as_softmax
from keras_as_softmax import AdaptiveModel
from keras_as_softmax import LinearSparseASSoftmaxCrossentropy
from keras_as_softmax import MultiLabelASSoftmaxCrossentropy
from keras_as_softmax import SparseASSoftmaxCrossentropy
from keras_as_softmax import adaptive
from keras_as_softmax import fuse_output_projection
from tests import reference
from tests.helpers import reset_compiled_functions

pytestmark = pytest.mark.slow

NUM_CLASSES = 3
LENGTH = 8
WORDS = [f"w{i}" for i in range(20)]
BERT_VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
RNG = np.random.default_rng(0)
TEXTS = np.array([" ".join(RNG.choice(WORDS, RNG.integers(2, 6))) for _ in range(16)])
LABELS = RNG.integers(0, NUM_CLASSES, len(TEXTS)).astype("int32")


def bert_backbone():
    keras.utils.set_random_seed(0)
    return keras_hub.models.BertBackbone(
        vocabulary_size=len(BERT_VOCABULARY),
        num_layers=1,
        num_heads=1,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=LENGTH,
    )


def classifier(cls=keras_hub.models.BertTextClassifier, **kwargs):
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=BERT_VOCABULARY)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=LENGTH
    )
    return cls(
        bert_backbone(),
        num_classes=NUM_CLASSES,
        preprocessor=preprocessor,
        activation=None,
        **kwargs,
    )


def compile_with(model, loss, run_eagerly=True, **kwargs):
    # Eager by default: compiling even a tiny BERT's steps takes longer than
    # running them. The compiled steps run where they are the point.
    model.compile(
        optimizer=keras.optimizers.Adam(0.01), loss=loss, run_eagerly=run_eagerly, **kwargs
    )
    return model


def evaluate_loss(model, x, y=None, sample_weight=None):
    # One batch: `evaluate` then reports that batch's loss exactly.
    logs = model.evaluate(
        x, y, sample_weight=sample_weight, batch_size=64, verbose=0, return_dict=True
    )
    return logs["loss"]


def fit(model, x, y=None, sample_weight=None, epochs=2):
    return model.fit(
        x, y, sample_weight=sample_weight, batch_size=4, epochs=epochs,
        shuffle=False, verbose=0,
    ).history


def load_quietly(load, path):
    """`load(path)`; fails on any warning about compiling or the optimizer."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load(path)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "compile" in m or "optimizer" in m], messages
    return model


def assert_same_training_state(loaded, model, inputs):
    assert type(loaded.loss) is type(model.loss)
    assert loaded.loss.get_config() == model.loss.get_config()
    assert type(loaded.optimizer) is type(model.optimizer)
    assert int(loaded.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy()) > 0
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    for actual, expected in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(actual.numpy(), expected.numpy())
    # Called on the preprocessed inputs: `predict` would trace the task's
    # preprocessing again for each model.
    if getattr(model, "preprocessor", None) is not None:  # Raw strings.
        features = model.preprocessor(list(inputs))
        inputs, _, _ = keras.utils.unpack_x_y_sample_weight(features)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(inputs)),
        keras.ops.convert_to_numpy(model(inputs)),
        atol=1e-6,
    )


# Text classifier: raw strings through the task's preprocessor.

def test_classifier_loss_is_keras_crossentropy_at_delta_one():
    task = classifier()
    logits = task.predict(TEXTS, verbose=0).astype(np.float64)
    compile_with(task, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    keras_loss = evaluate_loss(task, TEXTS, LABELS)
    compile_with(task, SparseASSoftmaxCrossentropy(delta=1.0))
    np.testing.assert_allclose(evaluate_loss(task, TEXTS, LABELS), keras_loss, rtol=1e-6)
    np.testing.assert_allclose(
        keras_loss, reference.softmax_crossentropy(LABELS, logits).mean(), rtol=1e-5
    )
    compile_with(task, SparseASSoftmaxCrossentropy(delta=0.2))
    expected, *_ = reference.sparse_as_softmax(LABELS, logits, 0.2)
    np.testing.assert_allclose(evaluate_loss(task, TEXTS, LABELS), expected.mean(), rtol=1e-5)


def test_classifier_load_model_keeps_loss_and_optimizer(tmp_path):
    task = compile_with(classifier(), SparseASSoftmaxCrossentropy(delta=0.3))
    history = fit(task, TEXTS, LABELS)
    assert history["loss"][-1] < history["loss"][0]
    task.save(tmp_path / "task.keras")
    loaded = load_quietly(keras_as_softmax.load_model, tmp_path / "task.keras")
    assert type(loaded) is keras_hub.models.BertTextClassifier
    assert_same_training_state(loaded, task, TEXTS)
    fit(loaded, TEXTS, LABELS, epochs=1)
    assert int(loaded.optimizer.iterations.numpy()) == 12


def test_adaptive_task_trains_on_raw_strings_and_round_trips(tmp_path):
    task = classifier()
    assert adaptive(task, max_accumulation_steps=3, accumulation_lambda=3.0) is task
    assert isinstance(task, AdaptiveModel)
    assert isinstance(task, keras_hub.models.BertTextClassifier)
    compile_with(task, SparseASSoftmaxCrossentropy(delta=0.3))
    history = fit(task, TEXTS, LABELS)
    # Windows of 3 at lambda 3: 8 batches, 3 updates (the last one at the end).
    assert int(task.optimizer.iterations.numpy()) == 3
    assert history["optimizer_updates"][-1] == 3
    assert history["accumulation_steps"][-1] == 3
    assert 0 <= history["masked_ratio"][-1] <= 1
    task.save(tmp_path / "task.keras")
    loaded = load_quietly(keras.saving.load_model, tmp_path / "task.keras")
    assert type(loaded) is type(task)
    assert (loaded.max_accumulation_steps, loaded.accumulation_lambda) == (3, 3.0)
    assert_same_training_state(loaded, task, TEXTS)
    state = loaded.gradient_accumulator
    assert (int(state.window.numpy()), int(state.updates.numpy())) == (3, 3)
    history = fit(loaded, TEXTS, LABELS, epochs=1)
    assert history["optimizer_updates"] == [int(loaded.optimizer.iterations.numpy())] == [5]


@keras.saving.register_keras_serializable(package="test_keras_hub")
class AdaptiveBertClassifier(AdaptiveModel, keras_hub.models.BertTextClassifier):
    pass


def test_adaptive_subclass_round_trips_through_keras_and_presets(tmp_path):
    task = classifier(AdaptiveBertClassifier, max_accumulation_steps=3)
    compile_with(task, SparseASSoftmaxCrossentropy(delta=0.3))
    fit(task, TEXTS, LABELS)
    task.save(tmp_path / "task.keras")
    loaded = load_quietly(keras.saving.load_model, tmp_path / "task.keras")
    assert type(loaded) is AdaptiveBertClassifier
    assert_same_training_state(loaded, task, TEXTS)
    task.save_to_preset(tmp_path / "preset")
    from_preset = AdaptiveBertClassifier.from_preset(str(tmp_path / "preset"))
    assert type(from_preset) is AdaptiveBertClassifier
    assert from_preset.max_accumulation_steps == 3
    np.testing.assert_allclose(
        from_preset.predict(TEXTS, verbose=0), task.predict(TEXTS, verbose=0), atol=1e-6
    )


def test_adaptive_model_after_a_model_in_the_bases_raises():
    for model_class in (keras_hub.models.BertTextClassifier, keras.Model):
        with pytest.raises(TypeError, match=r"Put `AdaptiveModel` first: `class Wrong\(AdaptiveModel, "):
            type("Wrong", (model_class, AdaptiveModel), {})


# Tagger: per-token targets, padding by `ignore_class`, weights or a Keras mask.

class KerasMaskFromPadding(keras.layers.Layer):
    """`[sequence, padding_mask]` -> the sequence, with a Keras mask."""

    def call(self, inputs):
        return inputs[0]

    def compute_mask(self, inputs, mask=None):
        return keras.ops.cast(inputs[1], "bool")


def tagger(keras_mask=False):
    backbone = bert_backbone()
    inputs = {
        name: keras.Input((LENGTH,), dtype="int32", name=name)
        for name in ("token_ids", "segment_ids", "padding_mask")
    }
    sequence = backbone(inputs)["sequence_output"]
    if keras_mask:
        sequence = KerasMaskFromPadding()([sequence, inputs["padding_mask"]])
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(sequence))


def tagging_data():
    lengths = RNG.integers(2, LENGTH + 1, len(TEXTS))
    padding = (np.arange(LENGTH) < lengths[:, None]).astype("int32")
    x = {
        "token_ids": np.where(padding, RNG.integers(5, 25, padding.shape), 0).astype("int32"),
        "segment_ids": np.zeros_like(padding),
        "padding_mask": padding,
    }
    tags = RNG.integers(0, NUM_CLASSES, padding.shape).astype("int32")
    return x, tags, padding


@pytest.mark.parametrize("padding_by", ["ignore_class", "sample_weight", "keras_mask"])
def test_tagger_padding(padding_by):
    x, tags, padding = tagging_data()
    model = tagger(keras_mask=padding_by == "keras_mask")
    if padding_by == "ignore_class":
        data = (x, np.where(padding, tags, -100))
        loss_kwargs = {"ignore_class": -100}
    elif padding_by == "sample_weight":
        data = (x, tags, padding.astype("float32"))
        loss_kwargs = {}
    else:
        data = (x, tags)
        loss_kwargs = {}
    logits = model.predict(x, verbose=0).astype(np.float64)
    for delta in (1.0, 0.2):
        per_token, *_ = reference.sparse_as_softmax(tags, logits, delta)
        if padding_by == "sample_weight":  # Keras divides by every position.
            expected = (per_token * padding).sum() / padding.size
        else:  # Padding is left out of the mean.
            expected = (per_token * padding).sum() / padding.sum()
        compile_with(model, SparseASSoftmaxCrossentropy(delta=delta, **loss_kwargs))
        np.testing.assert_allclose(evaluate_loss(model, *data), expected, rtol=1e-5)
    compile_with(
        model, keras.losses.SparseCategoricalCrossentropy(from_logits=True, **loss_kwargs)
    )
    keras_loss = evaluate_loss(model, *data)
    compile_with(model, SparseASSoftmaxCrossentropy(delta=1.0, **loss_kwargs))
    np.testing.assert_allclose(evaluate_loss(model, *data), keras_loss, rtol=1e-6)
    compile_with(model, SparseASSoftmaxCrossentropy(delta=0.2, **loss_kwargs))
    history = fit(model, *data, epochs=3)
    assert history["loss"][-1] < history["loss"][0]


def test_tagger_hugging_face_padding_ids():
    # -100 padding without `ignore_class`: a clear error where the targets
    # can be read, a NaN loss (and finite weights) in a compiled step.
    x, tags, padding = tagging_data()
    targets = np.where(padding, tags, -100)
    model = compile_with(tagger(), SparseASSoftmaxCrossentropy(), run_eagerly=True)
    with pytest.raises(ValueError, match=r"class id -100.*pass `ignore_class=-100`"):
        fit(model, x, targets, epochs=1)
    reset_compiled_functions()
    model = compile_with(
        tagger(), SparseASSoftmaxCrossentropy(), run_eagerly=False, jit_compile=True
    )
    assert np.isnan(fit(model, x, targets, epochs=1)["loss"][0])
    assert all(np.isfinite(w).all() for w in model.get_weights())


# Causal LM: its preprocessor gives the padding as `sample_weight`.

GPT2_MERGES = [
    "a i", "ai r", "p l", "pl a", "n e", "pla ne", "Ġ a", "Ġa t", "p o", "r t",
    "po rt",
]
GPT2_VOCABULARY = {
    token: i
    for i, token in enumerate(
        ["<|endoftext|>", *"Ġairplnteo", *("".join(m.split()) for m in GPT2_MERGES)]
    )
}
LM_TEXTS = np.array(["airplane at airport", " airplane airport", "airport", " at"] * 2)


def causal_lm(dropout=0.1):
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(GPT2_VOCABULARY),
        dropout=dropout,
        num_layers=1,
        num_heads=1,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=LENGTH,
    )
    tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary=GPT2_VOCABULARY, merges=GPT2_MERGES
    )
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer, sequence_length=LENGTH
    )
    return keras_hub.models.GPT2CausalLM(backbone, preprocessor=preprocessor)


def test_causal_lm_with_sample_weight(tmp_path):
    lm = causal_lm()
    x, y, weights = (
        keras.tree.map_structure(keras.ops.convert_to_numpy, part)
        for part in lm.preprocessor(list(LM_TEXTS))
    )
    assert 0 < weights.mean() < 1  # Some padding.
    logits = keras.ops.convert_to_numpy(lm(x)).astype(np.float64)
    compile_with(lm, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    keras_loss = evaluate_loss(lm, LM_TEXTS)
    compile_with(lm, SparseASSoftmaxCrossentropy(delta=1.0))
    np.testing.assert_allclose(evaluate_loss(lm, LM_TEXTS), keras_loss, rtol=1e-6)
    per_token, *_ = reference.sparse_as_softmax(y, logits, 0.2)
    compile_with(lm, SparseASSoftmaxCrossentropy(delta=0.2))
    np.testing.assert_allclose(
        evaluate_loss(lm, LM_TEXTS), (per_token * weights).sum() / weights.size, rtol=1e-5
    )
    history = fit(lm, LM_TEXTS, epochs=3)
    assert history["loss"][-1] < history["loss"][0]
    lm.save(tmp_path / "lm.keras")
    loaded = load_quietly(keras_as_softmax.load_model, tmp_path / "lm.keras")
    assert_same_training_state(loaded, lm, LM_TEXTS[:2])


def test_adaptive_causal_lm_generates_and_round_trips(tmp_path):
    lm = adaptive(causal_lm(), max_accumulation_steps=2)
    compile_with(lm, SparseASSoftmaxCrossentropy(delta=0.2))
    history = fit(lm, LM_TEXTS)
    assert history["optimizer_updates"][-1] == int(lm.optimizer.iterations.numpy())
    generated = lm.generate("airplane", max_length=LENGTH)
    assert isinstance(generated, str) and generated.startswith("airplane")
    lm.save(tmp_path / "lm.keras")
    loaded = load_quietly(keras.saving.load_model, tmp_path / "lm.keras")
    assert type(loaded) is type(lm) and loaded.max_accumulation_steps == 2
    assert_same_training_state(loaded, lm, LM_TEXTS[:2])
    assert loaded.generate("airplane", max_length=LENGTH) == generated


def test_fused_causal_lm_trains_as_unfused_generates_and_round_trips(tmp_path):
    """Through the fused loss (tied embedding, padding as sample weights) the
    causal LM trains to the same weights as with the unfused loss, generates
    the same text as before conversion, and saves and loads converted; with
    AS-Speed and DeltaWarmup too. Without dropout: PyTorch draws its masks
    from one global generator, so two models trained one after the other
    would draw different ones."""
    unfused = compile_with(causal_lm(dropout=0.0), SparseASSoftmaxCrossentropy(delta=0.2),
                           sampler="greedy")
    lm = causal_lm(dropout=0.0)
    lm.compile(sampler="greedy")
    generated = lm.generate("airplane", max_length=LENGTH)
    lm = fuse_output_projection(lm)
    assert lm.generate("airplane", max_length=LENGTH) == generated
    compile_with(lm, LinearSparseASSoftmaxCrossentropy(delta=0.2), run_eagerly=False,
                 sampler="greedy")
    assert lm.loss.kernel is lm.backbone.token_embedding.embeddings
    np.testing.assert_allclose(
        evaluate_loss(lm, LM_TEXTS), evaluate_loss(unfused, LM_TEXTS), rtol=1e-6
    )
    history = fit(lm, LM_TEXTS)
    fit(unfused, LM_TEXTS)
    assert history["loss"][-1] < history["loss"][0]
    for actual, expected in zip(lm.trainable_weights, unfused.trainable_weights):
        np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)
    lm.save(tmp_path / "lm.keras")
    loaded = load_quietly(keras_as_softmax.load_model, tmp_path / "lm.keras")
    assert type(loaded) is type(lm)
    assert loaded.loss.kernel is loaded.backbone.token_embedding.embeddings
    assert_same_training_state(loaded, lm, LM_TEXTS[:2])
    assert loaded.generate("airplane", max_length=LENGTH) == lm.generate(
        "airplane", max_length=LENGTH
    )

    adaptive_lm = adaptive(loaded, max_accumulation_steps=2)
    history = adaptive_lm.fit(
        LM_TEXTS, batch_size=4, epochs=2, verbose=0,
        callbacks=[keras_as_softmax.DeltaWarmup(initial_delta=1.0, warmup_steps=2)],
    ).history
    assert history["optimizer_updates"][-1] == int(adaptive_lm.optimizer.iterations.numpy())
    assert 0 <= history["masked_ratio"][-1] <= 1


def test_fuse_output_projection_bad_input():
    lm = fuse_output_projection(causal_lm())
    with pytest.raises(ValueError, match="already trains through the fused loss"):
        fuse_output_projection(lm)
    with pytest.raises(ValueError, match="compile it with `loss=LinearSparseASSoftmax"):
        fit(compile_with(lm, SparseASSoftmaxCrossentropy()), LM_TEXTS, epochs=1)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    with pytest.raises(ValueError, match="has activation `softmax`"):
        fuse_output_projection(model)
    model = keras.Model(inputs, keras.layers.Softmax()(inputs))
    with pytest.raises(ValueError, match=r"comes from `.*` \(Softmax\)"):
        fuse_output_projection(model)


# Multi-label head on a backbone's pooled output.

def test_multilabel_head(tmp_path):
    backbone = bert_backbone()
    x, _, _ = tagging_data()
    inputs = {name: keras.Input((LENGTH,), dtype="int32", name=name) for name in x}
    outputs = keras.layers.Dense(NUM_CLASSES)(backbone(inputs)["pooled_output"])
    model = keras.Model(inputs, outputs)
    labels = (RNG.random((len(TEXTS), NUM_CLASSES)) < 0.4).astype("int32")
    logits = model.predict(x, verbose=0).astype(np.float64)
    for delta in (1.0, 0.2):
        compile_with(model, MultiLabelASSoftmaxCrossentropy(delta=delta))
        expected, *_ = reference.multilabel_as_softmax(labels, logits, delta)
        np.testing.assert_allclose(evaluate_loss(model, x, labels), expected.mean(), rtol=1e-5)
    adaptive(model, max_accumulation_steps=2)
    compile_with(model, MultiLabelASSoftmaxCrossentropy(delta=0.2))
    history = fit(model, x, labels, epochs=3)
    assert history["loss"][-1] < history["loss"][0]
    model.save(tmp_path / "model.keras")
    loaded = load_quietly(keras.saving.load_model, tmp_path / "model.keras")
    assert type(loaded) is type(model) and loaded.max_accumulation_steps == 2
    assert_same_training_state(loaded, model, x)
