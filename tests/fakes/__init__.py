"""Loopback fakes of third-party APIs; the real client libraries are pointed at them by base URL. Each channel's
module also holds what tests share about that service: its credentials, sample payloads, and how it signs what
it sends the bot, so that no test imports another test module (tests/test_layout.py)."""
