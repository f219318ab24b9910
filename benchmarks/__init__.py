"""Benchmarks, and the comparison that they and the examples share.

Run each from the repository root as a module:

    python -m benchmarks.compare            # the main job (scripts/main.sh)
    python -m benchmarks.as_speed           # AS-Speed and skipping on real data
    python -m benchmarks.skipping_bound     # skipping against its bound, per epoch
    python -m benchmarks.loss_cost          # forward + backward of one loss call
    python -m benchmarks.adaptive_overhead  # AdaptiveModel's per-batch cost

`comparison` (with `startup`, `tables` and `plot`) trains one model with
several losses and reports a table and a plot; see benchmarks/README.md.
"""
