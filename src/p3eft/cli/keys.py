"""`p3eft keys`: placeholder until its capability lands."""

from p3eft.cli.pending import pending_group

app = pending_group("keys", "the networked-parties capability (`p3eft keys init`)")
