#!/usr/bin/env bash
# Installs the examples' local data sets from Debian's packages, when they are
# missing and apt-get can be used (as root, or with password-less sudo):
# dataset-fashion-mnist (/usr/share/datasets/fashion-mnist) and wordnet-base
# (/usr/share/wordnet). The examples also use the standard online loaders.
set -uo pipefail
missing=()
[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
[ -e /usr/share/wordnet/data.noun ] || missing+=(wordnet-base)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  sudo=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo="sudo -n"
else
  echo "Not installed: ${missing[*]}. The examples that need them say so; install with: sudo apt-get install ${missing[*]}"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "No apt-get: the examples' local data (${missing[*]}) is not installed."
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -q "${missing[@]}" >/dev/null \
  || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "${missing[@]}" >/dev/null; } \
  || echo "Could not install ${missing[*]} with apt-get."
echo "Data: $(ls /usr/share/datasets/fashion-mnist 2>/dev/null | wc -l) Fashion-MNIST files, WordNet $( [ -e /usr/share/wordnet/data.noun ] && echo present || echo missing)"
