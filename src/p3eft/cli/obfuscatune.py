"""`p3eft obfuscatune`: placeholder until its capability lands."""

from p3eft.cli.pending import pending_group

app = pending_group("obfuscatune", "the ObfuscaTune capability")
