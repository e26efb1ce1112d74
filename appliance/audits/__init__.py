"""Audit methods: pure statistical libraries behind a registry (see :mod:`.registry`)."""
