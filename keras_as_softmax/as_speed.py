"""AS-Speed: `AdaptiveModel`, a `keras.Model` that adapts training to the
masked ratio.

It accumulates gradients over a window of batches sized from the masked
ratio (`keras_as_softmax.accumulation`) and, with `skip_masked`, runs the
backward pass on the samples that need one only (`keras_as_softmax.skipping`,
`keras_as_softmax.sample_buffer`). The training step itself is
backend-specific and lives in `keras_as_softmax.trainers`; this module holds
what the backends share.
"""

import contextlib
import inspect
import warnings

import keras
import numpy as np
from keras import ops
from keras import tree

from keras_as_softmax._keras_private import append_callback
from keras_as_softmax._keras_private import class_weight_to_sample_weights
from keras_as_softmax._keras_private import drop_step_functions
from keras_as_softmax._keras_private import prepend_callback
from keras_as_softmax._keras_private import loss_tracker
from keras_as_softmax._keras_private import train_validation_split
from keras_as_softmax._keras_private import unlocked
from keras_as_softmax.accumulation import GradientAccumulator
from keras_as_softmax.as_softmax import ASLoss
from keras_as_softmax.as_softmax import count_masked
from keras_as_softmax.backend import branch_value
from keras_as_softmax.backend import sum_across_replicas
from keras_as_softmax.pruning import PRUNE_UNTIL
from keras_as_softmax.pruning import PrunableDataset
from keras_as_softmax.pruning import PruningEpochs
from keras_as_softmax.pruning import SamplePruning
from keras_as_softmax.pruning import check_one_device
from keras_as_softmax.pruning import check_pruning
from keras_as_softmax.sample_buffer import BufferedSteps
from keras_as_softmax.sample_buffer import SampleBuffer
from keras_as_softmax.sample_buffer import batch_weights
from keras_as_softmax.sample_buffer import write_rows
from keras_as_softmax.saving import compile_from_saved_config
from keras_as_softmax.skipping import SubBatch
from keras_as_softmax.skipping import TrainingPass
from keras_as_softmax.skipping import ladder
from keras_as_softmax.skipping import needs_backward
from keras_as_softmax.skipping import run_cond
from keras_as_softmax.skipping import SkippingCosts
from keras_as_softmax.skipping import ladder_index
from keras_as_softmax.skipping import selects
from keras_as_softmax.trainers import AdaptiveTrainer


