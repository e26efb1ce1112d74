"""appliance/_internal/web."""
