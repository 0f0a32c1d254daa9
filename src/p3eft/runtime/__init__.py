"""Parties as processes: the channel interface, messages, transports, TLS, attestation, checkpoints."""
