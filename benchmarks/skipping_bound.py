"""Skipping masked samples against its bound, per epoch, in one run.

An exact skipping step costs at least its selection pass (the model without
gradient over the batch) plus forward and backward over the samples that need
a backward pass. This trains the Fashion-MNIST CNN of `examples.fashion_mnist`
with AS-Softmax (`--delta`) until at least `--masked` of its training samples
are masked, then times, from those weights and alternating within each
repeat (order rotated by one per repeat):

- AS-Softmax: a plain `keras.Model`, every sample back-propagated;
- skipping, window 1: `adaptive(model, max_accumulation_steps=1,
  skip_masked=True)`;
- AS-Speed + skipping: the same with `max_accumulation_steps=2`;
- auto skipping, window 1: `skip_masked="auto"` (it skips while its own
  timings find skipping cheaper);
- buffer: `skip_masked="buffer"` with `max_accumulation_steps=--buffer-window`
  (the needed samples of several batches in one training pass);
- the bounds' parts: `s`, `predict` over the epoch's batches (the
  selection pass, with the same batch size); `c(n)`, the plain model trained
  on only the samples of each batch that need a backward pass, padded to the
  size the skipping step sends backward (the smallest of the ladder's sizes on
  a compiled backend, the samples themselves on eager PyTorch); `c(N)`, the
  plain model trained on the epoch's needed samples packed into full batches
  (the buffer's training passes). A per-batch step's bound is `s + c(n)`, the
  buffer's `s + c(N)`.

Every timed epoch starts from the same weights. The table gives each one's
fastest epoch over the repeats and the spread (fastest-slowest), the ratio of
AS-Softmax's fastest epoch to it, and for the skipping rows the ratio of their
fastest epoch to the bound `s + c(n)` (1.00 is the bound itself), and the
compilation (the first, warm-up epoch minus the fastest).

    python -m benchmarks.skipping_bound --backend tensorflow [--jit-compile]
        [--train-size 12000] [--batch-size 64] [--masked 0.85] [--repeats 5]
        [--buffer-window 16]
"""

from benchmarks import startup

startup.load_keras()  # `--backend` first, then Keras without start-up logs.

import argparse  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import tables  # noqa: E402
from examples import fashion_mnist  # noqa: E402
from keras_as_softmax import SparseASSoftmaxCrossentropy  # noqa: E402
from keras_as_softmax import adaptive  # noqa: E402
from keras_as_softmax.skipping import ladder  # noqa: E402

AS_SOFTMAX = "AS-Softmax"
SKIPPING = "skipping, window 1"
AS_SPEED_SKIPPING = "AS-Speed + skipping (window <= 2)"
AUTO = "auto skipping, window 1"
BUFFER = "buffer"
SELECTION = "s: selection pass (predict)"
NEEDED_BACKWARD = "c(n): fwd+bwd of the needed samples"
PACKED_BACKWARD = "c(N): fwd+bwd of the needed samples, packed"


class EpochTimer(keras.callbacks.Callback):
    """Seconds from an epoch's (or `predict`'s) first batch to its end."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start

    on_predict_begin = on_epoch_begin

    def on_predict_end(self, logs=None):
        self.seconds = time.perf_counter() - self.start


class NeededSamples(keras.utils.PyDataset):
    """Per batch of the epoch, the samples that need a backward pass, padded
    with masked ones to `size(needed)` rows; batches that need none are left
    out. Without `size`, the epoch's needed samples in full batches."""

    def __init__(self, x, y, needs, batch_size, size=None):
        super().__init__()
        self.batches = []
        if size is None:  # Packed: all needed samples, in full batches.
            needed = np.flatnonzero(needs)
            for start in range(0, len(needed), batch_size):
                picked = needed[start : start + batch_size]
                self.batches.append((x[picked], y[picked]))
            return
        for start in range(0, len(x), batch_size):
            rows = np.arange(start, min(start + batch_size, len(x)))
            order = rows[np.argsort(~needs[rows], kind="stable")]
            count = int(needs[rows].sum())
            if count:
                picked = order[: size(count, len(rows))]
                self.batches.append((x[picked], y[picked]))

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


