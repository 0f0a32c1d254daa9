"""PrivTuner's wireless system: energy/privacy model, joint resource allocation, baselines, figures.

The system model is our reconstruction in the PrivTuner paper's frame (stated in docs/wireless.md);
the cost of each FHE candidate (N with its modulus chain) comes from a measured cost file: the
PrivTuner step-cost JSON of ``p3eft privtuner bench``, or the CKKS engine's ``p3eft bench fhe`` JSON.
"""

from p3eft.wireless.candidates import Candidate, default_candidates
from p3eft.wireless.costs import CostSource, CostTable, load_costs, parse_costs
from p3eft.wireless.errors import CostFileError, InfeasibleScenarioError, ScenarioError
from p3eft.wireless.optimizer import SolveOptions, WirelessResult, check_allocation, solve, solve_exhaustive
from p3eft.wireless.scenario import Scenario, generate_scenario

__all__ = [
    "CostFileError",
    "Candidate",
    "CostSource",
    "CostTable",
    "default_candidates",
    "InfeasibleScenarioError",
    "Scenario",
    "ScenarioError",
    "SolveOptions",
    "WirelessResult",
    "check_allocation",
    "generate_scenario",
    "load_costs",
    "parse_costs",
    "solve",
    "solve_exhaustive",
]
