"""Property-based tests of every AS-Softmax loss on random inputs.

Hypothesis draws the shape, dtype, delta, logit scale and the rates of -inf
logits, ignored positions and zero weights; NumPy draws the arrays from a
drawn seed. The profiles are in `conftest.py`; `scripts/fuzz.sh` runs the
long one on every backend.
"""

import dataclasses

import keras
import numpy as np
import pytest
from hypothesis import assume
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from keras import ops

from keras_as_softmax import ASSoftmaxCrossentropy
from keras_as_softmax import MultiLabelASSoftmaxCrossentropy
from keras_as_softmax import SparseASSoftmaxCrossentropy
from keras_as_softmax import as_softmax_crossentropy
from keras_as_softmax import as_softmax_mask
from keras_as_softmax import multilabel_as_softmax_crossentropy
from keras_as_softmax import multilabel_as_softmax_mask
from keras_as_softmax import sparse_as_softmax_crossentropy
from keras_as_softmax import sparse_as_softmax_mask
from keras_as_softmax._keras_private import set_keras_mask
from tests import reference
from tests.helpers import value_and_grad
from tests.helpers import to_numpy

MAX_ELEMENTS = 20000
# float16 overflows above 65504.
MAX_LOGIT = 6e4
EPS32 = float(np.finfo(np.float32).eps)
# Probabilities below this times C are zero or subnormal in float32.
TINY32 = float(np.finfo(np.float32).tiny)
# The losses compute in float32; a gradient is rounded to the input dtype.
GRAD_RTOL = {"float32": 1e-4, "float16": 1e-3, "bfloat16": 8e-3}
GRAD_ATOL = 1e-6

DTYPES = st.sampled_from(["float32", "float16", "bfloat16"])
# A positive delta below ~1e-34 is below float32's normal range of
# probabilities: float32 cannot follow the comparisons it asks for (those
# with probabilities that small), so it is not drawn; 0 is.
DELTAS = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(1e-30, 1.0))
SMALL_DELTAS = st.one_of(st.just(0.0), st.floats(1e-30, 0.3))
DELTA_KINDS = st.sampled_from(["python", "numpy", "tensor"])
SCALES = st.one_of(
    st.sampled_from([0.0, 1.0, 1e4]), st.floats(-3.0, 4.0).map(lambda e: 10.0**e)
)
RATES = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))
SEEDS = st.integers(0, 2**32 - 1)
WEIGHT_SHAPES = st.sampled_from(["per_position", "per_sample", "trailing_unit"])

# JAX compiles every operation anew for each new input shape (about a second
# per loss call), so on JAX the shapes come from this pool of the extremes;
# TensorFlow and PyTorch run any shape eagerly at no extra cost.
JAX_SHAPES = [(1, 2), (5, 3), (2, 3, 7), (2, 2, 2, 4), (3, 300), (4, 5000)]


@st.composite
def shapes(draw):
    """`(B, C)`, `(B, T, C)` or `(B, T1, T2, C)`, at most `MAX_ELEMENTS`."""
    if keras.backend.backend() == "jax":
        return draw(st.sampled_from(JAX_SHAPES))
    num_classes = draw(st.one_of(st.integers(2, 12), st.integers(2, 5000)))
    budget = MAX_ELEMENTS // num_classes
    shape = [draw(st.integers(1, min(budget, 64)))]
    budget //= shape[0]
    for _ in range(draw(st.integers(0, 2))):
        shape.append(draw(st.integers(1, min(budget, 8))))
        budget //= shape[-1]
    return tuple(shape) + (num_classes,)


@dataclasses.dataclass
class Case:
    """Drawn parameters (`fields`) and the arrays made from them."""

    fields: dict
    targets: np.ndarray
    logits: np.ndarray
    valid: np.ndarray
    ignore_class: object = None

    @property
    def dtype(self):
        return self.fields["dtype"]

    @property
    def delta(self):
        """Delta as the loss sees it: float32 when given as a float32."""
        if self.fields["delta_kind"] == "python":
            return self.fields["delta"]
        return float(np.float32(self.fields["delta"]))

    def delta_arg(self):
        """Delta as the functions get it: a number, NumPy scalar or tensor."""
        kind = self.fields["delta_kind"]
        if kind == "tensor":
            return ops.convert_to_tensor(self.delta, "float32")
        return np.float32(self.delta) if kind == "numpy" else self.delta

    def tensor(self):
        """The logits as a tensor of the drawn dtype."""
        return ops.cast(ops.convert_to_tensor(self.logits), self.dtype)

    def logits64(self):
        """The logits as the loss sees them (rounded to the dtype), in float64;
        ignored positions are zero, as the loss makes them."""
        rounded = to_numpy(self.tensor())
        return np.where(self.valid[..., None], rounded, 0.0)


