"""Channel adapters: one module per channel, each verifying, parsing and sending; nothing else."""
