"""The paper's sparse baselines: Sparsemax, 1.5-entmax and Sparse-Softmax
(top-k) losses, against float64 references (`tests/baselines_reference.py`).

Values and gradients on random inputs (ties, large logits, 2-D and 3-D,
2 to 1000 classes), eagerly and compiled; the probability maps; Keras's
reductions, sample weights and masks; bfloat16; configs; bad input; a tiny
model's training; and the state of `keras.ops.sparsemax`.
"""

import functools

import keras
import numpy as np
import pytest
from keras import ops
from packaging.version import Version

from keras_as_softmax import baselines
from keras_as_softmax._keras_private import set_keras_mask
from keras_as_softmax.baselines import Entmax15Loss
from keras_as_softmax.baselines import SparsemaxLoss
from keras_as_softmax.baselines import TopKSoftmaxCrossentropy
from keras_as_softmax.baselines import entmax15_loss
from keras_as_softmax.baselines import sparsemax_loss
from keras_as_softmax.baselines import top_k_softmax_crossentropy
from tests import baselines_reference as reference
from tests.helpers import BatchLogs
from tests.helpers import reset_compiled_functions
from tests.helpers import to_numpy
from tests.helpers import value_and_grad

K = 3
# name: (function, reference, class, class kwargs)
LOSSES = {
    "sparsemax": (sparsemax_loss, reference.sparsemax_loss, SparsemaxLoss, {}),
    "entmax15": (entmax15_loss, reference.entmax15_loss, Entmax15Loss, {}),
    "top_k": (
        functools.partial(top_k_softmax_crossentropy, k=K),
        functools.partial(reference.top_k_softmax_crossentropy, k=K),
        TopKSoftmaxCrossentropy,
        {"k": K},
    ),
}
NAMES = list(LOSSES)


def make_case(name):
    """`(targets, float32 logits)` for one of `CASES`."""
    rng = np.random.default_rng(sum(map(ord, name)))
    if name == "2d_c2":
        z = 2 * rng.standard_normal((6, 2))
    elif name == "2d_ties_large_c10":
        # Multiples of 0.5: ties inside, at and below every threshold.
        z = 0.5 * rng.integers(-2, 3, (8, 10))
        z[0] = 1.0
        # Large logits, far apart or close together.
        z[4:7] = 1e4 + 1e3 * rng.standard_normal((3, 10))
        z[7] = 2e4 + rng.standard_normal(10)
    elif name == "2d_c1000":
        z = 3 * rng.standard_normal((3, 1000))
        z[1] *= 1e-3  # Nearly uniform: every class in the support.
        z[2, :50] += 6  # A support of several dozen.
    elif name == "3d_c6":
        z = rng.standard_normal((2, 3, 6))
        z[0, 1] = [1.0, 1.0, 0.5, 0.5, 0.0, -1.0]
        z[1, 2] = 50 * rng.standard_normal(6)
    else:
        raise ValueError(name)
    z = z.astype("float32")
    y = rng.integers(0, z.shape[-1], z.shape[:-1])
    # Some targets at the maximum, as in a partly trained model.
    y = np.where(rng.random(y.shape) < 0.4, z.argmax(-1), y)
    return y, z


CASES = ["2d_c2", "2d_ties_large_c10", "2d_c1000", "3d_c6"]


def check_against_reference(names, y, z, jit=False):
    """Checks the losses `names`, their weighted sum and its gradient (all
    in one function, so that `jit` compiles once) against the references."""
    rng = np.random.default_rng(1)
    ref_losses, weights, ref_value, ref_grad = {}, {}, 0.0, 0.0
    for name in names:
        ref_loss, grad = LOSSES[name][1](y, z.astype(np.float64))
        ref_losses[name] = ref_loss
        # Random per-position weights: the gradient check covers each position.
        weights[name] = rng.random(ref_loss.shape)
        ref_value = ref_value + np.sum(ref_loss * weights[name])
        ref_grad = ref_grad + grad * weights[name][..., None]

    def weighted_sum(logits):
        total = 0.0
        for name in names:
            losses = LOSSES[name][0](y, logits)
            weight = ops.convert_to_tensor(weights[name], losses.dtype)
            total += ops.sum(losses * weight)
        return total

    value, grad = value_and_grad(weighted_sum, z, jit=jit)
    scale = max(1.0, max(float(np.abs(loss).max()) for loss in ref_losses.values()))
    np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=2e-6 * len(names))
    if not jit:
        for name in names:
            losses = to_numpy(LOSSES[name][0](y, z))
            assert losses.shape == y.shape
            np.testing.assert_allclose(
                losses, ref_losses[name], rtol=1e-5, atol=1e-5 * scale
            )


