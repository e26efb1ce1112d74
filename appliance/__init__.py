"""The audit appliance service."""

__version__ = "0.1.0"
