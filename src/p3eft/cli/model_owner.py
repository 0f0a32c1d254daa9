"""`p3eft model-owner`: placeholder until its capability lands."""

from p3eft.cli.pending import pending_group

app = pending_group("model-owner", "the networked-parties capability")
