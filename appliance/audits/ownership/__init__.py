"""appliance/audits/ownership."""
