"""WordNet glosses, a keras-hub BERT classifier: softmax vs AS-Softmax vs AS-Speed.

The task of `wordnet_text.py` (each WordNet gloss is to be classified into its
lexicographer class, one of 45; the same 10 % validation split) with a
keras-hub `BertTextClassifier` that takes the glosses as raw strings: its
preprocessor tokenizes them, cut to 32 WordPiece tokens, inside `fit`,
`evaluate` and `predict`. The AS-Speed methods use the same classifier made an
`AdaptiveModel` in place by `keras_as_softmax.adaptive`, preprocessor and all.

The classifier is the pretrained `bert_tiny_en_uncased` preset (2 layers, 2
heads, hidden size 128) when keras-hub can download it or has it cached.
Offline it is a smaller BERT (2 layers, 2 heads, hidden size 64), randomly
initialised, with a WordPiece vocabulary learned from the first 20000
training glosses (500 with `--quick`; learning it takes about a minute). The
title says which one ran. keras-hub batches the strings in the order given,
the same every epoch (the split is shuffled once). The default budget (2
epochs, batch 64) is sized for a CPU: about 4 minutes per method and seed on
two busy cores with JAX.

Compares softmax CE, AS-Softmax, AS-Speed and AS-Speed + skipping; reports
best validation accuracy, its epoch, steady-state ms per batch, wall time and
time to the target, optimizer updates, the final masked ratio and the
backward fraction; saves `keras_hub_text.png`.

Needs keras-hub (`pip install keras-hub`, or `pip install -e ".[examples]"`).
Data: the local WordNet 3.0 of Debian's `wordnet-base`
(`apt-get install wordnet-base`), or the dict folder in `WORDNET_DIR`.

    python examples/keras_hub_text.py [--backend jax] [--seeds 3] [--epochs 2]
    python examples/keras_hub_text.py --quick    # 512 glosses, CPU smoke test
"""

import os
import warnings

# Also TensorFlow's errors that its preprocessing logs on a CPU (cuInit, oneDNN).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import harness  # noqa: E402  Before Keras: `--backend` must be read first.

import numpy as np  # noqa: E402

import datasets  # noqa: E402

try:
    import keras_hub
except ImportError:
    raise SystemExit(
        "This example needs keras-hub: pip install keras-hub "
        '(or pip install -e ".[examples]").'
    ) from None
import tensorflow as tf  # noqa: E402  keras-hub's tokenizers need it.

# keras-hub hands `fit` a dataset, which Keras does not shuffle.
warnings.filterwarnings("ignore", "`shuffle=True` was passed")

PRESET = "bert_tiny_en_uncased"
LENGTH = 32  # WordPiece tokens per gloss, [CLS] and [SEP] included.


def preset_preprocessor():
    """`PRESET`'s preprocessor, or None when the preset can be neither
    downloaded nor found in keras-hub's cache."""
    try:
        return keras_hub.models.BertTextClassifierPreprocessor.from_preset(
            PRESET, sequence_length=LENGTH
        )
    except OSError:  # Offline: `requests.ConnectionError`.
        return None


def pretrained_classifier():
    """`PRESET` with a new head of 45 logits."""
    return keras_hub.models.BertTextClassifier.from_preset(
        PRESET, num_classes=len(datasets.LEXNAMES), preprocessor=preset_preprocessor()
    )


def word_pieces(glosses, size=8000):
    """A lower-case WordPiece vocabulary of at most `size` learned from `glosses`."""
    return keras_hub.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(glosses).batch(1000), size, lowercase=True
    )


def random_classifier(vocabulary):
    """A small randomly initialised BERT on `vocabulary`; 45 logits."""
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=LENGTH
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=2,
        num_heads=2,
        hidden_dim=64,
        intermediate_dim=256,
        max_sequence_length=LENGTH,
    )
    return keras_hub.models.BertTextClassifier(
        backbone, len(datasets.LEXNAMES), preprocessor, activation=None
    )


def classifier(glosses, quick=False):
    """`(description, build, learning rate)`: `PRESET` when it can be had,
    else a random BERT with a vocabulary learned from the first `glosses`."""
    if preset_preprocessor() is not None:
        return f"pretrained {PRESET}", lambda seed: pretrained_classifier(), 5e-5
    glosses = glosses[: 500 if quick else 20000]
    vocabulary = word_pieces(glosses)
    description = (
        f"random backbone, WordPiece vocabulary of {len(vocabulary)} learned "
        f"from {len(glosses)} training glosses"
    )
    return description, lambda seed: random_classifier(vocabulary), 1e-3


def task(quick=False):
    """The WordNet gloss task on raw strings (a 512/128 slice when `quick`)."""
    synsets = datasets.wordnet_synsets()
    glosses = np.array([s.gloss for s in synsets])
    labels = np.array([datasets.LEXNAMES.index(s.lexname) for s in synsets], "int32")
    (x, y), (x_val, y_val) = datasets.split((glosses, labels), 0.1)
    if quick:
        x, y, x_val, y_val = x[:512], y[:512], x_val[:128], y_val[:128]
    description, build, learning_rate = classifier(x, quick)
    return harness.Task(
        name="keras_hub_text",
        title="WordNet gloss -> lexicographer class (45), keras-hub BERT "
        f"({description})",
        kind="single",
        train=(x, y),
        validation=(x_val, y_val),
        build=build,
        metrics=harness.accuracy,
        num_classes=len(datasets.LEXNAMES),
        learning_rate=learning_rate,
    )


if __name__ == "__main__":
    args = harness.parser(__doc__, epochs=2, batch_size=64).parse_args()
    harness.main(task, args)
