#!/usr/bin/env bash
# Checks the install as the README gives it: builds the sdist and the wheel
# (`python -m build`: the sdist, then the wheel from the unpacked sdist, as a
# release would), checks what each contains, then for each backend extra
# (jax, tensorflow, torch) installs the wheel with that extra into a fresh
# virtual environment and, on that backend, trains a tiny model with
# SparseASSoftmaxCrossentropy and with AdaptiveModel from the installed
# package. Last, it installs the sdist (jax extra) and runs the same check.
# `build` is installed into the calling Python's environment when missing.
# Usage: bash scripts/test_wheel.sh [WORK_DIR]
#        (default /tmp/keras-as-softmax-wheel; its dist/ and venv-*/ are
#        replaced)
set -euo pipefail
work="${1:-/tmp/keras-as-softmax-wheel}"
cd "$(dirname "$0")/.."
start=$SECONDS
step() { echo "=== $* ($((SECONDS - start)) s)"; }

mkdir -p "$work"
work="$(cd "$work" && pwd)"
if compgen -G "$work/venv-*" >/dev/null; then
  step "Removing the previous run's virtual environments"
fi
rm -rf "$work/dist" "$work"/venv-*

python="$(command -v python || command -v python3)"
# Asked from $work: in the checkout, setuptools' build/ folder would pass for
# the module.
if ! (cd "$work" && "$python" -m build --version) >/dev/null 2>&1; then
  step "Installing build into $("$python" -c 'import sys; print(sys.prefix)')"
  "$python" -m pip install --quiet build
fi
step "Building the sdist and the wheel"
"$python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || {
  cat "$work/build.log"
  echo "FAILED: python -m build (its log is above)" >&2
  exit 1
}
wheel="$(echo "$work"/dist/keras_as_softmax-*-py3-none-any.whl)"
sdist="$(echo "$work"/dist/keras_as_softmax-*.tar.gz)"
version="${sdist##*/keras_as_softmax-}"
version="${version%.tar.gz}"
if [[ ! -f "$wheel" || ! -f "$sdist" ]]; then
  echo "FAILED: expected one wheel and one sdist in $work/dist" >&2
  exit 1
fi

step "Checking their contents"
"$python" - "$wheel" "$sdist" "$version" <<'EOF'
"""The wheel holds the package and its metadata only; the sdist the package,
pyproject.toml, README.md and the license file(s) of the checkout."""
import email
import glob
import sys
import tarfile
import zipfile

wheel, sdist, version = sys.argv[1:]
package = {p for p in glob.glob("keras_as_softmax/**/*.py", recursive=True)}
licenses = set(glob.glob("LICEN[CS]E*")) | set(glob.glob("COPYING*"))
dist_info = f"keras_as_softmax-{version}.dist-info/"
errors = []

names = zipfile.ZipFile(wheel).namelist()
stray = [n for n in names if not n.startswith(("keras_as_softmax/", dist_info))]
if stray:
    errors.append(f"wheel: files outside the package: {stray}")
if {n for n in names if n.endswith(".py")} != package:
    errors.append(f"wheel: modules {sorted({n for n in names if n.endswith('.py')} ^ package)} "
                  "differ from the checkout's keras_as_softmax/")
metadata = email.message_from_bytes(zipfile.ZipFile(wheel).read(dist_info + "METADATA"))
extras = set(metadata.get_all("Provides-Extra") or [])
if not {"jax", "tensorflow", "torch"} <= extras:
    errors.append(f"wheel: extras {sorted(extras)} lack a backend")

prefix = f"keras_as_softmax-{version}/"
members = {n[len(prefix):] for n in tarfile.open(sdist).getnames() if n.startswith(prefix)}
for needed in {"PKG-INFO", "pyproject.toml", "README.md"} | package | licenses:
    if needed not in members:
        errors.append(f"sdist: {needed} is missing")

