"""The comparison's plot: six panels (nine with pruning), one PNG
(matplotlib, no display)."""

import keras
import numpy as np

from benchmarks.tables import TARGET_FRACTION
from benchmarks.tables import target_per_seed


def _band(axis, runs, key, label, color, x_key=None):
    """Mean over seeds per epoch (x: the epoch, or the mean of `x_key`),
    with a min-to-max band."""
    curves = np.array([[row[key] for row in run["rows"]] for run in runs])
    if x_key is None:
        x = np.arange(1, curves.shape[1] + 1)
    else:
        x = np.mean([[row[x_key] for row in run["rows"]] for run in runs], axis=0)
    axis.plot(x, curves.mean(axis=0), label=label, color=color, marker=".")
    if len(curves) > 1:
        axis.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=color, alpha=0.2)


def save_plot(task, methods, results, args, path):
    """Validation metric per epoch and against fit time, and training loss,
    for each method; masked ratio and mean accumulation window per epoch for
    the AS-Speed methods; backward fraction for the skipping methods; with
    pruning methods, a third row: their pruned fraction and forgetting rate,
    and every method's training seconds per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    monitor = next(iter(results.values()))[0]["monitor"]
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(results) > len(palette):  # The main job with `--baselines`.
        palette = [plt.get_cmap("tab20")(i) for i in range(20)]
    colors = dict(zip(results, palette))
    pruning = any(method.prune_masked for method in methods)
    figure, axes = plt.subplots(3 if pruning else 2, 3, figsize=(17, 12 if pruning else 8))
    for name, runs in results.items():
        _band(axes[0, 0], runs, monitor, name, colors[name])
        _band(axes[0, 1], runs, monitor, name, colors[name], x_key="seconds")
        _band(axes[0, 2], runs, "loss", name, colors[name])
        if pruning:
            _band(axes[2, 2], runs, "train_seconds", name, colors[name])
    reference, target = target_per_seed(methods, results)
    axes[0, 1].axhline(np.mean(target), color="gray", linestyle="--",
                       label=f"target ({TARGET_FRACTION:.1%} of {reference})")
    for method in methods:
        if not method.adaptive:
            continue
        runs = results[method.name]
        for run in runs:
            updates = np.diff([0] + [row["updates"] for row in run["rows"]])
            for row, count in zip(run["rows"], updates):
                row["window"] = run["steps_per_epoch"] / max(count, 1)
        _band(axes[1, 0], runs, "masked_ratio", method.name, colors[method.name])
        _band(axes[1, 1], runs, "window", method.name, colors[method.name])
        if method.skip_masked:
            _band(axes[1, 2], runs, "backward_fraction", method.name, colors[method.name])
        if method.prune_masked:
            _band(axes[2, 0], runs, "pruned_fraction", method.name, colors[method.name])
            _band(axes[2, 1], runs, "forgetting_rate", method.name, colors[method.name])
    panels = [
        (f"validation {monitor[4:]}", monitor[4:]),
        (f"validation {monitor[4:]} against fit time", monitor[4:]),
        ("training loss (each method's own loss)", "loss"),
        ("AS-Speed: masked ratio of training batches", "masked ratio"),
        ("AS-Speed: mean accumulation window", "batches per update"),
        ("skipping: fraction of each batch back-propagated",
         "backward fraction"),
        ("pruning: fraction of the training samples left out", "pruned fraction"),
        ("pruning: kept previously masked samples needing a gradient again",
         "forgetting rate"),
        ("training seconds per epoch (validation left out)", "seconds"),
    ]
    for axis, (title, ylabel) in zip(axes.flat, panels):
        axis.set_title(title)
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        if axis is axes[0, 1]:
            axis.set_xlabel("fit seconds (mean over seeds)")
            axis.set_xlim(left=0)
        else:
            axis.set_xlabel("epoch")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.set_xlim(0.5, args.epochs + 0.5)
    spread = " (band: min to max over seeds)" if args.seeds > 1 else ""
    figure.suptitle(
        f"{task.title}\nbackend {keras.backend.backend()}, {args.seeds} seed(s), "
        f"delta {args.delta}{spread}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
