"""The fused AS-Softmax loss against the unfused one at large vocabularies.

Per backend and vocabulary, on the same inputs: the time and the peak memory
of one forward+backward pass (gradients with respect to the hidden states and
the kernel) of the mean loss over `--tokens` positions,

- unfused: `sparse_as_softmax_crossentropy(y, hidden @ kernel, delta)`, the
  logits materialised (at `delta=1` the same function is plain softmax
  cross-entropy);
- fused: `linear_sparse_as_softmax_crossentropy(y, hidden, kernel, delta)`,
  per-position losses (its backward pass computes the logits again);
- fused Loss: `LinearSparseASSoftmaxCrossentropy(kernel, delta=delta)(y,
  hidden)`, the mean as a model trains with it (it knows its weights before
  the loss, and computes the gradient in the forward pass).

Cases: delta 1 (nothing can be masked), and delta 0.1 with 0 %, 50 %, 75 %
and 90 % of the rows masked (those rows' hidden state points along their
target's kernel column, 20 logits above the rest; the others are random with
random targets). The `masked` column gives the fraction the loss masks.

Each backend runs the step as Keras trains by default on a CPU:
`jax.jit(jax.grad(...))`, `tf.function` around a `GradientTape` (no XLA;
`--jit-compile` for XLA), eager PyTorch (`--jit-compile`: `torch.compile`).
Every (loss, vocabulary) pair runs in a process of its own, so that its peak
memory is its own; the two losses' processes alternate, `--repeats` times,
and the table gives the fastest call and the spread (fastest-slowest) over the
repeats, after one untimed call where the function compiles (TensorFlow,
`torch.compile`; on JAX it is compiled ahead of time, and eager PyTorch has
nothing to compile). Memory is measured the same way for both losses on
every backend: the growth of the process's peak resident memory over a
function's first call (`VmHWM`, reset just before it through
`/proc/self/clear_refs`, minus `VmRSS` then, with the inputs in place; on
JAX after compiling ahead of time, elsewhere including the tracing of that
call), the largest over the cases and repeats; "temporaries" are that growth less the size of the two
gradients returned (the same for both losses). On JAX the table also gives XLA's own count
of temporary buffers (`memory_analysis().temp_size_in_bytes`).

With `--causal-lm` it instead trains one step of a keras-hub
`GPT2CausalLM` with a tiny random backbone (2 layers, hidden size 64) and a
262,144-token vocabulary, converted by `fuse_output_projection`, on
`--batch-size` x `--sequence-length` random tokens (8 x 1024: the float32
logits alone would take 8.6 GB), and prints the process's peak resident
memory (`VmHWM`) after the step and before it.

    python -m benchmarks.large_vocabulary --backend jax
        [--vocabularies 32768 131072] [--tokens 8192] [--hidden 768]
        [--repeats 2] [--chunk-size N] [--jit-compile] [--quick]
        [--cases 1.0/0.0 0.1/0.75]
    python -m benchmarks.large_vocabulary --backend jax --causal-lm
        [--batch-size 8] [--sequence-length 1024]
"""

from benchmarks import startup

startup.load_keras()

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import tables  # noqa: E402
from keras_as_softmax import LinearSparseASSoftmaxCrossentropy  # noqa: E402
from keras_as_softmax import linear_sparse_as_softmax_crossentropy  # noqa: E402
from keras_as_softmax import sparse_as_softmax_crossentropy  # noqa: E402
from keras_as_softmax.linear_as_softmax import default_chunk_size  # noqa: E402
from keras_as_softmax.linear_as_softmax import linear_losses_and_masked  # noqa: E402

CASES = ((1.0, 0.0), (0.1, 0.0), (0.1, 0.5), (0.1, 0.75), (0.1, 0.9))
LOSSES = ("unfused", "fused", "fused Loss")
GIB = 2.0**30