@st.composite
def sparse_cases(draw, deltas=DELTAS, ignore=True):
    """Integer targets, and logits where about `confident` of the targets
    are near or above the row maximum (as a trained model's), so that
    classes get dropped and positions masked."""
    shape = draw(shapes())
    num_classes = shape[-1]
    ignore_class = None
    if ignore:
        ignore_class = draw(
            st.one_of(
                st.none(),
                st.sampled_from([-1, -100, 0, num_classes - 1, num_classes]),
                st.integers(0, num_classes - 1),
            )
        )
    fields = dict(
        shape=shape,
        dtype=draw(DTYPES),
        target_dtype=draw(st.sampled_from(["int32", "int64"])),
        delta=draw(deltas),
        delta_kind=draw(DELTA_KINDS),
        scale=draw(SCALES),
        integer_valued=draw(st.booleans()),
        confident=draw(RATES),
        neg_inf=draw(RATES),
        ignore_class=ignore_class,
        ignored=draw(RATES) if ignore_class is not None else 0.0,
        seed=draw(SEEDS),
    )
    rng = np.random.default_rng(fields["seed"])
    positions = shape[:-1]
    in_range = ignore_class is not None and 0 <= ignore_class < num_classes
    targets = rng.integers(0, num_classes - in_range, positions)
    if in_range:
        targets += targets >= ignore_class
    valid = rng.random(positions) >= fields["ignored"]
    z = rng.standard_normal(shape)
    boost = z.max(-1) + rng.uniform(-0.5, 1.5, positions)
    if fields["integer_valued"]:
        # Small integers: many exactly equal logits and probabilities.
        z, boost = np.round(2 * z), np.round(2 * boost)
    boosted = rng.random(positions) < fields["confident"]
    is_target = np.arange(num_classes) == targets[..., None]
    z = np.where(is_target & boosted[..., None], boost[..., None], z)
    z = np.clip(fields["scale"] * z, -MAX_LOGIT, MAX_LOGIT)
    z[(rng.random(shape) < fields["neg_inf"]) & ~is_target] = -np.inf
    if ignore_class is not None:
        targets = np.where(valid, targets, ignore_class)
        # Ignored positions may hold anything, even -inf on every class.
        z[~valid & (rng.random(positions) < 0.5)] = -np.inf
    return Case(
        fields,
        targets.astype(fields["target_dtype"]),
        z.astype("float32"),
        valid,
        ignore_class,
    )


@st.composite
def multilabel_cases(draw, deltas=DELTAS):
    """Multi-hot targets with some rows all negative or all positive, and
    logits where about `learned` of the rows have their positives pushed up.
    Negatives (never positives) may be -inf: a legitimate, zero-cost term."""
    shape = draw(shapes())
    fields = dict(
        shape=shape,
        dtype=draw(DTYPES),
        label_dtype=draw(st.sampled_from(["float32", "int32"])),
        delta=draw(deltas),
        delta_kind=draw(DELTA_KINDS),
        scale=draw(SCALES),
        integer_valued=draw(st.booleans()),
        learned=draw(RATES),
        neg_inf=draw(RATES),
        uniform_rows=draw(RATES),
        seed=draw(SEEDS),
    )
    rng = np.random.default_rng(fields["seed"])
    rows = shape[:-1] + (1,)
    positive = rng.random(shape) < rng.random(rows)
    uniform = rng.random(rows) < fields["uniform_rows"]
    positive = np.where(uniform, rng.random(rows) < 0.5, positive)
    s = rng.standard_normal(shape)
    if fields["integer_valued"]:
        s = np.round(2 * s)
    s = s + 2.0 * (positive & (rng.random(rows) < fields["learned"]))
    s = np.clip(fields["scale"] * s, -MAX_LOGIT, MAX_LOGIT)
    s[(rng.random(shape) < fields["neg_inf"]) & ~positive] = -np.inf
    return Case(
        fields,
        positive.astype(fields["label_dtype"]),
        s.astype("float32"),
        np.ones(shape[:-1], bool),
    )


