"""WordNet gloss spelling correction: AS-Softmax, then softmax vs AS-Softmax vs AS-Speed.

A token classification task with thousands of classes, like the AS-Softmax
paper's spelling correction but with words: each gloss of the local WordNet is
a sentence of up to 24 word tokens, and 35% of the tokens get one or two
random letter edits (deletion, insertion, substitution or transposition; the
same every run). The model reads the letters of every noisy token and predicts
the clean token among the 5000 most frequent gloss words (`<unk>` for the
others). Padding is `ignore_class` 0 and has sample weight 0, so the accuracy
counts real tokens only. "copy" in the title is the accuracy of keeping each
noisy token as it is.

Model: a character CNN per token (letter embedding, a 1 x 3 convolution, max
over the letters), a convolution over neighbouring tokens, 5000 logits per
token. It trains once with AS-Softmax; then the comparison trains it with
softmax CE, AS-Softmax, AS-Speed and AS-Speed + skipping and reports best
validation token accuracy, its epoch, wall time, optimizer updates and the
final masked ratio; it saves `token_spelling.png`.

Data: Debian's `wordnet-base` (`apt-get install wordnet-base`).

    python -m examples.token_spelling [--backend jax] [--seeds 3] [--epochs 10]
    python -m examples.token_spelling --quick    # 2560 glosses, CPU smoke test
"""

from benchmarks import comparison  # First: reads `--backend` before Keras loads.

import keras
import numpy as np

from examples import datasets
from keras_as_softmax import SparseASSoftmaxCrossentropy

TOKENS = 24  # Tokens per sentence.
LETTERS = 16  # Letters per token.
ALPHABET = "abcdefghijklmnopqrstuvwxyz'"
NOISE = 0.35  # Fraction of misspelt tokens.
PAD = 0  # Padding id of the letters and of the targets (`<pad>`).


def misspell(token, draws):
    """One letter edit per row of `draws`: (kind, place, letter) in [0, 1)."""
    for kind, place, letter in draws:
        letter = ALPHABET[int(letter * 26)]  # a to z.
        if kind < 0.25 and len(token) > 1:  # Deletion.
            at = int(place * len(token))
            token = token[:at] + token[at + 1 :]
        elif kind < 0.5:  # Insertion.
            at = int(place * (len(token) + 1))
            token = token[:at] + letter + token[at:]
        elif kind < 0.75:  # Substitution.
            at = int(place * len(token))
            token = token[:at] + letter + token[at + 1 :]
        elif len(token) > 1:  # Transposition of two neighbours.
            at = int(place * (len(token) - 1))
            token = token[:at] + token[at + 1] + token[at] + token[at + 2 :]
    return token


def noisy_sentences(sentences, rng):
    """Misspells `NOISE` of the tokens, with one or two edits each."""
    tokens = [token for sentence in sentences for token in sentence]
    edits = rng.choice(3, size=len(tokens), p=(1 - NOISE, NOISE / 2, NOISE / 2))
    draws = rng.random((len(tokens), 2, 3))
    noisy = iter(
        misspell(token, draw[:count])
        for token, draw, count in zip(tokens, draws, edits)
    )
    return [[next(noisy) for _ in sentence] for sentence in sentences]


def letters(sentences):
    """Letter ids `(N, TOKENS, LETTERS)` of sentences of at most `TOKENS` tokens."""
    table = np.zeros(128, "int32")
    table[[ord(c) for c in ALPHABET]] = np.arange(1, len(ALPHABET) + 1)
    tokens = [token for sentence in sentences for token in sentence]
    codes = np.array(tokens, f"U{LETTERS}").view(np.uint32).reshape(-1, LETTERS)
    rows = np.repeat(np.arange(len(sentences)), [len(s) for s in sentences])
    columns = np.concatenate([np.arange(len(s)) for s in sentences])
    x = np.full((len(sentences), TOKENS, LETTERS), PAD, "int32")
    x[rows, columns] = table[codes]
    return x


