"""`p3eft models`: placeholder until its capability lands."""

from p3eft.cli.pending import pending_group

app = pending_group("models", "the foundation model registry")