@st.composite
def sample_weights(draw, positions):
    """Weights with zeros: `(weights, weights broadcast to positions)`."""
    kind = draw(WEIGHT_SHAPES)
    zeros = draw(RATES)
    rng = np.random.default_rng(draw(SEEDS))
    weight_shape = positions[:1] if kind == "per_sample" else positions
    weights = rng.random(weight_shape).astype("float32")
    weights[rng.random(weight_shape) < zeros] = 0.0
    full = np.broadcast_to(
        weights.reshape(weight_shape + (1,) * (len(positions) - len(weight_shape))),
        positions,
    )
    if kind == "trailing_unit":
        weights = weights[..., None]
    return weights, full


def keras_masks(seed, shape):
    """A random boolean Keras mask of positions."""
    return np.random.default_rng(seed).random(shape) < 0.7


def loss_tolerance(expected, logits64):
    """Float32 rounding of a loss: relative, plus the cancellation between
    logits as large as the row's largest finite one (up to 6e4)."""
    finite = np.where(np.isfinite(logits64), np.abs(logits64), 0.0)
    return 1e-5 * (1.0 + np.abs(expected)) + 8 * EPS32 * finite.max(-1)


def assert_losses_close(actual, expected, logits64):
    excess = np.abs(actual - expected) - loss_tolerance(expected, logits64)
    assert (excess <= 0).all(), (
        f"{actual.flat[np.argmax(excess)]} vs {expected.flat[np.argmax(excess)]}"
    )


def assert_grads_close(actual, expected, dtype):
    np.testing.assert_allclose(actual, expected, rtol=GRAD_RTOL[dtype], atol=GRAD_ATOL)


def reference_ties(reference_fn, *args):
    """Where the reference's keep test is a tie either decision may take."""
    shape = np.shape(args[1])
    keep_all = reference_fn(*args, tie_keep=np.ones(shape, bool))[2]
    keep_none = reference_fn(*args, tie_keep=np.zeros(shape, bool))[2]
    return keep_all != keep_none


def sparse_order(case):
    """Classes whose logit is at least the target's, at the valid positions:
    at least as probable as the target, they are kept whatever delta."""
    z = case.logits64()
    targets = np.where(case.valid, case.targets, 0)[..., None]
    return (z >= np.take_along_axis(z, targets, -1)) & case.valid[..., None]


def sparse_ambiguous(case):
    """Keep decisions that either way are right: the reference's ties and,
    at delta 0, the classes below a target whose probability is below
    float32's normal range (float32 sees both probabilities as 0, and such
    classes add nothing to the loss or its gradient)."""
    z = case.logits64()
    targets = np.where(case.valid, case.targets, 0)[..., None]
    p_t = np.take_along_axis(reference.softmax(z), targets, -1)
    underflow = (case.delta == 0) & (p_t < TINY32 * z.shape[-1])
    ties = reference_ties(
        reference.sparse_as_softmax, case.targets, z, case.delta, case.ignore_class
    )
    return ties | underflow


def multilabel_order(case):
    """The keep decisions that the logits' order alone makes.

    A negative at least the weakest positive, and a positive at most the
    strongest negative, are kept whatever delta (as are all the terms of a
    row without positives, or without negatives). At delta 0 nothing else is
    kept: the order decides every term, however small the probabilities.
    """
    s = case.logits64()
    positive = case.targets > 0.5
    min_positive = np.min(np.where(positive, s, np.inf), -1, keepdims=True)
    max_negative = np.max(np.where(positive, -np.inf, s), -1, keepdims=True)
    return np.where(
        positive,
        (s <= max_negative) | ~(~positive).any(-1, keepdims=True),
        (s >= min_positive) | ~positive.any(-1, keepdims=True),
    )


def multilabel_reference(case, tie_keep=None):
    # A row of -inf negatives only makes the reference's softmax NaN, unused.
    with np.errstate(invalid="ignore"):
        return reference.multilabel_as_softmax(
            case.targets, case.logits64(), case.delta, tie_keep=tie_keep
        )