# --- The references themselves ---------------------------------------------


def test_references_match_independent_computations():
    rng = np.random.default_rng(0)
    for num_classes in (2, 3, 7, 50):
        z = np.concatenate(
            [
                rng.standard_normal((20, num_classes)),
                0.5 * rng.integers(-2, 3, (20, num_classes)),
            ]
        )
        y = rng.integers(0, num_classes, len(z))
        p, _ = reference.sparsemax(z)
        np.testing.assert_allclose(p, reference.simplex_projection(z), atol=1e-12)
        np.testing.assert_allclose(
            reference.entmax15(z), reference.entmax15_bisect(z), atol=1e-12
        )
        # Martins & Astudillo's loss is the Fenchel-Young loss of sparsemax.
        target = reference.one_hot(y, num_classes)
        fenchel_young = (1 - np.sum(p**2, -1)) / 2 + np.sum((p - target) * z, -1)
        np.testing.assert_allclose(
            reference.sparsemax_loss(y, z)[0], fenchel_young, atol=1e-12
        )
        # k >= C is softmax cross-entropy.
        top = z.max(-1, keepdims=True)
        log_softmax = z - top - np.log(np.exp(z - top).sum(-1, keepdims=True))
        np.testing.assert_allclose(
            reference.top_k_softmax_crossentropy(y, z, num_classes)[0],
            -np.take_along_axis(log_softmax, y[:, None], -1)[:, 0],
            atol=1e-12,
        )


@pytest.mark.parametrize("name", NAMES)
def test_reference_gradients_are_the_derivatives(name):
    rng = np.random.default_rng(2)
    z = rng.standard_normal((6, 5))  # No ties: each loss is differentiable.
    y = rng.integers(0, 5, 6)
    reference_fn = LOSSES[name][1]
    np.testing.assert_allclose(
        reference_fn(y, z)[1],
        reference.numerical_gradient(reference_fn, y, z),
        atol=1e-6,
    )


# --- Values and gradients ---------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", NAMES)
def test_values_and_gradients_eager(name, case):
    check_against_reference([name], *make_case(case))


def test_values_and_gradients_compiled():
    # The three losses in one compiled function: one compilation.
    reset_compiled_functions()
    check_against_reference(NAMES, *make_case("3d_c6"), jit=True)


def test_known_values():
    # A target outside the top k keeps its loss and gets gradient -1.
    logits = np.array([[3.0, 2.0, 1.0, 0.0]], "float32")
    value, grad = value_and_grad(
        lambda x: ops.sum(top_k_softmax_crossentropy([3], x, k=2)), logits
    )
    np.testing.assert_allclose(value, np.log(np.exp(3) + np.exp(2)), rtol=1e-6)
    softmax = np.exp([3.0, 2.0]) / np.exp([3.0, 2.0]).sum()
    np.testing.assert_allclose(grad, [[*softmax, 0.0, -1.0]], atol=1e-6)
    # Ties at the k-th value share its place, whatever the backend's top_k.
    value, grad = value_and_grad(
        lambda x: ops.sum(top_k_softmax_crossentropy([0], x, k=2)),
        np.array([[2.0, 1.0, 1.0, 1.0]], "float32"),
    )
    np.testing.assert_allclose(value, np.log(np.exp(2) + np.exp(1)) - 2, rtol=1e-6)
    share = np.exp(1) / (np.exp(2) + np.exp(1)) / 3
    np.testing.assert_allclose(
        grad, [[np.exp(2) / (np.exp(2) + np.exp(1)) - 1, share, share, share]],
        atol=1e-6,
    )


@pytest.mark.parametrize("case", CASES)
def test_probabilities_sum_to_one_with_exact_zeros(case):
    _, z = make_case(case)
    shifted = baselines._shifted(ops.convert_to_tensor(z))
    for probs, expected in (
        (
            baselines._sparsemax_threshold_and_probs(shifted)[1],
            reference.sparsemax(z)[0],
        ),
        (baselines._entmax15_probs(shifted), reference.entmax15(z)),
    ):
        probs = to_numpy(probs)
        assert (probs >= 0).all()
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=2e-6)
        np.testing.assert_allclose(probs, expected, atol=2e-6)
        # Exact zeros, where the float64 map has them.
        np.testing.assert_array_equal(probs == 0, expected == 0)
        assert (expected == 0).any()


