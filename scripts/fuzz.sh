#!/usr/bin/env bash
# Runs the property tests (tests/test_properties.py) with Hypothesis's `fuzz`
# profile once per Keras backend: 1000 random examples per property test (100
# for the compiled one), over 12,000 per backend. Not part of the test suite.
# Prints per backend how many examples ran and the result; on a failure, the
# failing examples and the log. Fails if any backend fails.
# Usage: bash scripts/fuzz.sh [BACKEND...]   (default: tensorflow jax torch)
set -uo pipefail
cd "$(dirname "$0")/.."
backends=("$@")
[ ${#backends[@]} -eq 0 ] && backends=(tensorflow jax torch)
status=0
for backend in "${backends[@]}"; do
  log=$(mktemp)
  start=$SECONDS
  HYPOTHESIS_PROFILE=fuzz KERAS_BACKEND=$backend python -m pytest -q \
    -p no:cacheprovider --hypothesis-show-statistics tests/test_properties.py \
    >"$log" 2>&1
  rc=$?
  # Hypothesis's statistics: "- 1000 passing, 0 failing, and 0 invalid test
  # cases" per test and phase.
  cases=$(awk '/passing, .* failing, and .* invalid test cases/ {
      gsub(",", ""); p += $2; f += $4; i += $7 }
    END { printf "%d passing, %d failing, %d invalid", p, f, i }' "$log")
  summary=$(grep -E "[0-9]+ (passed|failed|error)" "$log" | tail -n 1)
  echo "=== KERAS_BACKEND=$backend: $cases test cases in $((SECONDS - start)) s;" \
    "pytest: ${summary:-no summary (exit code $rc)}"
  if [ $rc -ne 0 ]; then
    status=1
    sed -n '/= FAILURES =/,/short test summary/p' "$log"
    echo "(full log: $log)"
  else
    rm -f "$log"
  fi
done
exit $status