class AdaptiveModel(AdaptiveTrainer):
    """A `keras.Model` mixin that trains with AS-Speed.

    Use it before `keras.Model` in the bases of a subclassed model, call it
    like `keras.Model` with `inputs` and `outputs` for a functional model,
    use `AdaptiveSequential`, or convert a model you already have (e.g. a
    keras-hub task) with `keras_as_softmax.adaptive(model)`. Compile it with
    one AS-Softmax loss. `fit` then logs `masked_ratio` (the fraction of
    counted samples that the loss masks), `accumulation_steps` (the current
    window) and `optimizer_updates`; a window still open when `fit`'s last
    epoch ends is applied. `evaluate` and `predict` are unchanged
    (evaluation logs `masked_ratio` too).

    Args:
        max_accumulation_steps: The largest window, an integer >= 1
            (1 turns accumulation off).
        accumulation_lambda: `lambda >= 0` in the window rule; with 1 the
            window becomes 2 once a third of a batch is masked.
        skip_masked: Whether a training step runs its backward pass on the
            samples that the loss leaves a gradient only (see
            `keras_as_softmax.skipping`): True, False, `"auto"` (skip
            while the step's own timings find it cheaper,
            `skipping.SkippingCosts`), or `"buffer"` (gather those samples
            from several batches into one training pass of a batch's size
            per update, each window at most `max_accumulation_steps`
            batches: `keras_as_softmax.sample_buffer`; under a
            `tf.distribute` strategy it raises, see the README).
        prune_masked: The fraction of the training samples masked when last
            seen that each epoch of `fit` leaves out (no forward pass),
            weighting the others masked then by `1 / (1 - prune_masked)`:
            `keras_as_softmax.pruning`. 0 (the default) turns it off.
        prune_until: The fraction of `fit`'s epochs that prune (0.875);
            the last ones train on every sample.
        prune_seed: The seed of the pruning draws.
        *args, **kwargs: Passed on to `keras.Model`.

    Example:

    >>> from keras_as_softmax import AdaptiveModel, SparseASSoftmaxCrossentropy
    >>> class Classifier(AdaptiveModel, keras.Model):
    ...     def __init__(self, **kwargs):
    ...         super().__init__(**kwargs)
    ...         self.dense = keras.layers.Dense(3)
    ...     def call(self, x):
    ...         return self.dense(x)
    >>> # With lambda 2 every window holds 2 batches, masked or not.
    >>> model = Classifier(max_accumulation_steps=2, accumulation_lambda=2.0)
    >>> model.compile(optimizer="sgd", loss=SparseASSoftmaxCrossentropy())
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.standard_normal((32, 4)), rng.integers(0, 3, 32)
    >>> logs = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    >>> int(logs["accumulation_steps"][-1]), int(logs["optimizer_updates"][-1])
    (2, 2)
    >>> 0 <= logs["masked_ratio"][-1] <= 1
    True

    A functional model: `AdaptiveModel(inputs, outputs)`.

    >>> inputs = keras.Input((4,))
    >>> model = AdaptiveModel(inputs, keras.layers.Dense(3)(inputs))
    >>> type(model).__name__, model.max_accumulation_steps
    ('AdaptiveFunctional', 2)
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        hiding = [
            base
            for base in mro[1 : mro.index(AdaptiveModel)]
            if issubclass(base, keras.Model) and not issubclass(base, AdaptiveModel)
        ]
        if hiding:
            bases = ", ".join(
                base.__name__ for base in cls.__bases__ if base is not AdaptiveModel
            )
            raise TypeError(
                f"`{cls.__name__}` lists `AdaptiveModel` after "
                f"`{hiding[0].__name__}`, a `keras.Model`, so that model's "
                "methods would hide AS-Speed's (a keras-hub task would even "
                "ignore `max_accumulation_steps`). Put `AdaptiveModel` first: "
                f"`class {cls.__name__}(AdaptiveModel, {bases})`, or give a "
                "model you already have AS-Speed with "
                "`keras_as_softmax.adaptive(model)`."
            )

    def __new__(cls, *args, **kwargs):
        if cls is AdaptiveModel:
            if args and isinstance(args[0], keras.Model):
                raise TypeError(
                    "`AdaptiveModel(model)` does not wrap a model: to give "
                    "an existing model (e.g. a keras-hub task) AS-Speed, call "
                    "`keras_as_softmax.adaptive(model, max_accumulation_steps=...)`."
                )
            if not (args or "inputs" in kwargs):
                return object.__new__(cls)  # Keras re-creating the class chain.
            cls = AdaptiveFunctional
        return super(AdaptiveModel, cls).__new__(cls, *args, **kwargs)

    def __init__(
        self,
        *args,
        max_accumulation_steps=2,
        accumulation_lambda=1.0,
        skip_masked=False,
        prune_masked=0.0,
        prune_until=PRUNE_UNTIL,
        prune_seed=None,
        **kwargs,
    ):
        if not isinstance(self, keras.Model):
            raise TypeError(
                "`AdaptiveModel` is a mixin: subclass it together with "
                "`keras.Model` (`class MyModel(AdaptiveModel, keras.Model)`), "
                "call it with `inputs` and `outputs`, or use "
                "`AdaptiveSequential`."
            )
        super().__init__(*args, **kwargs)
        self._create_as_speed_state(
            max_accumulation_steps, accumulation_lambda, skip_masked
        )
        self.configure_pruning(prune_masked, prune_until, prune_seed)

    def _create_as_speed_state(
        self, max_accumulation_steps, accumulation_lambda, skip_masked
    ):
        self.gradient_accumulator = GradientAccumulator(
            max_accumulation_steps, accumulation_lambda
        )
        self.masked_ratio_tracker = keras.metrics.Mean(name="masked_ratio")
        self.skip_masked = False
        self.skipping_costs = None
        self._summing = False
        self._batch_flags = None
        self.sample_pruning = None
        self.configure_skipping(skip_masked)

    def configure_pruning(self, prune_masked, prune_until=PRUNE_UNTIL, prune_seed=None):
        """Turns pruning samples masked when last seen on or off (before
        `fit`; see `keras_as_softmax.pruning`).

        Args:
            prune_masked: The fraction of the samples masked when last seen
                that each epoch leaves out, in `[0, 1)`; 0 turns it off.
            prune_until: The fraction of `fit`'s epochs that prune; the
                others train on every sample with unit weights.
            prune_seed: The seed of the draws (None: from NumPy's global
                generator).

        Example:

        >>> from keras_as_softmax import AdaptiveSequential
        >>> model = AdaptiveSequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> model.configure_pruning(0.5, prune_seed=0)
        >>> {k: v for k, v in model.as_speed_config().items() if "prune" in k}
        {'prune_masked': 0.5, 'prune_until': 0.875, 'prune_seed': 0}
        """
        check_pruning(prune_masked, prune_until)
        with unlocked(self):
            self.sample_pruning = (
                SamplePruning(prune_masked, prune_until, prune_seed)
                if prune_masked
                else None
            )
        drop_step_functions(self)

    def configure_skipping(self, skip_masked):
        """Turns skipping masked samples on or off (before `fit`).

        Args:
            skip_masked: True, False, `"auto"` or `"buffer"`, as
                `AdaptiveModel`'s argument.

        Example:

        >>> from keras_as_softmax import AdaptiveSequential
        >>> model = AdaptiveSequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> model.configure_skipping(True)
        >>> model.skip_masked, model.as_speed_config()["skip_masked"]
        (True, True)
        >>> model.configure_skipping("auto")
        >>> model.skip_masked
        'auto'
        """
        if not (
            isinstance(skip_masked, (bool, np.bool_)) or skip_masked in ("auto", "buffer")
        ):
            raise TypeError(
                "`skip_masked` must be True, False, \"auto\" or \"buffer\"; "
                f"received {skip_masked!r}."
            )
        if skip_masked and not self.skip_masked:
            with unlocked(self):
                self.backward_fraction_tracker = keras.metrics.Mean(
                    name="backward_fraction"
                )
        if skip_masked == "buffer" and getattr(self, "sample_buffer", None) is None:
            with unlocked(self):
                self.sample_buffer = SampleBuffer()
        if isinstance(skip_masked, str):
            self.skip_masked = skip_masked
        else:
            self.skip_masked = bool(skip_masked)
        self.skipping_costs = SkippingCosts() if skip_masked == "auto" else None
        # The step and its choice of pass follow the setting.
        drop_step_functions(self)

    @property
    def max_accumulation_steps(self):
        return self.gradient_accumulator.max_accumulation_steps

    @property
    def accumulation_lambda(self):
        return self.gradient_accumulator.accumulation_lambda

    def as_speed_config(self):
        """The AS-Speed settings, as `get_config` adds them to the model's.

        Example:

        >>> from keras_as_softmax import AdaptiveSequential
        >>> model = AdaptiveSequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> model.as_speed_config()
        {'max_accumulation_steps': 2, 'accumulation_lambda': 1.0, 'skip_masked': False}
        """
        config = {
            "max_accumulation_steps": self.max_accumulation_steps,
            "accumulation_lambda": self.accumulation_lambda,
            "skip_masked": self.skip_masked,
        }
        if self.sample_pruning is not None:
            pruning = self.sample_pruning
            config.update(
                prune_masked=pruning.rate, prune_until=pruning.until, prune_seed=pruning.seed
            )
        return config

    def get_config(self):
        return {**super().get_config(), **self.as_speed_config()}

    def compile_from_config(self, config):
        # What `keras.Model.compile_from_config` does, also for models whose
        # `compile` is their own (keras-hub tasks), which Keras would leave
        # with their default loss and a fresh optimizer when loading.
        compile_from_saved_config(self, config)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        as_loss = self._as_softmax_loss()
        if self._summing:  # The buffer's training pass: see `sample_buffer`.
            with as_loss.summed():
                return super().compute_loss(
                    x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
                )
        with as_loss.recording() as records:
            loss = super().compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
            )
        # The loss's own flags of this batch: one computation serves the
        # loss, the masked ratio, the window and the next step's choice.
        (masked, counted, divisor_shares), = records
        num_masked, num_counted = count_masked(masked, counted)
        num_masked = sum_across_replicas(num_masked)
        num_counted = sum_across_replicas(num_counted)
        self.masked_ratio_tracker.update_state(
            ops.divide_no_nan(
                ops.cast(num_masked, "float32"), ops.cast(num_counted, "float32")
            ),
            sample_weight=ops.cast(num_counted, "float32"),
        )
        if training:
            needs = needs_backward(masked, counted)
            self.gradient_accumulator.record_batch(
                num_masked,
                num_counted,
                ops.sum(ops.cast(needs, "int32")),
                ops.shape(needs)[0],
            )
            self._batch_flags = (needs, divisor_shares)
            if self.sample_pruning is not None and self.sample_pruning.recording:
                self.sample_pruning.record(ops.logical_not(needs))
        return loss

    @contextlib.contextmanager
    def _summed_loss(self):
        """Within it, `compute_loss` sums the AS loss and records nothing:
        the buffer's training pass (`sample_buffer`)."""
        self._summing = True
        try:
            yield
        finally:
            self._summing = False

    def _buffer_loss(self, x, y, y_pred, sample_weight):
        """The buffer pass's loss for the stateful trainers: summed (its
        weights hold the stretch's divisor) and scaled for the optimizer."""
        with self._summed_loss():
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
        return loss if self.optimizer is None else self.optimizer.scale_loss(loss)

    def _count_update(self):
        """Counts a buffer pass's optimizer update; returns the count."""
        updates = self.gradient_accumulator.updates
        updates.assign(updates.value + 1)
        return updates.value

    def _take_batch_flags(self):
        """The last `compute_loss`'s `(needs, divisor_shares)`, per sample."""
        flags, self._batch_flags = self._batch_flags, None
        return flags

    def _buffer_prepare(self, data):
        """A batch as the sample buffer keeps it: `(x, y, weights)`."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        return x, y, batch_weights(x, sample_weight)

    def _buffer_write(self, data, rows, fill):
        """After the selection pass's `compute_loss`: the batch written into
        the buffer's rows, its `needs` and divisor shares."""
        needs, shares = self._take_batch_flags()
        rows = write_rows(rows, tree.flatten(self._buffer_prepare(data)), needs, fill)
        return rows, needs, shares

    def _write_rest(self, data, rows, needs, start):
        """The batch's samples from `start` on that need a backward pass,
        written at the front of the rows: `(rows, needs)`."""
        needs = ops.logical_and(needs, ops.arange(ops.shape(needs)[0]) >= start)
        rows = write_rows(rows, tree.flatten(self._buffer_prepare(data)), needs, 0)
        return rows, needs

    @staticmethod
    def _rest_of(data, start):
        """`(data, start)` for the selection of a batch's rest: in a step that
        runs eagerly, only the rows from `start` on (and 0), saving the
        forward pass of the others; else as given (static shapes)."""
        offset = branch_value(start)
        if offset is None:
            return data, start
        return tree.map_structure(lambda t: None if t is None else t[offset:], data), 0

    def _select_rest(self, data, rows, start):
        """`_write_rest` after a selection pass, for the stateful trainers."""
        data, start = self._rest_of(data, start)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        sub_batch = self._sub_batch(y, self(x, training=False), sample_weight)
        return self._write_rest(data, rows, sub_batch.needs, start)

    def _observe(self, data, rows, fill):
        """The buffer mode's selection pass for the stateful trainers: the
        step's logs, as Keras's step computes them but on the selection
        pass's predictions, and the batch written into the rows."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=False)
        loss = self.compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
        )
        batch_size = ops.shape(next(t for t in tree.flatten(x) if t is not None))[0]
        loss_tracker(self).update_state(loss, sample_weight=batch_size)
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        rows, needs, shares = self._buffer_write(data, rows, fill)
        self._record_backward_rows(ops.sum(ops.cast(needs, "int32")), batch_size)
        return {**logs, **self.gradient_accumulator.logs(True)}, rows, needs, shares

    def _sub_batch(self, y, selection_pred, sample_weight):
        """The `SubBatch` of the samples that the AS loss leaves a gradient,
        from the selection pass's predictions."""
        flags = self._as_softmax_loss().masked_flags(
            tree.flatten(y)[0], tree.flatten(selection_pred)[0], sample_weight
        )
        return SubBatch(needs_backward(*flags), selection_pred)

    def _train_pass(self, x, last_counts, select, run_pass, branch=None):
        """The training step's loss, gradients and metrics, on the whole
        batch or, with `skip_masked`, on the samples that need them.

        Args:
            x: The batch's inputs.
            last_counts: The last training batch's `(needed, samples)`,
                int32 scalars, for the choice of pass (read when `branch` is
                None).
            select: `select() -> SubBatch`: the selection pass (the
                backend's: the model without gradient, in inference mode,
                then `_sub_batch`).
            run_pass: `run_pass(training_pass)`, the backend's forward and
                backward pass for a `skipping.TrainingPass`.
            branch: The index in `ladder(B)` of the pass that a compiled
                step runs, chosen beforehand by `skipping.PassChooser` (0:
                the whole batch; `select` then returns the `SubBatch` it
                was chosen from); None in a step that runs eagerly, which
                chooses here, with a sub-batch of exactly the samples that
                need a backward pass.

        Returns:
            What `run_pass` returns.
        """
        batch_size = ops.shape(next(i for i in tree.flatten(x) if i is not None))[0]
        if not self.skip_masked or branch == 0:
            return run_pass(TrainingPass(batch_size))
        if branch is not None:
            sizes = ladder(batch_size)[1:] + [None]
            return run_pass(TrainingPass(batch_size, select(), sizes[branch - 1]))
        costs = self.skipping_costs
        if costs is not None:
            costs.begin_step()
        if not selects(*(int(branch_value(count)) for count in last_counts), costs):
            if costs is not None:
                costs.ran(0)
            return run_pass(TrainingPass(batch_size))
        sub_batch = select()
        num_needed = int(branch_value(sub_batch.num_needed))
        if costs is not None:
            costs.ran(1 + ladder_index(num_needed, batch_size))
        if num_needed == batch_size:
            return run_pass(TrainingPass(batch_size))
        return run_pass(TrainingPass(batch_size, sub_batch, num_needed or None))

    def _accumulate_or_update(self, grads, cond=run_cond, apply=None):
        """`GradientAccumulator.accumulate_or_update` on the variables (on
        JAX, within a `keras.StatelessScope`); `apply(mean_gradients)` by
        default `optimizer.apply`."""
        accumulator = self.gradient_accumulator
        if apply is None:

            def apply(mean):
                self.optimizer.apply(mean, self.trainable_variables)

        micro_step, window, is_update = accumulator.advance()
        totals, micro_step, updates_added = accumulator.accumulate_or_update(
            grads,
            [total.value for total in accumulator.gradients],
            micro_step,
            window,
            is_update,
            apply,
            cond=cond,
        )
        for total, new_value in zip(accumulator.gradients, totals):
            total.assign(new_value)
        accumulator.micro_step.assign(micro_step)
        accumulator.updates.assign(accumulator.updates.value + updates_added)

    def _record_backward(self, training_pass):
        """Logs, when skipping, how much of the batch went backward."""
        if self.skip_masked:
            self._record_backward_rows(
                training_pass.backward_rows, training_pass.batch_size
            )

    def _record_backward_rows(self, rows, batch_size):
        self.backward_fraction_tracker.update_state(
            ops.cast(rows, "float32") / ops.cast(batch_size, "float32")
        )
        self.gradient_accumulator.sub_batch_size.assign(ops.cast(rows, "int32"))

    def make_train_function(self, force=False):
        self._as_softmax_loss()
        strategy = getattr(self, "distribute_strategy", None)  # TensorFlow's.
        if (
            self.skip_masked == "buffer"
            and strategy is not None
            and strategy.num_replicas_in_sync > 1
        ):
            raise ValueError(
                "`skip_masked=\"buffer\"` runs on one device under "
                "TensorFlow: each replica of a `tf.distribute` strategy would "
                "fill a buffer of its own, so the updates would not be those "
                "of one device. Use `skip_masked=True` with a strategy (every "
                "replica trains the sub-batch its fullest one needs), or the "
                "JAX backend's `keras.distribution`."
            )
        if self.skip_masked == "buffer" and self._as_softmax_loss().reduction not in (
            "sum",
            "sum_over_batch_size",
            "mean",
            "mean_with_sample_weight",
        ):
            raise ValueError(
                "`skip_masked=\"buffer\"` gives each update the loss of the "
                "samples it covers reduced as one batch, so the AS loss needs "
                "one of Keras's reductions to a number (\"sum_over_batch_size\", "
                "\"sum\", \"mean_with_sample_weight\"); received "
                f"reduction={self._as_softmax_loss().reduction!r}."
            )
        if self.skipping_costs is not None:
            self.skipping_costs.reset()  # The time between two `fit`s is no step's.
        if self.trainable_variables:  # Else TensorFlow builds it in the step.
            with self._distribution_scope():
                self.gradient_accumulator.build(self.trainable_variables)
        return super().make_train_function(force=force)

    def make_test_function(self, force=False):
        # Raise before a step runs: on JAX an error inside the first step
        # leaves the model's variables emptied.
        self._as_softmax_loss()
        return super().make_test_function(force=force)

    def fit(self, *args, **kwargs):
        # `optimizer_updates` goes on from the optimizer's own count, which
        # restarts when the model is compiled with a new optimizer.
        if getattr(self, "optimizer", None) is not None:
            # A Python int: on JAX a shared buffer would be donated twice.
            self.gradient_accumulator.updates.assign(
                int(self.optimizer.iterations.numpy())
            )
        fit = super().fit
        signature = inspect.signature(fit)
        if "callbacks" in signature.parameters:
            # `callbacks` may come by position: where, the signature says
            # (a keras-hub task's `fit` has other positional arguments).
            bound = signature.bind(*args, **kwargs)
            arguments = bound.arguments
        else:  # Only in `**kwargs`.
            bound, arguments = None, kwargs
        callbacks = _with_window_flush(arguments.get("callbacks"), self)
        if self.sample_pruning is None:
            arguments["callbacks"] = callbacks
            if bound is not None:
                args, kwargs = bound.args, bound.kwargs
            return fit(*args, **kwargs)
        dataset = self._prunable_data(arguments)
        arguments["callbacks"] = _with_first(
            callbacks, PruningEpochs(dataset, self.sample_pruning), self
        )
        if bound is not None:
            args, kwargs = bound.args, bound.kwargs
        with self._distribution_scope():
            self.sample_pruning.start(len(dataset), dataset.batch_size)
        self.sample_pruning.recording = True
        drop_step_functions(self)  # The step records the flags.
        try:
            with warnings.catch_warnings():
                # A pruned epoch ends before the first (full) epoch's count
                # of batches, which Keras takes for the length of every epoch.
                warnings.filterwarnings("ignore", message="Your input ran out of data")
                return fit(*args, **kwargs)
        finally:
            self.sample_pruning.recording = False
            drop_step_functions(self)

    def _prunable_data(self, arguments):
        """`fit`'s training data as a `PrunableDataset`, in `arguments`
        (which then no longer shuffle or split it)."""
        check_one_device(self, "`prune_masked`")
        if arguments.get("steps_per_epoch") is not None:
            raise ValueError(
                "`prune_masked` makes each epoch as long as the samples it "
                "keeps: leave `steps_per_epoch` unset."
            )
        x = arguments.get("x")
        class_weight = arguments.pop("class_weight", None)
        if isinstance(x, PrunableDataset):
            if class_weight is not None:
                raise ValueError(
                    "With a `PrunableDataset`, give class weights as its "
                    "`sample_weight` (each sample's class weight), not as "
                    "`fit`'s `class_weight`."
                )
            dataset = x
        else:
            if not _is_sample_indexable(x):
                raise ValueError(
                    "`prune_masked` needs training data with a stable sample "
                    "order and length, to know which sample was masked: pass "
                    "arrays (NumPy or tensors, possibly nested) or a "
                    "`keras_as_softmax.PrunableDataset`; received "
                    f"{type(x).__name__}."
                )
            y, sample_weight = arguments.pop("y", None), arguments.pop("sample_weight", None)
            if class_weight is not None:
                if sample_weight is not None:
                    raise ValueError(
                        "`class_weight` and `sample_weight` cannot both be "
                        "given, as in Keras: fold the class weights into "
                        "`sample_weight`."
                    )
                sample_weight = class_weight_to_sample_weights(
                    tree.flatten(y)[0], class_weight
                )
            data = tree.map_structure(_as_indexable, (x, y, sample_weight))
            split = arguments.pop("validation_split", 0.0)
            if split:
                data, validation = train_validation_split(data, split)
                if arguments.get("validation_data") is None:
                    arguments["validation_data"] = validation
            dataset = PrunableDataset(
                *data,
                batch_size=arguments.pop("batch_size", None) or 32,
                shuffle=arguments.get("shuffle", True),
            )
        arguments["x"], arguments["shuffle"] = dataset, False
        return dataset

    def apply_accumulated_gradients(self):
        """Applies the open window's mean gradient now, if it holds any.

        `fit` does this when its last epoch ends (or a callback stops it), so
        no gradient is left unapplied; a custom loop of `train_on_batch`
        calls should do it at its end. With `skip_masked="buffer"` it trains
        on the buffered samples and closes the open stretch.

        Example:

        >>> from keras_as_softmax import AdaptiveSequential
        >>> from keras_as_softmax import SparseASSoftmaxCrossentropy
        >>> model = AdaptiveSequential([keras.Input((4,)), keras.layers.Dense(3)],
        ...                            accumulation_lambda=2.0)  # Windows of 2.
        >>> model.compile(optimizer="sgd", loss=SparseASSoftmaxCrossentropy())
        >>> rng = np.random.default_rng(0)
        >>> for _ in range(3):
        ...     _ = model.train_on_batch(rng.standard_normal((8, 4)),
        ...                              rng.integers(0, 3, 8))
        >>> int(model.optimizer.iterations.numpy())  # The third batch waits.
        1
        >>> model.apply_accumulated_gradients()
        >>> int(model.optimizer.iterations.numpy())
        2
        """
        if self.skip_masked == "buffer":
            self._flush_buffer()
            return
        accumulator = self.gradient_accumulator
        if not accumulator.built or int(accumulator.micro_step.numpy()) == 0:
            return

        def mean_gradients():
            steps = accumulator.micro_step.value
            return [
                total.value / ops.cast(steps, total.dtype)
                for total in accumulator.gradients
            ]

        self._apply_gradients(mean_gradients)
        accumulator.micro_step.assign(0)
        accumulator.updates.assign(accumulator.updates.value + 1)

    def _flush_buffer(self):
        """Trains on the buffered samples and closes the open stretch."""
        buffered = getattr(self, "_buffered_steps", None)
        if buffered is not None:
            self._with_state(buffered.flush)

    def _buffered_steps_for(self, observe, train, select_rest):
        """The host loop of `skip_masked="buffer"` over the trainer's
        compiled passes (see `sample_buffer.BufferedSteps`)."""
        self._buffered_steps = BufferedSteps(
            self.sample_buffer,
            observe,
            train,
            select_rest,
            self.max_accumulation_steps,
            self._buffer_prepare,
        )
        return self._buffered_steps

    def _as_softmax_loss(self):
        """The model's AS loss; raises unless it has exactly one, on one output."""
        losses = tree.flatten(getattr(self, "loss", None))
        if len(losses) != 1 or not isinstance(losses[0], ASLoss):
            raise ValueError(
                "An `AdaptiveModel` must be compiled with a single AS-Softmax "
                "loss (SparseASSoftmaxCrossentropy, ASSoftmaxCrossentropy or "
                "MultiLabelASSoftmaxCrossentropy) on a single output: AS-Speed "
                "sizes its window from that loss's masked samples. Received "
                f"loss={getattr(self, 'loss', None)!r}."
            )
        return losses[0]