def _case(text):
    """`"0.1/0.75"` -> `(0.1, 0.75)`, one of `CASES`."""
    try:
        case = tuple(float(part) for part in text.split("/"))
    except ValueError:
        case = None
    if case not in CASES:
        choices = " ".join(f"{delta}/{fraction}" for delta, fraction in CASES)
        raise argparse.ArgumentTypeError(f"{text!r} is not a case; choose from {choices}")
    return case


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=startup.BACKENDS)
    parser.add_argument("--vocabularies", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--jit-compile", action="store_true")
    parser.add_argument("--cases", nargs="+", type=_case, default=list(CASES),
                        metavar="DELTA/MASKED",
                        help="the cases to run, e.g. 1.0/0.0 0.1/0.75 (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one repeat")
    parser.add_argument("--causal-lm", action="store_true")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sequence-length", type=int, default=1024)
    parser.add_argument("--worker", nargs=2, metavar=("LOSS", "VOCABULARY"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.vocabularies, args.tokens, args.hidden, args.repeats = [512], 256, 32, 1
        args.batch_size, args.sequence_length = 2, 16
    return args


def inputs(tokens, hidden_size, vocabulary, masked_fraction, seed=0):
    """`(targets, hidden, kernel)` as NumPy arrays, the first
    `masked_fraction` of the rows confident (masked at delta 0.1)."""
    rng = np.random.default_rng(seed)
    kernel = (rng.standard_normal((hidden_size, vocabulary)) / np.sqrt(hidden_size))
    hidden = rng.standard_normal((tokens, hidden_size))
    targets = rng.integers(0, vocabulary, tokens)
    confident = int(round(masked_fraction * tokens))
    columns = kernel[:, targets[:confident]].T
    hidden[:confident] = 20.0 * columns / np.sum(columns**2, axis=1, keepdims=True)
    return targets.astype("int32"), hidden.astype("float32"), kernel.astype("float32")


def gradient_function(loss, delta, chunk_size, jit_compile):
    """The backend's compiled (or eager) `(targets, hidden, kernel) ->
    (d mean loss / d hidden, d / d kernel)`."""
    from keras import ops

    def mean_loss(hidden, kernel, targets):
        if loss == "fused Loss":
            return LinearSparseASSoftmaxCrossentropy(
                kernel, delta=delta, chunk_size=chunk_size
            )(targets, hidden)
        if loss == "fused":
            losses = linear_sparse_as_softmax_crossentropy(
                targets, hidden, kernel, delta, chunk_size=chunk_size
            )
        else:
            losses = sparse_as_softmax_crossentropy(
                targets, ops.matmul(hidden, kernel), delta
            )
        return ops.mean(losses)

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(jax.grad(mean_loss, argnums=(0, 1)))
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=jit_compile)
        def grads(hidden, kernel, targets):
            with tf.GradientTape() as tape:
                tape.watch((hidden, kernel))
                value = mean_loss(hidden, kernel, targets)
            return tape.gradient(value, (hidden, kernel))

        return grads
    import torch

    forward = torch.compile(mean_loss) if jit_compile else mean_loss

    def grads(hidden, kernel, targets):
        hidden, kernel = (x.requires_grad_(True) for x in (hidden, kernel))
        return torch.autograd.grad(forward(hidden, kernel, targets), (hidden, kernel))

    return grads


def _block(values):
    """Waits for `values` (reads one number from each)."""
    for value in values:
        keras.ops.convert_to_numpy(keras.ops.sum(value))


def _resident_gib(field):
    """`VmRSS` (now) or `VmHWM` (the peak since `_reset_peak`), in GiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / GIB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak():
    """Sets the process's peak resident memory to its current one (Linux)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def worker(args, loss, vocabulary):
    """Times each case once in this process (after one untimed call of each
    function where it compiles: not on JAX, compiled ahead of time, nor on
    eager PyTorch); prints one JSON line."""
    from keras import ops

    chunk_size = args.chunk_size or default_chunk_size(vocabulary)
    result = {"times": {}, "masked": {}, "xla_temp_gib": None}
    case_inputs = {}
    for delta, fraction in args.cases:
        if fraction not in case_inputs:
            case_inputs[fraction] = tuple(
                ops.convert_to_tensor(x)
                for x in inputs(args.tokens, args.hidden, vocabulary, fraction)
            )
    compiled = {}
    result["peak_gib"] = 0.0
    for delta, fraction in args.cases:
        targets, hidden, kernel = case_inputs[fraction]
        # The peak is measured from before each function's first call, so
        # that what that call allocates and its allocator keeps counts,
        # whatever the later calls reuse.
        _reset_peak()
        resident = _resident_gib("VmRSS")
        if delta not in compiled:
            compiled[delta] = gradient_function(loss, delta, chunk_size, args.jit_compile)
            if keras.backend.backend() == "jax":
                lowered = compiled[delta].lower(hidden, kernel, targets).compile()
                temp = lowered.memory_analysis().temp_size_in_bytes / GIB
                result["xla_temp_gib"] = max(result["xla_temp_gib"] or 0.0, temp)
                compiled[delta] = lowered
                _reset_peak()
                resident = _resident_gib("VmRSS")
            elif args.jit_compile or keras.backend.backend() == "tensorflow":
                _block(compiled[delta](hidden, kernel, targets))  # Compiles.
        start = time.perf_counter()
        _block(compiled[delta](hidden, kernel, targets))
        result["times"][f"{delta}/{fraction}"] = time.perf_counter() - start
        result["peak_gib"] = max(
            result["peak_gib"], _resident_gib("VmHWM") - resident
        )
        _, masked = linear_losses_and_masked(  # Every 8th row: 1024 rows.
            targets[::8], hidden[::8], delta, kernel=kernel, chunk_size=chunk_size
        )
        result["masked"][f"{delta}/{fraction}"] = float(
            np.mean(ops.convert_to_numpy(masked))
        )
    result["chunk_size"] = chunk_size
    print(json.dumps(result), flush=True)


def run_worker(args, loss, vocabulary):
    command = [sys.executable, "-m", "benchmarks.large_vocabulary",
               "--backend", keras.backend.backend(), "--worker", loss, str(vocabulary),
               "--tokens", str(args.tokens), "--hidden", str(args.hidden),
               "--cases", *(f"{delta}/{fraction}" for delta, fraction in args.cases)]
    if args.chunk_size:
        command += ["--chunk-size", str(args.chunk_size)]
    if args.jit_compile:
        command.append("--jit-compile")
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def causal_lm_step(args):
    """Trains one step of a fused tiny GPT-2 with a 256k vocabulary; prints
    the peak resident memory before and after it."""
    import keras_hub

    from keras_as_softmax import LinearSparseASSoftmaxCrossentropy
    from keras_as_softmax import fuse_output_projection

    vocabulary = 512 if args.quick else 262144
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary, num_layers=2, num_heads=2, hidden_dim=64,
        intermediate_dim=128, max_sequence_length=args.sequence_length,
    )
    lm = fuse_output_projection(keras_hub.models.GPT2CausalLM(backbone))
    lm.compile(optimizer="adam", loss=LinearSparseASSoftmaxCrossentropy(delta=0.1))
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.sequence_length)
    x = {"token_ids": rng.integers(0, vocabulary, shape).astype("int32"),
         "padding_mask": np.ones(shape, "int32")}
    y = rng.integers(0, vocabulary, shape).astype("int32")
    before = _resident_gib("VmHWM")
    start = time.perf_counter()
    logs = lm.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0).history
    seconds = time.perf_counter() - start
    print(f"GPT2CausalLM, vocabulary {vocabulary}, hidden 64, 2 layers, "
          f"{args.batch_size} x {args.sequence_length} tokens, one step: "
          f"loss {logs['loss'][-1]:.3f}, {seconds:.1f} s (compilation included); "
          f"peak resident memory {before:.2f} GiB before the step, "
          f"{_resident_gib('VmHWM'):.2f} GiB after "
          f"(float32 logits alone: {4 * vocabulary * shape[0] * shape[1] / 1e9:.1f} GB)")
    print("reproduce: python -m benchmarks.large_vocabulary --backend "
          f"{keras.backend.backend()} --causal-lm --batch-size {args.batch_size} "
          f"--sequence-length {args.sequence_length}")


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args, args.worker[0], int(args.worker[1]))
    if args.causal_lm:
        return causal_lm_step(args)
    backend = keras.backend.backend()
    mode = {"jax": "jit", "tensorflow": "xla" if args.jit_compile else "graph",
            "torch": "compile" if args.jit_compile else "eager"}[backend]
    print(f"{backend} ({mode}), {platform.processor() or platform.machine()}, "
          f"{args.tokens} tokens x {args.hidden} hidden, float32", flush=True)
    time_rows, memory_rows = [], []
    for vocabulary in args.vocabularies:
        runs = {loss: [] for loss in LOSSES}
        for repeat in range(args.repeats):
            for loss in LOSSES[::-1] if repeat % 2 else LOSSES:
                runs[loss].append(run_worker(args, loss, vocabulary))
                print(f"  V={vocabulary} repeat {repeat + 1} {loss}: "
                      f"{sum(runs[loss][-1]['times'].values()):.1f} s", flush=True)
        time_rows += _time_rows(vocabulary, runs, args.cases)
        gradients_gib = 4 * args.hidden * (args.tokens + vocabulary) / GIB
        memory_rows.append(_memory_row(vocabulary, runs, gradients_gib))
    print()
    print("\n".join(tables.markdown_table(
        ["V", "delta", "masked", "unfused s", "fused s", "fused Loss s",
         "fused/unfused", "fused Loss/unfused"], time_rows)))
    header = ["V", "peak growth unfused GiB", "fused GiB", "fused Loss GiB",
              "temporaries unfused GiB", "fused GiB", "fused Loss GiB", "ratios"]
    if backend == "jax":
        header += ["XLA temporaries unfused GiB", "fused GiB", "fused Loss GiB", "ratios"]
    print()
    print("\n".join(tables.markdown_table(header, memory_rows)))
    chunk = args.chunk_size or "default"
    print(f"\nchunk size: {chunk}; times: fastest of {args.repeats} "
          "(spread fastest-slowest); memory: peak over the repeats")
    print("reproduce: python -m benchmarks.large_vocabulary --backend "
          f"{backend} --vocabularies {' '.join(map(str, args.vocabularies))} "
          f"--tokens {args.tokens} --hidden {args.hidden} --repeats {args.repeats}"
          + (f" --chunk-size {args.chunk_size}" if args.chunk_size else "")
          + ("" if args.cases == list(CASES) else " --cases " + " ".join(
              f"{delta}/{fraction}" for delta, fraction in args.cases))
          + (" --jit-compile" if args.jit_compile else ""))


