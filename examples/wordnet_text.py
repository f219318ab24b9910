"""WordNet glosses, text CNN: AS-Softmax, then softmax vs AS-Softmax vs AS-Speed.

Each of WordNet's 117659 synsets is a sample: its gloss (definition and
examples), as its first 32 word tokens, is to be classified into its
lexicographer class, one of 45 (`noun.animal`, `verb.motion`, `adj.all`, ...;
the largest, `adj.all`, is 12 % of the synsets). 10 % of the synsets, drawn
once with a fixed seed, are the validation set; the vocabulary is the 20000
most frequent words of the training glosses. The model is an embedding, two
convolutions, global max pooling and a dense layer of 45 logits. It trains
once with AS-Softmax; then the comparison trains it with softmax CE,
AS-Softmax, AS-Speed and AS-Speed + skipping and reports best validation
accuracy, its epoch, steady-state ms per batch, wall time and time to the
target, optimizer updates, the final masked ratio and the backward
fraction; it saves `wordnet_text.png`.

Data: the local WordNet 3.0 of Debian's `wordnet-base`
(`apt-get install wordnet-base`), or the dict folder in `WORDNET_DIR`.

    python -m examples.wordnet_text [--backend jax] [--seeds 3] [--epochs 10]
    python -m examples.wordnet_text --quick      # 8000 glosses, CPU smoke test
"""

from benchmarks import comparison  # First: reads `--backend` before Keras loads.

import keras
import numpy as np

from examples import datasets
from keras_as_softmax import SparseASSoftmaxCrossentropy

LENGTH = 32  # Word tokens per gloss.


def load_data(quick=False, train_size=None):
    """`(x_train, y_train), (x_val, y_val), vocabulary`: token ids `(N,
    LENGTH)` (0 pads, 1 is unknown) and class ids; an 8000 / 800 slice and
    3000 words when `quick`; `train_size`: the first N."""
    synsets = datasets.wordnet_synsets()
    tokens = [datasets.words(s.gloss) for s in synsets]
    labels = np.array([datasets.LEXNAMES.index(s.lexname) for s in synsets], "int32")
    return encoded_split(tokens, labels, (8000, 800), quick, train_size)


def encoded_split(tokens, targets, quick_sizes, quick=False, train_size=None):
    """Token lists and their targets, 10 % drawn once (fixed seed) for
    validation (the first `quick_sizes` of each part when `quick`), encoded
    with the most frequent training words (20000, or 3000 when `quick`):
    `(x, y), (x_val, y_val), vocabulary`; `train_size`: the first N."""
    train, validation = datasets.split((np.arange(len(targets)), targets), 0.1)
    if quick:
        train = datasets.first(train, quick_sizes[0])
        validation = datasets.first(validation, quick_sizes[1])
    vocabulary = datasets.vocabulary([tokens[i] for i in train[0]],
                                     3000 if quick else 20000)

    def encode(indices):
        return datasets.encode([tokens[i] for i in indices], vocabulary, LENGTH)

    train = datasets.first((encode(train[0]), train[1]), train_size)
    return train, (encode(validation[0]), validation[1]), vocabulary


def text_cnn(vocabulary_size, num_outputs):
    """Gloss tokens `(LENGTH,)` -> logits: embedding, two convolutions, max pool."""
    inputs = keras.Input((LENGTH,), dtype="int32")
    h = keras.layers.Embedding(vocabulary_size, 64)(inputs)
    h = keras.layers.Conv1D(128, 3, padding="same", activation="relu")(h)
    h = keras.layers.Conv1D(128, 3, padding="same", activation="relu")(h)
    h = keras.layers.GlobalMaxPooling1D()(h)
    h = keras.layers.Dropout(0.3)(h)
    return keras.Model(inputs, keras.layers.Dense(num_outputs)(h))


def task(train, validation, vocabulary):
    """This example as the comparison's task."""
    return comparison.Task(
        name="wordnet_text",
        title="WordNet gloss -> lexicographer class (45), text CNN",
        train=train,
        validation=validation,
        build=lambda: text_cnn(len(vocabulary), len(datasets.LEXNAMES)),
        num_classes=len(datasets.LEXNAMES),
    )


if __name__ == "__main__":
    args = comparison.parse_args(comparison.parser(__doc__, epochs=10, batch_size=128))
    (x_train, y_train), (x_val, y_val), vocabulary = load_data(args.quick, args.train_size)

    # AS-Softmax: integer class ids, 45 logits.
    keras.utils.set_random_seed(0)
    model = text_cnn(len(vocabulary), len(datasets.LEXNAMES))
    model.compile(optimizer="adam", loss=SparseASSoftmaxCrossentropy(delta=args.delta),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=2)
    loss, accuracy = model.evaluate(x_val, y_val, verbose=0)
    print(f"AS-Softmax: validation accuracy {accuracy:.4f} after {args.epochs} epochs\n")

    # The comparison: the same model, seeds and budget with each method.
    comparison.main(task((x_train, y_train), (x_val, y_val), vocabulary), args)