def multilabel_given_keep(case, keep):
    """Float64 loss and gradient over the kept terms `keep`."""
    s, positive = case.logits64(), case.targets > 0.5
    negative_loss, negative_grad = reference._logsumexp_with_zero(s, keep & ~positive)
    positive_loss, positive_grad = reference._logsumexp_with_zero(-s, keep & positive)
    return negative_loss + positive_loss, negative_grad - positive_grad


def plain_multilabel_loss(y, s):
    """`log(1 + sum_N exp(s)) + log(1 + sum_P exp(-s))` in float64."""
    positive = np.asarray(y) > 0.5
    zeros = np.zeros(s.shape[:-1] + (1,))
    negatives = np.concatenate([zeros, np.where(positive, -np.inf, s)], -1)
    positives = np.concatenate([zeros, np.where(positive, -s, -np.inf)], -1)
    return np.logaddexp.reduce(negatives, -1) + np.logaddexp.reduce(positives, -1)


def sparse_losses(case, logits, delta=None):
    delta = case.delta_arg() if delta is None else delta
    return sparse_as_softmax_crossentropy(
        case.targets, logits, delta=delta, ignore_class=case.ignore_class
    )


def sparse_keep(case, **kwargs):
    keep, num_masked, num_counted = sparse_as_softmax_mask(
        case.targets, case.tensor(), case.delta_arg(),
        ignore_class=case.ignore_class, **kwargs,
    )
    return to_numpy(keep).astype(bool), int(num_masked), int(num_counted)


def sparse_value_and_grad(case):
    return value_and_grad(lambda x: ops.sum(sparse_losses(case, x)), case.tensor())


def multilabel_losses(case, logits, delta=None):
    delta = case.delta_arg() if delta is None else delta
    return multilabel_as_softmax_crossentropy(case.targets, logits, delta)


def multilabel_keep(case, **kwargs):
    keep, num_masked, num_counted = multilabel_as_softmax_mask(
        case.targets, case.tensor(), case.delta_arg(), **kwargs
    )
    return to_numpy(keep).astype(bool), int(num_masked), int(num_counted)


def multilabel_value_and_grad(case):
    return value_and_grad(lambda x: ops.sum(multilabel_losses(case, x)), case.tensor())


@given(sparse_cases())
def test_sparse_loss_is_bounded_and_matches_reference(case):
    """Finite; 0 <= AS loss <= plain loss; the kept classes, losses and
    gradient match the float64 reference."""
    z = case.tensor()
    losses = sparse_losses(case, z)
    assert keras.backend.standardize_dtype(losses.dtype) == "float32"
    losses = to_numpy(losses)
    plain = to_numpy(sparse_losses(case, z, delta=1.0))
    value, grad = sparse_value_and_grad(case)
    assert np.isfinite(losses).all() and np.isfinite(value)
    assert np.isfinite(grad).all()
    assert (losses >= 0).all()
    assert (losses <= plain).all()

    keep = sparse_keep(case)[0]
    ref_loss, ref_grad, ref_keep, _ = reference.sparse_as_softmax(
        case.targets, case.logits64(), case.delta, case.ignore_class, tie_keep=keep
    )
    # The order's decisions: `test_sparse_keeps_what_the_order_decides`.
    checked = case.valid[..., None] & ~sparse_ambiguous(case) & ~sparse_order(case)
    np.testing.assert_array_equal(keep[checked], ref_keep[checked])
    assert_losses_close(losses, ref_loss, case.logits64())
    assert_grads_close(grad, ref_grad, case.dtype)


# Defect 2: TensorFlow's `exp` rounds equal inputs differently in the
# vectorized body and the tail of a row, so equal logits get unequal p.
@example(
    Case(
        dict(dtype="float32", delta=0.0, delta_kind="python"),
        np.array([0]),
        np.array([[6.5, -5, -3, -8, 1, -4, -3, 4, 6, 3, -6, 5, 6.5]], "float32"),
        np.ones(1, bool),
    )
)
@given(sparse_cases(deltas=st.one_of(st.just(0.0), DELTAS)))
def test_sparse_keeps_what_the_order_decides(case):
    """A class at least as probable as the target (its logit at least the
    target's) is kept whatever delta: the target and the top classes too."""
    keep = sparse_keep(case)[0]
    assert keep[sparse_order(case)].all()


