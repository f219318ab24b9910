"""The docstring examples of the package run and show their true output.

Each public name (those `keras_as_softmax` exports) has an example; every
`>>>` example in the package's modules runs, once per backend.
"""

import doctest
import importlib
import inspect
import pkgutil

import keras
import numpy as np
import pytest

import keras_as_softmax

BACKEND = keras.backend.backend()
OTHER_BACKENDS = {"tensorflow", "jax", "torch"} - {BACKEND}


def package_modules():
    """The package's modules that load on this backend."""
    names = []
    for info in pkgutil.walk_packages(
        keras_as_softmax.__path__, prefix="keras_as_softmax."
    ):
        if info.name.rsplit(".", 1)[-1] in OTHER_BACKENDS:
            continue
        names.append(info.name)
    return names


def docstring_examples():
    finder = doctest.DocTestFinder(exclude_empty=True)
    examples = []
    for name in package_modules():
        module = importlib.import_module(name)
        for test in finder.find(module):
            if test.examples:
                examples.append(pytest.param(test, id=test.name))
    return examples


@pytest.mark.parametrize("test", docstring_examples())
def test_docstring_example(test):
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    test.globs = {**test.globs, "keras": keras, "np": np}
    keras.utils.set_random_seed(0)
    report = []
    result = runner.run(test, out=report.append)
    assert result.failed == 0, "".join(report)


@pytest.mark.parametrize("name", sorted(keras_as_softmax.__all__))
def test_every_public_name_has_an_example(name):
    obj = getattr(keras_as_softmax, name)
    doc = inspect.getdoc(obj) or ""
    assert ">>>" in doc, f"`keras_as_softmax.{name}` has no `>>>` example"