def load_data(quick=False, train_size=None):
    """`(x, y, weight), (x_val, y_val, weight_val), vocabulary, copy accuracy`:
    letter ids of the noisy tokens, the clean tokens' ids and 1 where a token
    is real (0 on padding); 2560 glosses and 1000 words when `quick`;
    `train_size`: the first N."""
    rng = np.random.default_rng(0)
    sentences = [
        datasets.words(synset.gloss)[:TOKENS] for synset in datasets.wordnet_synsets()
    ]
    if quick:  # 2048 + 512: whole batches and prediction chunks, fewer compiles.
        sentences = [sentences[i] for i in rng.permutation(len(sentences))[:2560]]
    vocabulary = datasets.vocabulary(sentences, 1000 if quick else 5000)
    noisy = noisy_sentences(sentences, rng)
    y = datasets.encode(sentences, vocabulary, TOKENS)
    copy = datasets.encode(noisy, vocabulary, TOKENS)
    weight = (y != PAD).astype("float32")
    (x, y, weight, _), (x_val, y_val, weight_val, copy_val) = datasets.split(
        (letters(noisy), y, weight, copy), 0.2 if quick else 0.1
    )
    copy_accuracy = np.sum((copy_val == y_val) * weight_val) / np.sum(weight_val)
    train = datasets.first((x, y, weight), train_size)
    return train, (x_val, y_val, weight_val), vocabulary, copy_accuracy


def build_model(num_words):
    """Letters `(TOKENS, LETTERS)` -> `num_words` logits per token."""
    inputs = keras.Input((TOKENS, LETTERS), dtype="int32")
    h = keras.layers.Embedding(len(ALPHABET) + 1, 32)(inputs)
    # A 1 x 3 convolution and a max over the letters: a CNN per token (in
    # one op; `TimeDistributed` would loop over the tokens in Python).
    h = keras.layers.Conv2D(128, (1, 3), padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D((1, LETTERS))(h)
    h = keras.layers.Reshape((TOKENS, 128))(h)
    h = keras.layers.Conv1D(256, 3, padding="same", activation="relu")(h)
    h = keras.layers.Dropout(0.2)(h)
    return keras.Model(inputs, keras.layers.Dense(num_words)(h))


def task(train, validation, vocabulary, copy_accuracy):
    """This example as the comparison's task."""
    return comparison.Task(
        name="token_spelling",
        title=(
            f"WordNet glosses, misspelt tokens -> {len(vocabulary)} words "
            f"(copy {copy_accuracy:.3f}), char CNN"
        ),
        kind="tokens",
        train=train,
        validation=validation,
        build=lambda: build_model(len(vocabulary)),
        num_classes=len(vocabulary),
        ignore_class=PAD,
        learning_rate=1e-2,
    )


if __name__ == "__main__":
    args = comparison.parse_args(comparison.parser(__doc__, epochs=10, batch_size=32))
    data = load_data(args.quick, args.train_size)
    (x, y, weight), (x_val, y_val, weight_val), vocabulary, _ = data

    # AS-Softmax per token: padding is `ignore_class` (and weight 0 for the metric).
    keras.utils.set_random_seed(0)
    model = build_model(len(vocabulary))
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=SparseASSoftmaxCrossentropy(delta=args.delta, ignore_class=PAD),
                  weighted_metrics=["accuracy"])
    model.fit(x, y, sample_weight=weight, batch_size=args.batch_size, epochs=args.epochs,
              verbose=2)
    loss, accuracy = model.evaluate(x_val, y_val, sample_weight=weight_val, verbose=0)
    print(f"AS-Softmax: validation token accuracy {accuracy:.4f} "
          f"after {args.epochs} epochs\n")

    # The comparison: the same model, seeds and budget with each method.
    comparison.main(task(*data), args)