@given(sparse_cases(deltas=st.just(1.0)))
def test_sparse_delta_one_is_softmax_crossentropy(case):
    """delta=1 keeps every class and is Keras's and NumPy's cross-entropy."""
    z = case.tensor()
    losses = to_numpy(sparse_losses(case, z))
    assert sparse_keep(case)[0][case.valid].all()
    z64 = case.logits64()
    expected = reference.softmax_crossentropy(
        np.where(case.valid, case.targets, 0), z64
    )
    assert_losses_close(losses, np.where(case.valid, expected, 0.0), z64)
    keras_losses = to_numpy(
        keras.losses.sparse_categorical_crossentropy(
            case.targets,
            ops.convert_to_tensor(to_numpy(z).astype("float32")),
            from_logits=True,
            ignore_class=case.ignore_class,
        )
    )
    finite = np.isfinite(keras_losses)
    assert_losses_close(losses[finite], keras_losses[finite], z64[finite])


@given(sparse_cases(deltas=SMALL_DELTAS), st.data())
def test_sparse_masked_positions_have_zero_loss_and_gradient(case, data):
    """A position keeping only its target has loss 0 and gradient 0, and the
    mask helper counts such positions among the counted ones."""
    weights, full_weights = data.draw(sample_weights(case.targets.shape))
    keras_mask = keras_masks(case.fields["seed"], case.targets.shape)
    keep, num_masked, num_counted = sparse_keep(
        case, sample_weight=weights, mask=keras_mask
    )
    masked = case.valid & (keep.sum(-1) == 1)
    counted = case.valid & (full_weights != 0) & keras_mask
    assert num_masked == np.sum(masked & counted)
    assert num_counted == np.sum(counted)
    losses = to_numpy(sparse_losses(case, case.tensor()))
    _, grad = sparse_value_and_grad(case)
    assert (losses[masked] == 0).all()
    assert (grad[masked] == 0).all()
    assert (losses[~case.valid] == 0).all() and (grad[~case.valid] == 0).all()


@given(sparse_cases(ignore=False), st.data())
def test_one_hot_equals_sparse(case, data):
    """One-hot targets give exactly the sparse losses, gradients and counts."""
    weights, _ = data.draw(sample_weights(case.targets.shape))
    one_hot_dtype = data.draw(st.sampled_from(["float32", "int32", "float16"]))
    num_classes = case.logits.shape[-1]
    one_hot = (np.arange(num_classes) == case.targets[..., None]).astype(one_hot_dtype)
    z = case.tensor()
    np.testing.assert_array_equal(
        to_numpy(as_softmax_crossentropy(one_hot, z, case.delta_arg())),
        to_numpy(sparse_losses(case, z)),
    )
    one_hot_loss = ASSoftmaxCrossentropy(case.delta)
    sparse_loss = SparseASSoftmaxCrossentropy(case.delta)
    one_hot_value, one_hot_grad = value_and_grad(
        lambda x: one_hot_loss(one_hot, x, sample_weight=weights), z
    )
    sparse_value, sparse_grad = value_and_grad(
        lambda x: sparse_loss(case.targets, x, sample_weight=weights), z
    )
    assert one_hot_value == sparse_value
    np.testing.assert_array_equal(one_hot_grad, sparse_grad)
    one_hot_mask = as_softmax_mask(one_hot, z, case.delta_arg(), sample_weight=weights)
    sparse_mask = sparse_as_softmax_mask(
        case.targets, z, case.delta_arg(), sample_weight=weights
    )
    for a, b in zip(one_hot_mask, sparse_mask):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


@given(sparse_cases())
def test_sparse_class_permutation_invariance(case):
    """Permuting the classes together with the targets changes the losses
    and gradients by rounding only; only ambiguous decisions may change."""
    num_classes = case.logits.shape[-1]
    perm = np.random.default_rng(case.fields["seed"] + 1).permutation(num_classes)
    inverse = np.argsort(perm)
    y = case.targets
    in_range = (y >= 0) & (y < num_classes)
    permuted = dataclasses.replace(
        case,
        targets=np.where(in_range, inverse[np.clip(y, 0, num_classes - 1)], y),
        logits=case.logits[..., perm],
    )
    if case.ignore_class is not None and 0 <= case.ignore_class < num_classes:
        permuted.ignore_class = int(inverse[case.ignore_class])

    def evaluate(c):
        losses = to_numpy(sparse_losses(c, c.tensor()))
        return sparse_keep(c)[0], losses, sparse_value_and_grad(c)[1]

    keep, losses, grad = evaluate(case)
    keep_p, losses_p, grad_p = evaluate(permuted)
    differs = (keep[..., perm] != keep_p) & case.valid[..., None]
    assert not (differs & ~sparse_ambiguous(permuted)).any()
    same = ~differs.any(-1)
    assert_losses_close(losses_p[same], losses[same], case.logits64()[same])
    assert_grads_close(grad_p[same], grad[..., perm][same], case.dtype)


