"""Shared test configuration: hypothesis profiles by cost.

``HYPOTHESIS_PROFILE=ci`` (the default, used by ``make test``) keeps the suite inside its time
budget; ``thorough`` is for nightly or pre-release runs; ``dev`` is for quick local iteration.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=10, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
