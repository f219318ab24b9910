"""WordNet glosses, keras-hub BERT: AS-Speed, then softmax vs AS-Softmax vs AS-Speed.

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

It trains once with AS-Speed; then the comparison trains it with softmax CE,
AS-Softmax, AS-Speed and AS-Speed + skipping and reports best validation
accuracy, its epoch, steady-state ms per batch, wall time and time to the
target, optimizer updates, the final masked ratio and the backward
fraction; it saves `keras_hub_text.png`.

Needs keras-hub (`pip install keras-hub`, or `pip install -e ".[examples]"`).
Data: the local WordNet 3.0 of Debian's `wordnet-base`
(`apt-get install wordnet-base`), or the dict folder in `WORDNET_DIR`.

    python -m examples.keras_hub_text [--backend jax] [--seeds 3] [--epochs 2]
    python -m examples.keras_hub_text --quick    # 512 glosses, CPU smoke test
"""

import os
import warnings

# Also TensorFlow's errors that its preprocessing logs on a CPU (cuInit, oneDNN).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks import comparison  # noqa: E402  Before Keras: reads `--backend`.

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_as_softmax  # noqa: E402
from examples import datasets  # noqa: E402
from keras_as_softmax import SparseASSoftmaxCrossentropy  # noqa: E402

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


def load_data(quick=False, train_size=None):
    """`(x, y), (x_val, y_val)`: glosses as strings and their class ids (a
    512 / 128 slice when `quick`; `train_size`: the first N)."""
    synsets = datasets.wordnet_synsets()
    glosses = np.array([s.gloss for s in synsets])
    labels = np.array([datasets.LEXNAMES.index(s.lexname) for s in synsets], "int32")
    train, validation = datasets.split((glosses, labels), 0.1)
    if quick:
        train, validation = datasets.first(train, 512), datasets.first(validation, 128)
    return datasets.first(train, train_size), validation


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
        return f"pretrained {PRESET}", pretrained_classifier, 5e-5
    glosses = glosses[: 500 if quick else 20000]
    vocabulary = word_pieces(glosses)
    description = (
        f"random backbone, WordPiece vocabulary of {len(vocabulary)} learned "
        f"from {len(glosses)} training glosses"
    )
    return description, lambda: random_classifier(vocabulary), 1e-3


def task(train, validation, bert):
    """This example as the comparison's task; `bert` is what `classifier` returns."""
    description, build, learning_rate = bert
    return comparison.Task(
        name="keras_hub_text",
        title="WordNet gloss -> lexicographer class (45), keras-hub BERT "
        f"({description})",
        train=train,
        validation=validation,
        build=build,
        num_classes=len(datasets.LEXNAMES),
        learning_rate=learning_rate,
    )


if __name__ == "__main__":
    args = comparison.parse_args(comparison.parser(__doc__, epochs=2, batch_size=64))
    (x, y), (x_val, y_val) = load_data(args.quick, args.train_size)
    bert = classifier(x, args.quick)
    description, build, learning_rate = bert

    # AS-Speed for a keras-hub task: `adaptive` converts it in place, preprocessor
    # and all, so `fit` still takes raw strings; compile after construction.
    keras.utils.set_random_seed(0)
    model = keras_as_softmax.adaptive(
        build(), max_accumulation_steps=args.max_accumulation_steps)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=SparseASSoftmaxCrossentropy(delta=args.delta), metrics=["accuracy"])
    model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=2)
    accuracy = model.evaluate(x_val, y_val, verbose=0, return_dict=True)["accuracy"]
    print(f"AS-Speed ({description}): validation accuracy {accuracy:.4f} "
          f"after {args.epochs} epochs\n")

    # The comparison: the same classifier, seeds and budget with each method.
    comparison.main(task((x, y), (x_val, y_val), bert), args)