class _ApplyOpenWindow(keras.callbacks.Callback):
    """Applies an open window (or trains on the buffered samples) when
    `fit`'s last epoch ends or it is stopped.

    It runs after the user's callbacks (so it sees `EarlyStopping`'s
    decision) and before `History` and Keras's end of training (so `History`
    counts that update, and `use_ema` and restored best weights come after
    it). A `fit` that raises leaves the window open in the saved state, for
    `BackupAndRestore` to resume.

    With `skip_masked="auto"` it also tells `SkippingCosts` how many steps
    are left in `fit`, and drops the timing of each epoch's last step: until
    the next step starts, validation and callbacks run.
    """

    def on_epoch_begin(self, epoch, logs=None):
        costs, steps = self.model.skipping_costs, self.params.get("steps")
        if costs is not None:
            costs.remaining_steps = steps and (self.params["epochs"] - epoch) * steps

    def on_epoch_end(self, epoch, logs=None):
        if self.model.skipping_costs is not None:
            self.model.skipping_costs.reset()
        if epoch + 1 == self.params["epochs"] or self.model.stop_training:
            self.model.apply_accumulated_gradients()
            if logs is not None and "optimizer_updates" in logs:
                # For `History` and the callbacks after this one.
                logs["optimizer_updates"] = int(
                    self.model.gradient_accumulator.updates.numpy()
                )


