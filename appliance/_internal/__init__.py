"""appliance/_internal."""
