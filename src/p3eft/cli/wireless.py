"""`p3eft wireless`: placeholder until its capability lands."""

from p3eft.cli.pending import pending_group

app = pending_group("wireless", "the PrivTuner wireless-system capability")