@given(sparse_cases(), st.data())
def test_sparse_loss_class_reduction(case, data):
    """`sum_over_batch_size` with zero weights, `ignore_class` and a Keras
    mask is the weighted sum over the counted positions, as Keras's gives."""
    weights, full_weights = data.draw(sample_weights(case.targets.shape))
    z = case.tensor()
    loss_fn = SparseASSoftmaxCrossentropy(case.delta, ignore_class=case.ignore_class)
    value, grad = value_and_grad(
        lambda x: loss_fn(case.targets, x, sample_weight=weights), z
    )
    assert np.isfinite(value) and np.isfinite(grad).all()
    assert (grad[~case.valid | (full_weights == 0)] == 0).all()

    ref_loss = reference.sparse_as_softmax(
        case.targets, case.logits64(), case.delta, case.ignore_class,
        tie_keep=sparse_keep(case)[0],
    )[0]
    tolerance = loss_tolerance(ref_loss, case.logits64()) * full_weights
    count = max(case.valid.sum(), 1)
    expected = np.sum(ref_loss * full_weights * case.valid) / count
    assert abs(value - expected) <= np.sum(tolerance) / count

    keras_mask = keras_masks(case.fields["seed"], case.targets.shape)
    masked_z = case.tensor()
    set_keras_mask(masked_z, ops.convert_to_tensor(keras_mask))
    value = to_numpy(loss_fn(case.targets, masked_z, sample_weight=weights))
    counted = case.valid & keras_mask
    count = max(counted.sum(), 1)
    expected = np.sum(ref_loss * full_weights * counted) / count
    assert abs(value - expected) <= np.sum(tolerance * counted) / count

    plain = SparseASSoftmaxCrossentropy(1.0, ignore_class=case.ignore_class)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=case.ignore_class
    )
    z32 = ops.convert_to_tensor(to_numpy(z).astype("float32"))
    ours = to_numpy(plain(case.targets, z32, sample_weight=full_weights))
    theirs = to_numpy(keras_loss(case.targets, z32, sample_weight=full_weights))
    if np.isfinite(theirs):
        assert abs(ours - theirs) <= 2 * np.sum(tolerance) / max(case.valid.sum(), 1)


@given(shapes(), SCALES, RATES, DTYPES, st.data())
def test_every_position_ignored_gives_zero(shape, scale, neg_inf, dtype, data):
    """With every target ignored, loss and gradient are 0, never NaN."""
    ignore_class = data.draw(st.sampled_from([-1, 0, shape[-1] - 1, shape[-1]]))
    weights, _ = data.draw(sample_weights(shape[:-1]))
    rng = np.random.default_rng(data.draw(SEEDS))
    z = scale * rng.standard_normal(shape)
    z[rng.random(shape) < neg_inf] = -np.inf
    z = ops.cast(ops.convert_to_tensor(z.astype("float32")), dtype)
    y = np.full(shape[:-1], ignore_class)
    losses = to_numpy(sparse_as_softmax_crossentropy(y, z, ignore_class=ignore_class))
    assert (losses == 0).all()
    loss_fn = SparseASSoftmaxCrossentropy(ignore_class=ignore_class)
    for sample_weight in (None, weights):
        value, grad = value_and_grad(
            lambda x: loss_fn(y, x, sample_weight=sample_weight), z
        )
        assert value == 0 and (grad == 0).all()
    _, num_masked, num_counted = sparse_as_softmax_mask(y, z, ignore_class=ignore_class)
    assert int(num_masked) == 0 and int(num_counted) == 0


