"""WordNet glosses, text CNN: softmax vs AS-Softmax vs AS-Speed (+ skipping).

Each of WordNet's 117659 synsets is a sample: its gloss (definition and
examples), as its first 32 word tokens, is to be classified into its
lexicographer class, one of 45 (`noun.animal`, `verb.motion`, `adj.all`, ...;
the largest, `adj.all`, is 12 % of the synsets). 10 % of the synsets, drawn
once with a fixed seed, are the validation set; the vocabulary is the 20000
most frequent words of the training glosses. The model is an embedding, two
convolutions, global max pooling and a dense layer of 45 logits. Compares
softmax CE, AS-Softmax, AS-Speed and AS-Speed + skipping; reports best
validation accuracy, its epoch, steady-state ms per batch, wall time and time
to the target, optimizer updates, the final masked ratio and the backward
fraction; saves `wordnet_text.png`.

Data: the local WordNet 3.0 of Debian's `wordnet-base`
(`apt-get install wordnet-base`), or the dict folder in `WORDNET_DIR`.

    python examples/wordnet_text.py [--backend jax] [--seeds 3] [--epochs 10]
    python examples/wordnet_text.py --quick      # 8000 glosses, CPU smoke test
"""

import harness  # First: `--backend` must be read before Keras loads.

import keras
import numpy as np

import datasets

LENGTH = 32


def text_cnn(vocabulary_size, num_outputs):
    """Gloss tokens `(LENGTH,)` -> logits: embedding, two convolutions, max pool."""
    inputs = keras.Input((LENGTH,), dtype="int32")
    h = keras.layers.Embedding(vocabulary_size, 64)(inputs)
    h = keras.layers.Conv1D(128, 3, padding="same", activation="relu")(h)
    h = keras.layers.Conv1D(128, 3, padding="same", activation="relu")(h)
    h = keras.layers.GlobalMaxPooling1D()(h)
    h = keras.layers.Dropout(0.3)(h)
    return inputs, keras.layers.Dense(num_outputs)(h)


def task(quick=False):
    """The WordNet gloss task (an 8000/800 slice, 3000 words when `quick`)."""
    synsets = datasets.wordnet_synsets()
    tokens = [datasets.words(s.gloss) for s in synsets]
    labels = np.array([datasets.LEXNAMES.index(s.lexname) for s in synsets], "int32")
    indices = np.arange(len(labels))
    (train, y), (validation, y_val) = datasets.split((indices, labels), 0.1)
    if quick:
        train, y = train[:8000], y[:8000]
        validation, y_val = validation[:800], y_val[:800]
    vocab = datasets.vocabulary([tokens[i] for i in train], 3000 if quick else 20000)

    def encode(indices):
        return datasets.encode([tokens[i] for i in indices], vocab, LENGTH)

    return harness.Task(
        name="wordnet_text",
        title="WordNet gloss -> lexicographer class (45), text CNN",
        kind="single",
        train=(encode(train), y),
        validation=(encode(validation), y_val),
        build=lambda seed: text_cnn(len(vocab), len(datasets.LEXNAMES)),
        metrics=harness.accuracy,
        num_classes=len(datasets.LEXNAMES),
    )


if __name__ == "__main__":
    args = harness.parser(__doc__, epochs=10, batch_size=128).parse_args()
    harness.main(task, args)
