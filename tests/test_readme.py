"""README.md's Python code blocks run as written, on this backend.

Each ```python block of the README is run as it stands, in a namespace that
holds what the block uses but does not define (`x_train`, `y_train`, a model
to warm up, ...): small synthetic data of the shapes the block names. A
block that the test does not know fails: a new block needs its data here.
The keras-hub block runs with its presets replaced by tiny random models of
the same classes (no download), in a slow test.
"""

import os
import re

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as _file:
    BLOCKS = re.findall(r"^```python\n(.*?)^```", _file.read(), re.M | re.S)
RNG = np.random.default_rng(0)


def features(samples, width):
    return RNG.standard_normal((samples, width)).astype("float32")


def classes(samples, num_classes=10):
    return RNG.integers(0, num_classes, samples).astype("int32")


def usage():
    return {"x_train": features(64, 64), "y_train": classes(64), "x_test": features(8, 64)}


def check_usage(names):
    assert keras.ops.convert_to_numpy(names["predictions"]).shape == (8,)


def multilabel():
    y = (RNG.random((64, 5)) < 0.4).astype("float32")
    return {"num_labels": 5, "x_train": features(64, 300), "y_multi_hot": y,
            "x_test": features(8, 300)}


def check_multilabel(names):
    assert names["predicted_labels"].shape == (8, 5)
    assert names["predicted_labels"].dtype == bool


def f1_metric():
    return {"keras": keras}  # The multi-label block's import, just above it.


def check_f1_metric(names):
    (metric,) = names["metrics"]
    metric.update_state(np.eye(3, dtype="float32"), np.array(
        [[2.0, -1.0, -1.0], [-1.0, 2.0, -1.0], [-1.0, -1.0, -2.0]], "float32"))
    # Two of three labels predicted, no false positive: micro F1 = 0.8.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(metric.result()), 0.8, rtol=1e-6)


def warmup():
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    return {"model": model, **usage()}


def check_warmup(names):
    # Logged per epoch: from near 1 down to the loss's delta, held after 30 %.
    deltas = names["model"].history.history["as_softmax_delta"]
    assert 0.1 < deltas[0] < 1.0 and deltas[0] > deltas[1]
    np.testing.assert_allclose(deltas[3:], 0.1, rtol=1e-6)


def as_speed():
    return usage()


def check_as_speed(names):
    # The fourth case: the existing model, converted in place, is the one trained.
    assert names["model"] is names["existing"]
    assert isinstance(names["model"], names["AdaptiveModel"])
    masked, windows = (names["history"].history[key]
                       for key in ("masked_ratio", "accumulation_steps"))
    assert len(masked) == len(windows) == 10


def pruning():
    return usage()


def check_pruning(names):
    history = names["history"].history
    assert len(history["pruned_fraction"]) == len(history["forgetting_rate"]) == 4
    assert names["model"].sample_pruning.rate == 0.5


def check_plain_pruning(names):
    history = names["history"].history
    assert len(history["pruned_fraction"]) == len(history["forgetting_rate"]) == 4
    pruning = names["pruning"].pruning
    assert pruning.rate == 0.5 and len(pruning.last_masked) == len(names["x_train"])
    assert set(pruning.last_masked.tolist()) <= {0, 1}  # Every sample seen.


# A marker that only its block contains -> its name, its given names, a check.
GIVEN = {
    "model.fit(x_train, y_train, epochs=10)  ": ("usage", usage, check_usage),
    "MultiLabelASSoftmaxCrossentropy(delta=0.1)": (
        "multilabel", multilabel, check_multilabel),
    "class LogitF1Score": ("f1", f1_metric, check_f1_metric),
    "DeltaWarmup(initial_delta=1.0": ("warmup", warmup, check_warmup),
    "AdaptiveSequential(": ("as_speed", as_speed, check_as_speed),
    "prune_masked=0.5)": ("pruning", pruning, check_pruning),
    "PruneMasked(data, rate=0.5)": ("plain_pruning", pruning, check_plain_pruning),
    "import keras_hub": ("keras_hub", None, None),  # test_keras_hub_block
    "fuse_output_projection(lm)": ("fused_lm", None, None),  # test_fused_lm_block
}


def given(block):
    (marker,) = [marker for marker in GIVEN if marker in block]
    return GIVEN[marker]


