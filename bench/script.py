"""The scripted claim every benchmark plays (kept free of heavy imports: the load generator reads it too)."""

from __future__ import annotations

# The serial is not in any registry, so the customer is asked for proof and answers with the button.
SCRIPT: tuple[str, ...] = (
    "hello",
    "CSP2604D0007 display shows E07 and shuts down",
    "proof:none",
    "cause:normal",
)
# Replies the bot sends for each step of SCRIPT (greeting + question, unit + proof request, cause
# question, decision + case opened): the last reply of a step ends that step's end-to-end latency.
SCRIPT_REPLIES: tuple[int, ...] = (2, 2, 1, 2)