def backward_size(compiled):
    """The rows a skipping step sends backward for `needed` of `batch`."""
    if not compiled:
        return lambda needed, batch: needed
    return lambda needed, batch: min(s for s in ladder(batch) if s >= needed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", help="the Keras backend (default: KERAS_BACKEND)")
    parser.add_argument("--jit-compile", action="store_true",
                        help="XLA on TensorFlow, torch.compile on PyTorch "
                        "(JAX always jits)")
    parser.add_argument("--train-size", type=int, default=12000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--masked", type=float, default=0.85,
                        help="pretrain until this fraction is masked (default 0.85)")
    parser.add_argument("--max-pretrain-epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--buffer-window", type=int, default=16,
                        help="the buffer's max_accumulation_steps (default 16)")
    args = parser.parse_args()
    backend = keras.backend.backend()
    jit_compile = True if backend == "jax" else args.jit_compile
    compiled = backend != "torch" or jit_compile

    (x, y), _ = fashion_mnist.load_data(train_size=args.train_size)
    loss = SparseASSoftmaxCrossentropy(delta=args.delta)

    def compiled_model(model):
        model.compile(optimizer="adam", loss=loss, jit_compile=jit_compile)
        return model

    def masked_samples(model):
        """Per training sample, whether the loss masks it (inference mode,
        as the selection pass sees it)."""
        masked, _ = loss.masked_flags(y, model.predict(x, batch_size=1024, verbose=0))
        return keras.ops.convert_to_numpy(masked)

    keras.utils.set_random_seed(0)
    plain = compiled_model(fashion_mnist.build_model())
    for epoch in range(args.max_pretrain_epochs):
        plain.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)
        masked = masked_samples(plain)
        print(f"pretraining epoch {epoch + 1}: {masked.mean():.1%} masked", flush=True)
        if masked.mean() >= args.masked:
            break
    weights = plain.get_weights()
    needs = ~masked

    def skipping_model(window, skip_masked=True):
        model = fashion_mnist.build_model()
        return compiled_model(adaptive(model, max_accumulation_steps=window,
                                       skip_masked=skip_masked))

    # Fresh models (the pretrained one has compiled its step already), so
    # that the first timed epoch shows each one's compilation.
    models = {AS_SOFTMAX: compiled_model(fashion_mnist.build_model()),
              SKIPPING: skipping_model(1), AS_SPEED_SKIPPING: skipping_model(2),
              AUTO: skipping_model(1, "auto"),
              BUFFER: skipping_model(args.buffer_window, "buffer")}
    needed = {
        NEEDED_BACKWARD: NeededSamples(x, y, needs, args.batch_size, backward_size(compiled)),
        PACKED_BACKWARD: NeededSamples(x, y, needs, args.batch_size),
    }
    sub_batch = compiled_model(fashion_mnist.build_model())

    def epoch(name):
        timer = EpochTimer()
        if name == SELECTION:
            plain.set_weights(weights)
            plain.predict(x, batch_size=args.batch_size, verbose=0, callbacks=[timer])
        elif name in needed:
            sub_batch.set_weights(weights)
            sub_batch.fit(needed[name], epochs=1, verbose=0, shuffle=False,
                          callbacks=[timer])
        else:
            models[name].set_weights(weights)
            models[name].fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0,
                             shuffle=False, callbacks=[timer])
        return timer.seconds

    names = [AS_SOFTMAX, SKIPPING, AS_SPEED_SKIPPING, AUTO, BUFFER, SELECTION,
             NEEDED_BACKWARD, PACKED_BACKWARD]
    compile_seconds = {name: epoch(name) for name in names}  # Warm-up: compiles.
    seconds = {name: [] for name in names}
    for repeat in range(args.repeats):
        order = names[repeat % len(names):] + names[:repeat % len(names)]
        for name in order:
            seconds[name].append(epoch(name))
        print(f"repeat {repeat + 1}: " + ", ".join(
            f"{name.split(':')[0]} {seconds[name][-1]:.2f} s" for name in names), flush=True)

    fastest = {name: min(values) for name, values in seconds.items()}
    bound = fastest[SELECTION] + fastest[NEEDED_BACKWARD]
    packed_bound = fastest[SELECTION] + fastest[PACKED_BACKWARD]
    bounds = {SKIPPING: bound, AS_SPEED_SKIPPING: bound, AUTO: bound, BUFFER: packed_bound}
    rows = []
    for name in names:
        ratio = fastest[AS_SOFTMAX] / fastest[name]
        to_bound = f"{fastest[name] / bounds[name]:.2f}" if name in bounds else "-"
        label = f"{name}, window <= {args.buffer_window}" if name == BUFFER else name
        rows.append([label, f"{fastest[name]:.2f}",
                     f"{min(seconds[name]):.2f}-{max(seconds[name]):.2f}",
                     f"{ratio:.2f}", to_bound,
                     f"{compile_seconds[name] - fastest[name]:.1f}"])
    for label, value in (("bound s + c(n)", bound), ("buffer's bound s + c(N)", packed_bound)):
        rows.append([label, f"{value:.2f}", "-", f"{fastest[AS_SOFTMAX] / value:.2f}",
                     "1.00", "-"])
    mode = {"tensorflow": "XLA" if jit_compile else "graph", "jax": "jit",
            "torch": "torch.compile" if jit_compile else "eager"}[backend]
    print(f"\n{backend} ({mode}), {len(x)} Fashion-MNIST images, batch {args.batch_size}, "
          f"{masked.mean():.1%} masked ({int(needs.sum())} samples need a backward pass); "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"keras {keras.__version__}, {startup.device_description()}")
    header = ["epoch", "fastest s", f"spread over {args.repeats}", "AS-Softmax / this",
              "this / bound", "compile s"]
    print("\n".join(tables.markdown_table(header, rows)))
    command = ["python -m benchmarks.skipping_bound", f"--backend {backend}",
               *(["--jit-compile"] if args.jit_compile else []),
               f"--train-size {args.train_size}", f"--batch-size {args.batch_size}",
               f"--delta {args.delta}", f"--masked {args.masked}", f"--repeats {args.repeats}",
               f"--buffer-window {args.buffer_window}"]
    print(f"\nreproduce: {' '.join(command)}")


if __name__ == "__main__":
    main()
