"""Loopback fakes of third-party APIs; the real client libraries are pointed at them by base URL."""