def _with_first(callbacks, callback, model):
    """`callbacks` (a list or a `CallbackList`) with `callback` first."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callback.set_model(model)
        callback.set_params(callbacks.params)
        prepend_callback(callbacks, callback)
        return callbacks
    return [callback, *callbacks]


def _is_sample_indexable(x):
    leaves = [leaf for leaf in tree.flatten(x) if leaf is not None]
    return bool(leaves) and all(
        hasattr(leaf, "shape") and len(leaf.shape) > 0 for leaf in leaves
    )


def _as_indexable(leaf):
    """An array leaf as `PrunableDataset` indexes it (NumPy; None stays)."""
    if leaf is None or isinstance(leaf, np.ndarray):
        return leaf
    return ops.convert_to_numpy(leaf)


def _with_window_flush(callbacks, model):
    flush = _ApplyOpenWindow()
    if isinstance(callbacks, keras.callbacks.CallbackList):
        # `fit` uses a `CallbackList` as it is: give the flush the model and
        # the parameters that the list's own callbacks got when it was made.
        flush.set_model(model)
        flush.set_params(callbacks.params)
        append_callback(callbacks, flush)
        return callbacks
    return [*(callbacks or []), flush]


@keras.saving.register_keras_serializable(package="keras_as_softmax")
class AdaptiveFunctional(AdaptiveModel, keras.Model):
    """What `AdaptiveModel(inputs, outputs)` builds: a functional model.

    Example:

    >>> inputs = keras.Input((4,))
    >>> model = AdaptiveModel(inputs, keras.layers.Dense(3)(inputs))
    >>> isinstance(model, AdaptiveFunctional), isinstance(model, AdaptiveModel)
    (True, True)
    """


@keras.saving.register_keras_serializable(package="keras_as_softmax")
class AdaptiveSequential(AdaptiveModel, keras.Sequential):
    """`keras.Sequential` that trains with AS-Speed.

    Args:
        layers, trainable, name: As in `keras.Sequential`.
        max_accumulation_steps, accumulation_lambda, skip_masked,
        prune_masked, prune_until, prune_seed: As in `AdaptiveModel`.

    Example:

    >>> from keras_as_softmax import AdaptiveSequential
    >>> from keras_as_softmax import SparseASSoftmaxCrossentropy
    >>> model = AdaptiveSequential([keras.Input((4,)), keras.layers.Dense(3)],
    ...                            max_accumulation_steps=1)  # No accumulation.
    >>> model.compile(optimizer="adam", loss=SparseASSoftmaxCrossentropy())
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.standard_normal((32, 4)), rng.integers(0, 3, 32)
    >>> logs = model.fit(x, y, batch_size=8, epochs=2, verbose=0).history
    >>> [int(updates) for updates in logs["optimizer_updates"]]  # 4 batches an epoch.
    [4, 8]
    >>> sorted(logs)
    ['accumulation_steps', 'loss', 'masked_ratio', 'optimizer_updates']
    """

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        settings = {
            key: config.pop(key)
            for key in ("max_accumulation_steps", "accumulation_lambda")
            if key in config
        }
        skip_masked = config.pop("skip_masked", False)
        pruning = [
            config.pop(key, default)
            for key, default in (
                ("prune_masked", 0.0), ("prune_until", PRUNE_UNTIL), ("prune_seed", None)
            )
        ]
        # `keras.Sequential.from_config` builds the model with its name only.
        model = super().from_config(config, custom_objects=custom_objects)
        model.gradient_accumulator.configure(**settings)
        model.configure_skipping(skip_masked)
        model.configure_pruning(*pruning)
        return model
