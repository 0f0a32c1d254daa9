"""`p3eft privtuner`: placeholder until its capability lands."""

from p3eft.cli.pending import pending_group

app = pending_group("privtuner", "the PrivTuner encrypted-training protocol (no open issue yet)")
