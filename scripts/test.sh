#!/usr/bin/env bash
# Runs the test suite once per Keras backend; fails if any backend fails.
# The three backends run side by side, each in its own process with its own
# log, printed when all are done: most of a run is single-threaded tracing
# and compiling, so two cores keep three runs busy (README.md gives the
# measured times of both tiers). TEST_SEQUENTIAL=1 runs them one after another.
# --fast leaves out the tests marked slow (subprocess runs of the examples,
# benchmarks and scripts, keras-hub models, long training): the unit tests of
# every backend, for the edit-test loop.
# Usage: bash scripts/test.sh [--fast] [pytest args...]
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == --fast ]]; then
  shift
  set -- -m "not slow" "$@"
fi
backends=(tensorflow jax torch)
logs=$(mktemp -d)
run() {
  local start=$SECONDS
  KERAS_BACKEND=$1 python -m pytest -q -p no:cacheprovider "${@:2}" >"$logs/$1.log" 2>&1
  local status=$?
  echo "=== KERAS_BACKEND=$1 finished in $((SECONDS - start)) s (exit $status)" >>"$logs/$1.log"
  return $status
}
status=0
if [[ "${TEST_SEQUENTIAL:-0}" == 1 ]]; then
  for backend in "${backends[@]}"; do
    run "$backend" "$@" || status=1
    echo "=== KERAS_BACKEND=$backend"; cat "$logs/$backend.log"
  done
else
  pids=()
  for backend in "${backends[@]}"; do
    run "$backend" "$@" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  for backend in "${backends[@]}"; do
    echo "=== KERAS_BACKEND=$backend"; cat "$logs/$backend.log"
  done
fi
rm -rf "$logs"
exit $status
