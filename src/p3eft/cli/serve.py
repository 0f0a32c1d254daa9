"""`p3eft serve`: placeholder until its capability lands."""

from p3eft.cli.pending import pending_group

app = pending_group("serve", "the networked-parties capability")
