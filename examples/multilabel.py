"""WordNet nouns, multi-label: AS-Softmax, then binary CE vs multi-label CE vs AS-Speed.

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
is predicted where its logit is above 0. It trains once with
`MultiLabelASSoftmaxCrossentropy`; then the comparison trains it with Keras's
`BinaryCrossentropy`, the multi-label cross-entropy
(`MultiLabelASSoftmaxCrossentropy(delta=1)`), its AS-Softmax and AS-Speed,
and reports best validation micro F1 (predicting the most frequent labels
for every noun scores at most 0.20), its epoch, wall time, optimizer updates
and the final masked ratio; it saves `multilabel.png`.

Data: the local WordNet 3.0 of Debian's `wordnet-base`
(`apt-get install wordnet-base`), or the dict folder in `WORDNET_DIR`.

    python -m examples.multilabel [--backend jax] [--seeds 3] [--epochs 15]
    python -m examples.multilabel --quick      # 6000 nouns, CPU smoke test
"""

from benchmarks import comparison  # First: reads `--backend` before Keras loads.

import collections

import keras
import numpy as np

from examples import datasets
from examples.wordnet_text import encoded_split
from examples.wordnet_text import text_cnn
from keras_as_softmax import MultiLabelASSoftmaxCrossentropy


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


def load_data(quick=False, train_size=None):
    """`(x_train, y_train), (x_val, y_val), vocabulary`: token ids `(N,
    LENGTH)` and multi-hot labels `(N, labels)`; 6000 / 600 nouns, 50 labels
    and 3000 words when `quick`; `train_size`: the first N."""
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
    return encoded_split(tokens, y, (6000, 600), quick, train_size)


def task(train, validation, vocabulary):
    """This example as the comparison's task."""
    num_labels = train[1].shape[1]
    return comparison.Task(
        name="multilabel",
        title=f"WordNet noun gloss -> {num_labels} hypernym ancestors, text CNN",
        kind="multilabel",
        train=train,
        validation=validation,
        build=lambda: text_cnn(len(vocabulary), num_labels),
        metrics=lambda one_hot: [LogitF1Score(average="micro", threshold=0.5, name="f1")],
        num_classes=num_labels,
    )


if __name__ == "__main__":
    args = comparison.parse_args(comparison.parser(__doc__, epochs=15, batch_size=128))
    (x_train, y_train), (x_val, y_val), vocabulary = load_data(args.quick, args.train_size)

    # Multi-label AS-Softmax: multi-hot targets, one logit per label.
    keras.utils.set_random_seed(0)
    model = text_cnn(len(vocabulary), y_train.shape[1])
    model.compile(optimizer="adam", loss=MultiLabelASSoftmaxCrossentropy(delta=args.delta),
                  metrics=[LogitF1Score(average="micro", threshold=0.5, name="f1")])
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=2)
    loss, f1 = model.evaluate(x_val, y_val, verbose=0)
    print(f"AS-Softmax: validation micro F1 {f1:.4f} after {args.epochs} epochs\n")

    # The comparison: the same model, seeds and budget with each method.
    comparison.main(task((x_train, y_train), (x_val, y_val), vocabulary), args)