# --- Keras's conventions ----------------------------------------------------

REDUCTIONS = ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", None]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_reductions_weights_and_masks_as_keras(reduction):
    # With k >= C, Sparse-Softmax is softmax cross-entropy: Keras's own loss
    # must agree on every reduction, sample weight, mask and ignored class.
    rng = np.random.default_rng(3)
    z = rng.standard_normal((2, 3, 6)).astype("float32")  # The shape of "3d_c6".
    y = rng.integers(0, 6, (2, 3))
    y[0, 0] = y[1, 1] = 4
    weights = rng.random((2, 3)).astype("float32")
    ours = TopKSoftmaxCrossentropy(k=6, reduction=reduction)
    ours_ignore = TopKSoftmaxCrossentropy(k=7, ignore_class=4, reduction=reduction)
    keras_ce = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=reduction
    )
    keras_ignore = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=4, reduction=reduction
    )
    for sample_weight in (None, weights, weights[:, :1]):
        np.testing.assert_allclose(
            to_numpy(ours(y, z, sample_weight)),
            to_numpy(keras_ce(y, z, sample_weight)),
            rtol=1e-5,
            atol=1e-6,
        )
    # Keras cannot broadcast (B, 1) weights over a mask on every backend.
    for sample_weight in (None, weights):
        np.testing.assert_allclose(
            to_numpy(ours_ignore(y, z, sample_weight)),
            to_numpy(keras_ignore(y, z, sample_weight)),
            rtol=1e-5,
            atol=1e-6,
        )
    masked = ops.convert_to_tensor(z)
    set_keras_mask(masked, ops.convert_to_tensor(rng.random((2, 3)) < 0.7))
    np.testing.assert_allclose(
        to_numpy(ours(y, masked)), to_numpy(keras_ce(y, masked)), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", NAMES)
def test_ignore_class(name):
    loss_fn, reference_fn, loss_class, kwargs = LOSSES[name]
    y, z = make_case("3d_c6")
    y = np.where(np.arange(3) == 1, -100, y)  # Ignore each middle token.
    valid = y != -100
    ref_loss = reference_fn(np.where(valid, y, 0), z.astype(np.float64))[0]
    losses, grad = value_and_grad(
        lambda x: ops.sum(loss_fn(y, x, ignore_class=-100)), z
    )
    np.testing.assert_allclose(losses, ref_loss[valid].sum(), rtol=1e-5)
    assert (grad[~valid] == 0).all()
    mean = loss_class(**kwargs, ignore_class=-100)(y, z)
    np.testing.assert_allclose(to_numpy(mean), ref_loss[valid].mean(), rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_logits_are_computed_in_float32(name):
    loss_fn, reference_fn, loss_class, kwargs = LOSSES[name]
    y, z = make_case("2d_ties_large_c10")
    rounded = to_numpy(ops.cast(z, "bfloat16"))
    ref_loss, ref_grad = reference_fn(y, rounded)
    losses = loss_fn(y, ops.cast(z, "bfloat16"))
    assert keras.backend.standardize_dtype(losses.dtype) == "float32"
    np.testing.assert_allclose(to_numpy(losses), ref_loss, rtol=1e-6, atol=1e-6)
    _, grad = value_and_grad(
        lambda x: ops.sum(loss_fn(y, ops.cast(x, "bfloat16"))),
        rounded.astype("float32"),
    )
    np.testing.assert_allclose(grad, ref_grad, atol=1e-2)
    # A bfloat16 loss keeps class ids above 256 exact.
    wide = np.zeros((3, 1000), "float32")  # The shape of "2d_c1000".
    wide[:, 999] = 3.0
    ids = np.array([999, 999, 0])
    value = loss_class(**kwargs, dtype="bfloat16")(ids, wide)
    assert keras.backend.standardize_dtype(value.dtype) == "bfloat16"
    expected = reference_fn(ids, wide.astype(np.float64))[0].mean()
    np.testing.assert_allclose(to_numpy(value), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
    loss_class, kwargs = LOSSES[name][2:]
    loss = loss_class(
        **kwargs, ignore_class=0, reduction="sum", name="baseline", dtype="bfloat16"
    )
    config = loss.get_config()
    assert config == {
        "name": "baseline",
        "reduction": "sum",
        "dtype": "bfloat16",
        "ignore_class": 0,
        **kwargs,
    }
    assert loss_class.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert type(restored) is loss_class
    assert restored.get_config() == config
    assert keras.saving.get_registered_name(loss_class) == (
        f"keras_as_softmax>{loss_class.__name__}"
    )
    y, z = make_case("2d_c1000")
    np.testing.assert_allclose(to_numpy(restored(y, z)), to_numpy(loss(y, z)))


# --- Bad input --------------------------------------------------------------


SHAPE_MISMATCH = r"received y_true\.shape=\(3,\) and y_pred\.shape=\(4, 5\)"


@pytest.mark.parametrize("name", NAMES)
def test_bad_input(name):
    loss_fn, _, loss_class, kwargs = LOSSES[name]
    z = np.zeros((4, 5), "float32")
    for call in (loss_fn, loss_class(**kwargs)):
        with pytest.raises(ValueError, match=SHAPE_MISMATCH):
            call(np.zeros(3, "int32"), z)
        with pytest.raises(ValueError, match=r"holds 0\.5, which is not a class id"):
            call(np.array([0.0, 0.5, 1.0, 2.0], "float32"), z)
        with pytest.raises(ValueError, match=r"class id 7, outside \[0, 5\)"):
            call(np.array([0, 7, 1, 2]), z)
        with pytest.raises(TypeError, match="`y_true` must hold class ids"):
            call(np.array([True, False, True, True]), z)
    with pytest.raises(TypeError, match="`y_pred` must hold floating-point"):
        loss_fn(np.zeros(4, "int32"), np.zeros((4, 5), "int32"))
    with pytest.raises(ValueError, match="`y_pred` must have a class axis"):
        loss_fn(np.zeros((), "int32"), np.float32(1.0))


@pytest.mark.parametrize("k", [0, -2, 2.5, "3", True, None, 3.0])
def test_bad_k(k):
    error = ValueError if isinstance(k, int) and not isinstance(k, bool) else TypeError
    z = np.zeros((2, 5), "float32")
    with pytest.raises(error, match="`k` must be a positive int"):
        top_k_softmax_crossentropy([0, 1], z, k=k)
    with pytest.raises(error, match="`k` must be a positive int"):
        TopKSoftmaxCrossentropy(k=k)
    assert TopKSoftmaxCrossentropy(k=np.int64(2)).get_config()["k"] == 2


# --- Training and keras.ops.sparsemax ----------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_training_decreases_the_loss(name):
    loss_class, kwargs = LOSSES[name][2:]
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((320, 8)).astype("float32")
    y = np.argmax(x @ rng.standard_normal((8, 5)), axis=-1)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(5),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=loss_class(**kwargs))
    logs = BatchLogs()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[logs])
    losses = [entry["loss"] for entry in logs.logs]
    assert len(losses) == 20 and np.isfinite(losses).all()
    # The logged loss is the epoch's running mean: it falls as batches do.
    assert losses[-1] < 0.8 * losses[0]


def test_keras_ops_sparsemax_state():
    """`keras.ops.sparsemax` is wrong whenever the support has more than one
    class in every Keras release up to 3.15.1 (keras-team/keras#23425; the
    fix, #23469, was merged on 2026-08-19, after 3.15.1, and is expected in
    the next release). On a newer Keras this asserts that it is right; should
    it still be wrong there, update this test."""
    z = np.array(
        [[0.0, 0.5, 1.0, -1.0], [0.1, 0.2, 0.3, 0.4], [3.0, 0.0, -1.0, -2.0]],
        "float32",
    )
    got = to_numpy(ops.sparsemax(ops.convert_to_tensor(z)))
    expected = reference.sparsemax(z)[0]
    np.testing.assert_allclose(got[2], expected[2], atol=1e-6)  # Support 1: right.
    if Version(keras.version()) <= Version("3.15.1"):
        np.testing.assert_allclose(
            got, reference.keras_sparsemax_before_fix(z), atol=1e-6
        )
        assert np.abs(got[:2].sum(-1) - 1).min() > 0.1
        assert not np.allclose(got[:2], expected[:2], atol=1e-3)
    else:
        np.testing.assert_allclose(got, expected, atol=1e-6)
