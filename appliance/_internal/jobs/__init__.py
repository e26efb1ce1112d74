"""appliance/_internal/jobs."""
