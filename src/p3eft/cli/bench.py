"""`p3eft bench`: placeholder until its capability lands."""

from p3eft.cli.pending import pending_group

app = pending_group("bench", "the CKKS engine and runtime issues (`p3eft bench fhe`)")