def test_every_block_has_its_data():
    # Each block has one marker, each marker one block.
    names = sorted(given(block)[0] for block in BLOCKS)
    assert names == sorted(name for name, _, _ in GIVEN.values())


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if given(b)[1] is not None], ids=lambda b: given(b)[0]
)
def test_block_runs(block, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _, make, check = given(block)
    names = make()
    exec(compile(block, "README.md", "exec"), names)
    check(names)


# The keras-hub block: tiny random models in place of the presets.

WORDS = "the a cat dog sat ran on under mat log red blue".split()


def tiny_models(hub):
    """`from_preset` stand-ins for the three classes the block loads."""
    bert_vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tiny = dict(num_layers=1, num_heads=1, hidden_dim=8, intermediate_dim=16,
                max_sequence_length=16)

    def bert_backbone(preset):
        return hub.models.BertBackbone(vocabulary_size=len(bert_vocabulary), **tiny)

    def classifier(preset, num_classes, activation=None):
        tokenizer = hub.models.BertTokenizer(vocabulary=bert_vocabulary)
        preprocessor = hub.models.BertTextClassifierPreprocessor(
            tokenizer, sequence_length=16)
        return hub.models.BertTextClassifier(
            bert_backbone(preset), num_classes, preprocessor, activation=activation
        )

    def causal_lm(preset):
        # Byte-level BPE: merges that spell each word, with and without the
        # space before it (`Ġ`).
        merges = list(dict.fromkeys(
            f"{token[:end - 1]} {token[end - 1]}"
            for word in WORDS for token in (word, "Ġ" + word)
            for end in range(2, len(token) + 1)
        ))
        letters = sorted({c for word in WORDS for c in word} | {"Ġ"})
        merged = dict.fromkeys("".join(m.split()) for m in merges)
        vocabulary = {t: i for i, t in enumerate(["<|endoftext|>", *letters, *merged])}
        tokenizer = hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
        preprocessor = hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=16)
        backbone = hub.models.GPT2Backbone(vocabulary_size=len(vocabulary), **tiny)
        return hub.models.GPT2CausalLM(backbone, preprocessor=preprocessor)

    return {
        hub.models.BertTextClassifier: classifier,
        hub.models.BertBackbone: bert_backbone,
        hub.models.GPT2CausalLM: causal_lm,
    }


@pytest.mark.slow
def test_keras_hub_block(monkeypatch, tmp_path):
    hub = pytest.importorskip("keras_hub")
    for cls, make in tiny_models(hub).items():
        monkeypatch.setattr(cls, "from_preset", make)
    monkeypatch.chdir(tmp_path)
    (block,) = [b for b in BLOCKS if "import keras_hub" in b]
    texts = np.array([" ".join(RNG.choice(WORDS, RNG.integers(2, 6))) for _ in range(32)])
    names = {"keras": keras, "texts": texts, "labels": classes(32, 45), "num_tags": 5}
    keras.utils.set_random_seed(0)
    exec(compile(block, "README.md", "exec"), names)
    # Loaded back as saved: AS-Speed and its loss; the LM with its AS loss.
    assert names["task"].max_accumulation_steps == 2
    assert names["task"].loss.delta == names["lm"].loss.delta == 0.1
    assert names["tagger"].loss.ignore_class == -100


@pytest.mark.slow
def test_fused_lm_block(monkeypatch, tmp_path):
    hub = pytest.importorskip("keras_hub")
    import keras_as_softmax

    monkeypatch.setattr(hub.models.GPT2CausalLM, "from_preset", tiny_models(hub)[
        hub.models.GPT2CausalLM])
    monkeypatch.chdir(tmp_path)
    (block,) = [b for b in BLOCKS if "fuse_output_projection(lm)" in b]
    texts = np.array([" ".join(RNG.choice(WORDS, RNG.integers(2, 6))) for _ in range(16)])
    names = {"keras": keras, "keras_hub": hub, "keras_as_softmax": keras_as_softmax,
             "texts": texts}
    keras.utils.set_random_seed(0)
    exec(compile(block, "README.md", "exec"), names)
    # Loaded back converted, its loss bound to the tied embedding again.
    lm = names["lm"]
    assert isinstance(lm, keras_as_softmax.fused_projection.FusedProjectionOf)
    assert lm.loss.kernel is lm.backbone.token_embedding.embeddings