if errors:
    sys.exit("FAILED:\n  " + "\n  ".join(errors))
print(f"wheel: {len(names)} files, the package's {len(package)} modules and its metadata "
      f"(extras: {', '.join(sorted(extras))}); sdist: {len(members)} entries with "
      f"PKG-INFO, pyproject.toml, README.md"
      + (f", {', '.join(sorted(licenses))}" if licenses else " (no license file in the checkout)"))
EOF

# Trains one batch with the AS loss on a functional model and on an
# AdaptiveModel, on the backend that KERAS_BACKEND names, from the installed
# package (it runs in $work, so the checkout's keras_as_softmax/ is not on
# the path).
snippet='
import importlib.metadata as metadata
import os
import sys

import numpy as np
import keras
import keras_as_softmax
from keras_as_softmax import AdaptiveModel, SparseASSoftmaxCrossentropy

backend = os.environ["KERAS_BACKEND"]
assert keras.backend.backend() == backend, keras.backend.backend()
assert keras_as_softmax.__file__.startswith(sys.prefix), keras_as_softmax.__file__
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 8)).astype("float32")
y = rng.integers(0, 5, size=64)
keras.utils.set_random_seed(0)

def graph():
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    return inputs, keras.layers.Dense(5)(hidden)

losses = {}
for name, model in (("Model", keras.Model(*graph())), ("AdaptiveModel", AdaptiveModel(*graph()))):
    model.compile(optimizer="adam", loss=SparseASSoftmaxCrossentropy(delta=0.1))
    loss = model.fit(x, y, batch_size=64, epochs=1, verbose=0).history["loss"][0]
    assert np.isfinite(loss) and loss > 0, (name, loss)
    losses[name] = round(float(loss), 4)
version = metadata.version("keras-as-softmax")
print(f"OK: keras-as-softmax {version}, keras {keras.__version__}, "
      f"{backend} {metadata.version(backend)}; one batch, loss: {losses}")
'

check() {  # check VENV BACKEND
  (cd "$work" && KERAS_BACKEND="$2" TF_CPP_MIN_LOG_LEVEL=2 "$1/bin/python" -c "$snippet")
}

# --no-compile: pip does not write a .pyc for every module of TensorFlow and
# torch; Python compiles only what the check imports.
for extra in jax tensorflow torch; do
  venv="$work/venv-$extra"
  step "[$extra]: a fresh virtual environment, the wheel with the $extra extra"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  case "$extra" in
    torch)
      # As scripts/install.sh does: the CPU build first (here a local wheel
      # that pip finds), which meets the extra's `torch>=2.3`; otherwise pip
      # takes the newest torch it finds, on PyPI a build that pulls
      # multi-GB CUDA libraries.
      "$venv/bin/python" -m pip install --quiet --no-compile torch==2.13.0 ;;
    tensorflow)
      # Nothing first: the extra needs the `tensorflow` distribution, and
      # pip does not take `tensorflow-cpu` (another distribution name, same
      # `tensorflow` package inside) for it: with tensorflow-cpu installed
      # first, pip still installs tensorflow over it. The `tensorflow` wheel
      # (about 570 MB) runs on the CPU; its CUDA libraries come only with
      # `tensorflow[and-cuda]`. CPU-only users who want the smaller wheel
      # install tensorflow-cpu and the wheel without an extra (README).
      ;;
  esac
  "$venv/bin/python" -m pip install --quiet --no-compile "$wheel[$extra]"
  check "$venv" "$extra"
done

step "The sdist, with the jax extra, in place of the wheel (venv-jax)"
"$work/venv-jax/bin/python" -m pip uninstall --quiet --yes keras-as-softmax
"$work/venv-jax/bin/python" -m pip install --quiet --no-compile "$sdist[jax]"
check "$work/venv-jax" jax

echo "Wheel and sdist checks passed in $((SECONDS - start)) s ($work/dist)"
