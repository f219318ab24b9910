"""A fresh Keras session per test; Hypothesis profiles: `default` for the
test suite, `fuzz` for long runs.

Choose a profile with the environment variable `HYPOTHESIS_PROFILE` (e.g.
`HYPOTHESIS_PROFILE=fuzz`, as `scripts/fuzz.sh` does).
"""

import os

import keras
import pytest
from hypothesis import HealthCheck
from hypothesis import settings

_COMMON = dict(
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)

# Few examples, always the same ones: reproducible and fast.
settings.register_profile("default", max_examples=12, derandomize=True, **_COMMON)
# 1000 random examples per property test: at least 10,000 per backend.
settings.register_profile("fuzz", max_examples=1000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def fresh_keras_session():
    """Each test starts from Keras's initial global state, as in Keras's own
    `TestCase`: state left by earlier tests slowed later ones down. Not on
    PyTorch, where `clear_session` also drops what `torch.compile` compiled
    (tests that need that call `reset_compiled_functions`), which slowed the
    compiled tests; no garbage collection, which cost more than it saved."""
    if keras.backend.backend() != "torch":
        keras.backend.clear_session(free_memory=False)
