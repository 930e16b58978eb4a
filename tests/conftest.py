import os

from hypothesis import HealthCheck, settings

# "ci": the default profile, bounded so the suite stays fast; REFBNN_HYPOTHESIS_EXAMPLES raises the
# example count for long fuzzing runs (e.g. 100000).
settings.register_profile("ci", max_examples=int(os.environ.get("REFBNN_HYPOTHESIS_EXAMPLES", "25")), deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("ci")