@given(multilabel_cases())
def test_multilabel_loss_is_bounded_and_matches_reference(case):
    """Finite; 0 <= AS loss <= plain loss; the kept terms match the float64
    reference, and the losses and gradient those terms give."""
    z = case.tensor()
    losses = multilabel_losses(case, z)
    assert keras.backend.standardize_dtype(losses.dtype) == "float32"
    losses = to_numpy(losses)
    value, grad = multilabel_value_and_grad(case)
    assert np.isfinite(losses).all() and np.isfinite(value)
    assert np.isfinite(grad).all()
    assert (losses >= 0).all()
    z64 = case.logits64()
    plain = to_numpy(multilabel_losses(case, z, delta=1.0))
    # The two sums are shifted by different maxima: equal up to rounding.
    assert (losses <= plain + loss_tolerance(plain, z64)).all()

    keep = multilabel_keep(case)[0]
    ref_keep = multilabel_reference(case, tie_keep=keep)[2]
    # The order's decisions: `test_multilabel_keeps_what_the_order_decides`.
    if case.delta > 0:
        checked = ~multilabel_order(case)
        np.testing.assert_array_equal(keep[checked], ref_keep[checked])
    ref_loss, ref_grad = multilabel_given_keep(case, keep)
    assert_losses_close(losses, ref_loss, z64)
    assert_grads_close(grad, ref_grad, case.dtype)


# Defect 1: the thresholds underflow to -inf at delta 0.
@example(
    Case(
        dict(dtype="float32", delta=0.0, delta_kind="python"),
        np.array([[1.0, 1.0, 0.0]], "float32"),
        np.array([[-12459.109, 13664.635, 4116.305]], "float32"),
        np.ones(1, bool),
    )
)
@example(
    Case(
        dict(dtype="float32", delta=0.0, delta_kind="python"),
        np.array([[1.0, 1.0, 0.0]], "float32"),
        np.array([[10000.0, 9700.0, 9600.0]], "float32"),
        np.ones(1, bool),
    )
)
@given(multilabel_cases(deltas=st.one_of(st.just(0.0), DELTAS)))
def test_multilabel_keeps_what_the_order_decides(case):
    """A negative at least the weakest positive and a positive at most the
    strongest negative are kept; at delta 0 nothing else is."""
    keep = multilabel_keep(case)[0]
    order = multilabel_order(case)
    assert keep[order].all()
    if case.delta == 0:
        np.testing.assert_array_equal(keep, order)


@given(multilabel_cases(deltas=st.just(1.0)))
def test_multilabel_delta_one_is_the_plain_loss(case):
    """delta=1 keeps every term: the plain multi-label loss, in float64."""
    z = case.tensor()
    assert multilabel_keep(case)[0].all()
    losses = to_numpy(multilabel_losses(case, z))
    z64 = case.logits64()
    assert_losses_close(losses, plain_multilabel_loss(case.targets, z64), z64)


@given(multilabel_cases(deltas=SMALL_DELTAS), st.data())
def test_multilabel_masked_samples_have_zero_loss_and_gradient(case, data):
    """A sample keeping no term has loss 0 and gradient 0, and the mask
    helper counts it among the counted samples."""
    weights, full_weights = data.draw(sample_weights(case.targets.shape[:-1]))
    keras_mask = keras_masks(case.fields["seed"], full_weights.shape)
    keep, num_masked, num_counted = multilabel_keep(
        case, sample_weight=weights, mask=keras_mask
    )
    masked = ~keep.any(-1)
    counted = (full_weights != 0) & keras_mask
    assert num_masked == np.sum(masked & counted)
    assert num_counted == np.sum(counted)
    losses = to_numpy(multilabel_losses(case, case.tensor()))
    _, grad = multilabel_value_and_grad(case)
    assert (losses[masked] == 0).all()
    assert (grad[masked] == 0).all()


@given(multilabel_cases())
def test_multilabel_label_permutation_invariance(case):
    """Permuting the labels together with the targets changes the losses
    and gradients by rounding only; only the reference's ties may change."""
    rng = np.random.default_rng(case.fields["seed"] + 1)
    perm = rng.permutation(case.logits.shape[-1])
    permuted = dataclasses.replace(
        case, targets=case.targets[..., perm], logits=case.logits[..., perm]
    )

    def evaluate(c):
        losses = to_numpy(multilabel_losses(c, c.tensor()))
        return multilabel_keep(c)[0], losses, multilabel_value_and_grad(c)[1]

    keep, losses, grad = evaluate(case)
    keep_p, losses_p, grad_p = evaluate(permuted)
    differs = keep[..., perm] != keep_p
    with np.errstate(invalid="ignore"):
        ties = reference_ties(
            reference.multilabel_as_softmax,
            permuted.targets, permuted.logits64(), case.delta,
        )
    assert not (differs & ~ties).any()
    same = ~differs.any(-1)
    assert_losses_close(losses_p[same], losses[same], case.logits64()[same])
    assert_grads_close(grad_p[same], grad[..., perm][same], case.dtype)


