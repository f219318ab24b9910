"""The examples' data: the standard online loader when it works, a local copy
when it does not, and one clear sentence saying how to get it when neither is
there. Arrays only (NumPy); nothing here depends on the Keras backend. The
examples and, through them, the benchmarks (`python -m benchmarks.compare
--dataset ...`) load their data here.
"""

import collections
import gzip
import os
import re

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
WORDNET_DIR = os.environ.get("WORDNET_DIR", "/usr/share/wordnet")

# WordNet's 45 lexicographer files, by number (WordNet 3.0 `lexnames`).
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact "
    "noun.attribute noun.body noun.cognition noun.communication noun.event "
    "noun.feeling noun.food noun.group noun.location noun.motive noun.object "
    "noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance "
    "noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social "
    "verb.stative verb.weather adj.ppl"
).split()

Synset = collections.namedtuple("Synset", "key lexname lemmas hypernyms gloss")


def split(arrays, validation_fraction, seed=0):
    """Shuffles aligned arrays once (fixed seed) and splits off validation."""
    order = np.random.default_rng(seed).permutation(len(arrays[0]))
    cut = len(order) - int(round(validation_fraction * len(order)))
    train = tuple(a[order[:cut]] for a in arrays)
    validation = tuple(a[order[cut:]] for a in arrays)
    return train, validation


def first(arrays, count):
    """The first `count` samples of aligned arrays (all of them if `count` is None)."""
    return tuple(a[:count] for a in arrays)


def digits():
    """scikit-learn's bundled digits: 1797 images 8x8x1 in [0, 1], 10 classes.

    Returns:
        `((x_train, y_train), (x_val, y_val))`, an 80/20 split.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit(
            "The digits data set comes with scikit-learn: "
            'pip install scikit-learn (or pip install -e ".[examples]").'
        ) from None
    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    return split((x, data.target.astype("int32")), 0.2)


def _read_idx(path, offset):
    with gzip.open(path, "rb") as file:
        return np.frombuffer(file.read(), np.uint8, offset=offset)


def fashion_mnist():
    """Fashion-MNIST: 60000 + 10000 images 28x28x1 in [0, 1], 10 classes.

    Uses `keras.datasets.fashion_mnist` when it can download (or has cached)
    the files, else Debian's `dataset-fashion-mnist` files.

    Returns:
        `((x_train, y_train), (x_test, y_test))`.
    """
    try:
        import keras

        (x, y), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception:
        local = os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")
        if not os.path.exists(local):
            raise SystemExit(
                "Fashion-MNIST could not be downloaded and is not installed "
                "locally: connect to the internet, or install Debian's copy with "
                "`apt-get install dataset-fashion-mnist`."
            ) from None

        def read(kind):
            images = _read_idx(
                os.path.join(FASHION_MNIST_DIR, f"{kind}-images-idx3-ubyte.gz"), 16
            )
            labels = _read_idx(
                os.path.join(FASHION_MNIST_DIR, f"{kind}-labels-idx1-ubyte.gz"), 8
            )
            return images.reshape(-1, 28, 28), labels

        (x, y), (x_test, y_test) = read("train"), read("t10k")

    def prepare(images, labels):
        return (images.astype("float32") / 255.0)[..., None], labels.astype("int32")

    return prepare(x, y), prepare(x_test, y_test)


def wordnet_synsets(parts_of_speech=("noun", "verb", "adj", "adv")):
    """Every synset of the local WordNet (Debian's `wordnet-base`).

    Returns:
        A list of `Synset(key, lexname, lemmas, hypernyms, gloss)`: `key` is
        `"<pos>:<offset>"`, `hypernyms` the keys of its direct hypernyms
        (`@` and instance `@i` pointers), `gloss` the definition text with its
        examples.
    """
    if not os.path.exists(os.path.join(WORDNET_DIR, "data.noun")):
        raise SystemExit(
            f"WordNet is not installed in {WORDNET_DIR}: install Debian's "
            "`wordnet-base` (`apt-get install wordnet-base`) or set WORDNET_DIR "
            "to a WordNet 3.x dict folder."
        )
    synsets = []
    for part in parts_of_speech:
        with open(os.path.join(WORDNET_DIR, f"data.{part}"), encoding="utf-8") as f:
            for line in f:
                if line.startswith("  "):  # The licence header.
                    continue
                fields, _, gloss = line.partition(" | ")
                fields = fields.split()
                pos = fields[2]
                word_count = int(fields[3], 16)
                lemmas = fields[4 : 4 + 2 * word_count : 2]
                at = 4 + 2 * word_count
                pointer_count = int(fields[at])
                pointers = fields[at + 1 : at + 1 + 4 * pointer_count]
                hypernyms = [
                    f"{pointers[i + 2]}:{pointers[i + 1]}"
                    for i in range(0, len(pointers), 4)
                    if pointers[i] in ("@", "@i")
                ]
                synsets.append(
                    Synset(
                        key=f"{pos}:{fields[0]}",
                        lexname=LEXNAMES[int(fields[1])],
                        lemmas=[lemma.lower() for lemma in lemmas],
                        hypernyms=hypernyms,
                        gloss=gloss.strip(),
                    )
                )
    return synsets


def words(text):
    """Lower-case word tokens of English text."""
    return re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())


def vocabulary(token_lists, size, reserved=("<pad>", "<unk>")):
    """The `size` most frequent tokens after the reserved ones, as a list."""
    counts = collections.Counter(t for tokens in token_lists for t in tokens)
    return list(reserved) + [t for t, _ in counts.most_common(size - len(reserved))]


def encode(token_lists, vocab, length):
    """Token lists to an int32 array `(N, length)`: 0 pads, 1 is unknown."""
    index = {token: i for i, token in enumerate(vocab)}
    ids = np.zeros((len(token_lists), length), "int32")
    for row, tokens in enumerate(token_lists):
        tokens = [index.get(t, 1) for t in tokens[:length]]
        ids[row, : len(tokens)] = tokens
    return ids
