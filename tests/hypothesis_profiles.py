"""Hypothesis profiles of the property suite (tests/test_properties*.py).

"ci" (the default): bounded numbers of examples, derandomized (the same examples on every run), no deadline:
the whole property suite runs within five minutes on two cores (measured: 53 s). "thorough": sixteen times as
many examples,
random ones, selected with `pytest --hypothesis-profile=thorough` (see the note below) or with the
environment variable `HYPOTHESIS_PROFILE=thorough`.

Note: hypothesis's pytest plugin loads `--hypothesis-profile` while pytest configures itself, before test
modules are imported, so the option only works when this module is imported by tests/conftest.py (one line:
`import hypothesis_profiles  # noqa: F401`) or loaded as a plugin:
`PYTHONPATH=.:tests pytest -p hypothesis_profiles --hypothesis-profile=thorough tests/test_properties*.py`.
"""
import os
from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
SCALE = {"ci": 3, "thorough": 48}   # a test decorated with `examples(n)` runs n * SCALE[profile] examples

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=_QUIET)
settings.register_profile("thorough", max_examples=1500, deadline=None, print_blob=True,
                          suppress_health_check=_QUIET)
if settings.get_current_profile_name() == "default":   # not chosen on the command line: the environment, or ci
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def examples(n: int) -> settings:
    "Settings running `n` times the profile's scale examples (3 n under ci, 48 n under thorough)."
    return settings(max_examples=n * SCALE.get(settings.get_current_profile_name(), 1))