@given(multilabel_cases(), st.data())
def test_multilabel_loss_class_reduction(case, data):
    """`sum_over_batch_size` with zero weights and a Keras mask is the
    weighted sum over the counted samples."""
    weights, full_weights = data.draw(sample_weights(case.targets.shape[:-1]))
    z = case.tensor()
    loss_fn = MultiLabelASSoftmaxCrossentropy(case.delta)
    value, grad = value_and_grad(
        lambda x: loss_fn(case.targets, x, sample_weight=weights), z
    )
    assert np.isfinite(value) and np.isfinite(grad).all()
    assert (grad[full_weights == 0] == 0).all()

    ref_loss = multilabel_given_keep(case, multilabel_keep(case)[0])[0]
    tolerance = loss_tolerance(ref_loss, case.logits64()) * full_weights
    expected = np.sum(ref_loss * full_weights) / ref_loss.size
    assert abs(value - expected) <= np.sum(tolerance) / ref_loss.size

    keras_mask = keras_masks(case.fields["seed"], full_weights.shape)
    masked_z = case.tensor()
    set_keras_mask(masked_z, ops.convert_to_tensor(keras_mask))
    value = to_numpy(loss_fn(case.targets, masked_z, sample_weight=weights))
    count = max(keras_mask.sum(), 1)
    expected = np.sum(ref_loss * full_weights * keras_mask) / count
    assert abs(value - expected) <= np.sum(tolerance * keras_mask) / count


# The compiled property uses fixed targets and shapes, so that each backend
# compiles once per loss rather than once per example.
JIT_TARGETS = np.array([[3, -1, 16], [0, 7, -1]])
JIT_LABELS = np.array(
    [[[1, 0, 0, 1, 0, 0, 0, 0, 1], [0] * 9],
     [[1] * 9, [0, 1, 0, 0, 0, 0, 0, 0, 0]],
     [[0, 0, 1, 1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0, 1]]],
    "float32",
)
JIT_DELTA = 0.1


def jit_sparse_loss(logits):
    return ops.sum(
        sparse_as_softmax_crossentropy(JIT_TARGETS, logits, JIT_DELTA, ignore_class=-1)
    )


def jit_multilabel_loss(logits):
    return ops.sum(multilabel_as_softmax_crossentropy(JIT_LABELS, logits, JIT_DELTA))


@pytest.mark.slow
@settings(max_examples=max(4, settings().max_examples // 10))
@given(st.booleans(), SCALES, RATES, SEEDS)
def test_compiled_matches_reference(multilabel, scale, neg_inf, seed):
    """Compiled, the losses and gradients match the float64 reference."""
    rng = np.random.default_rng(seed)
    if multilabel:
        shape, droppable = JIT_LABELS.shape, JIT_LABELS == 0
        ref_fn, targets, kwargs = reference.multilabel_as_softmax, JIT_LABELS, {}
    else:
        shape = JIT_TARGETS.shape + (17,)
        droppable = np.arange(17) != np.maximum(JIT_TARGETS, 0)[..., None]
        ref_fn, targets = reference.sparse_as_softmax, JIT_TARGETS
        kwargs = {"ignore_class": -1}
    z = scale * rng.standard_normal(shape)
    z[droppable & (rng.random(shape) < neg_inf)] = -np.inf
    z = z.astype("float32")
    with np.errstate(invalid="ignore"):
        ref_loss, ref_grad, _, num_ties = ref_fn(targets, z, JIT_DELTA, **kwargs)
    # Compilation may round a tie the other way than eager execution does.
    assume(num_ties == 0)
    value, grad = value_and_grad(
        jit_multilabel_loss if multilabel else jit_sparse_loss, z, jit=True
    )
    tolerance = loss_tolerance(ref_loss, z.astype(np.float64))
    assert abs(value - ref_loss.sum()) <= tolerance.sum()
    assert_grads_close(grad, ref_grad, "float32")
