"""WordNet nouns, multi-label: binary CE vs multi-label CE vs AS-Softmax vs AS-Speed.

Each of WordNet's 82115 noun synsets is a sample: its gloss, as its first 32
word tokens, is to be tagged with its hypernym ancestors (the transitive
closure of its hypernym and instance-hypernym pointers). The labels are the
200 most frequent ancestors (50 with `--quick`), named here by their first
lemma, leaving out the five that are ancestors of more than a third of the
nouns (entity, physical_entity, abstraction, object, whole). The most
frequent labels are living_thing, organism, psychological_feature,
causal_agent, artifact, person, group, event, attribute and act (24 % to 8 %
of the nouns); the least frequent, region, is on 310 (nine names, such as
part and substance, are shared by two of the labels). Nouns with none of the
labels are dropped, which leaves 81826 nouns with 4 labels on average. 10 %
of the nouns, drawn once with a fixed seed, are the validation set; the
vocabulary is the 20000 most frequent words of the training glosses. The
model is the text CNN of `wordnet_text.py` with one logit per label; a label
is predicted where its logit is above 0. Compares Keras's
`BinaryCrossentropy`, the multi-label cross-entropy
(`MultiLabelASSoftmaxCrossentropy(delta=1)`), its AS-Softmax and AS-Speed;
reports best validation micro F1 (predicting the most frequent labels for
every noun scores at most 0.20), its epoch, wall time, optimizer updates and
the final masked ratio; saves `multilabel.png`.

Data: the local WordNet 3.0 of Debian's `wordnet-base`
(`apt-get install wordnet-base`), or the dict folder in `WORDNET_DIR`.

    python examples/multilabel.py [--backend jax] [--seeds 3] [--epochs 15]
    python examples/multilabel.py --quick      # 6000 nouns, CPU smoke test
"""

import harness  # First: `--backend` must be read before Keras loads.

import collections

import keras
import numpy as np

import datasets
from wordnet_text import LENGTH
from wordnet_text import text_cnn


class LogitF1Score(keras.metrics.F1Score):
    """`F1Score` of logits: a label is predicted where its logit is above 0."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        super().update_state(y_true, keras.ops.sigmoid(y_pred), sample_weight)


def ancestors(synsets):
    """Each synset's hypernym ancestors, as a dict of key -> set of keys."""
    hypernyms = {s.key: s.hypernyms for s in synsets}
    found = {}

    def visit(key):
        if key not in found:
            found[key] = set()
            for parent in hypernyms[key]:
                found[key] |= {parent} | visit(parent)
        return found[key]

    for key in hypernyms:
        visit(key)
    return found


def task(quick=False):
    """The WordNet noun ancestor task (6000/600 nouns, 50 labels when `quick`)."""
    synsets = datasets.wordnet_synsets(("noun",))
    found = ancestors(synsets)
    counts = collections.Counter(a for s in synsets for a in found[s.key])
    labels = [a for a, n in counts.most_common() if n <= len(synsets) / 3]
    labels = labels[: 50 if quick else 200]
    column = {key: i for i, key in enumerate(labels)}
    synsets = [s for s in synsets if found[s.key] & column.keys()]
    y = np.zeros((len(synsets), len(labels)), "float32")
    for row, s in enumerate(synsets):
        y[row, [column[a] for a in found[s.key] & column.keys()]] = 1.0
    tokens = [datasets.words(s.gloss) for s in synsets]
    indices = np.arange(len(y))
    (train, y_train), (validation, y_val) = datasets.split((indices, y), 0.1)
    if quick:
        train, y_train = train[:6000], y_train[:6000]
        validation, y_val = validation[:600], y_val[:600]
    vocab = datasets.vocabulary([tokens[i] for i in train], 3000 if quick else 20000)

    def encode(indices):
        return datasets.encode([tokens[i] for i in indices], vocab, LENGTH)

    return harness.Task(
        name="multilabel",
        title=f"WordNet noun gloss -> {len(labels)} hypernym ancestors, text CNN",
        kind="multilabel",
        train=(encode(train), y_train),
        validation=(encode(validation), y_val),
        build=lambda seed: text_cnn(len(vocab), len(labels)),
        metrics=lambda one_hot: [
            LogitF1Score(average="micro", threshold=0.5, name="f1")
        ],
        num_classes=len(labels),
    )


if __name__ == "__main__":
    args = harness.parser(__doc__, epochs=15, batch_size=128).parse_args()
    harness.main(task, args)
