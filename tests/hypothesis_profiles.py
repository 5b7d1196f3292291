"""Hypothesis profiles of the property suite (tests/test_properties*.py).

"ci" (the default): bounded numbers of examples, derandomized (the same examples on every run), no deadline:
the whole property suite runs within five minutes on two cores (measured: 36 s). "thorough": 48 times as many
examples, random ones (about 25 minutes on one core), selected with `pytest --hypothesis-profile=thorough`
(see the note below) or with the environment variable `HYPOTHESIS_PROFILE=thorough`.

hypothesis's pytest plugin reads `--hypothesis-profile` while pytest configures itself, before test modules are
imported: tests/conftest.py imports this module, so the profiles exist by then.
"""
import os
from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
SCALE = {"ci": 3, "thorough": 144}   # a test decorated with `examples(n)` runs n * SCALE[profile] examples

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=_QUIET)
settings.register_profile("thorough", max_examples=1500, deadline=None, print_blob=True,
                          suppress_health_check=_QUIET)
if settings.get_current_profile_name() == "default":   # not chosen on the command line: the environment, or ci
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def examples(n: int) -> settings:
    "Settings running `n` times the profile's scale examples (3 n under ci, 144 n under thorough)."
    return settings(max_examples=n * SCALE.get(settings.get_current_profile_name(), 1))
