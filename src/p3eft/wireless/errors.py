"""Errors of the wireless optimiser that a user can act on (all are :class:`p3eft.errors.P3eftError`)."""

from __future__ import annotations

from collections.abc import Sequence

from p3eft.errors import MissingResourceError, P3eftError


class CostFileError(MissingResourceError):
    """The FHE cost JSON (written by ``p3eft bench fhe``) is missing or does not follow its schema."""


class ScenarioError(P3eftError):
    """A scenario file or scenario parameters are malformed."""


class InfeasibleScenarioError(P3eftError):
    """No allocation satisfies every constraint.

    ``constraint`` names the binding constraint (``"deadline"``, ``"privacy floor"``,
    ``"bandwidth/server capacity"``) and ``users`` the (0-based) users concerned, so a caller can relax
    exactly those.
    """

    def __init__(self, constraint: str, users: Sequence[int], detail: str) -> None:
        self.constraint = constraint
        self.users = [int(u) for u in users]
        shown = ", ".join(str(u) for u in self.users[:20]) + (" ..." if len(self.users) > 20 else "")
        super().__init__(f"infeasible scenario: {constraint} cannot be met for user(s) [{shown}]: {detail}")
