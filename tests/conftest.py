"""Shared test settings: a hypothesis profile that keeps the suite fast on two cores."""
import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "gradc", deadline=None, max_examples=10, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
settings.register_profile("gradc-thorough", deadline=None, max_examples=200,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("GRADC_HYPOTHESIS_PROFILE", "gradc"))