def _time_rows(vocabulary, runs, cases):
    rows = []
    for delta, fraction in cases:
        key = f"{delta}/{fraction}"
        times = {loss: [run["times"][key] for run in runs[loss]] for loss in LOSSES}
        fastest = {loss: min(times[loss]) for loss in LOSSES}
        rows.append([
            vocabulary, delta, f"{runs['fused'][0]['masked'][key]:.2f}",
            *(f"{fastest[loss]:.2f} ({max(times[loss]) - fastest[loss]:.2f})"
              for loss in LOSSES),
            *(f"{fastest[loss] / fastest['unfused']:.2f}" for loss in LOSSES[1:]),
        ])
    return rows


def _memory_row(vocabulary, runs, gradients_gib):
    """Peak growth, and temporaries: the peak growth less the gradients
    returned (the same for both losses)."""
    peak = [max(run["peak_gib"] for run in runs[loss]) for loss in LOSSES]
    temporaries = [max(value - gradients_gib, 1e-9) for value in peak]
    row = [vocabulary, *(f"{value:.2f}" for value in peak),
           *(f"{value:.2f}" for value in temporaries), _ratios(temporaries)]
    if runs["fused"][0]["xla_temp_gib"] is not None:
        temps = [runs[loss][0]["xla_temp_gib"] for loss in LOSSES]
        row += [*(f"{value:.3f}" for value in temps), _ratios(temps)]
    return row


def _ratios(values):
    """"1/a, 1/b": the unfused value over each fused one."""
    return ", ".join(f"1/{values[0] / value:.1f}" for value in values[1:])


if __name__ == "__main__":
    main()
