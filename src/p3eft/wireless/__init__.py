"""PrivTuner's wireless system: energy/privacy model, joint resource allocation, baselines, figures.

The system model is our reconstruction in the PrivTuner paper's frame (DESIGN.md section 2.2); FHE
costs come from the measured JSON of ``p3eft bench fhe``.
"""

from p3eft.wireless.costs import FheCostTable, load_costs, parse_costs
from p3eft.wireless.errors import CostFileError, InfeasibleScenarioError, ScenarioError
from p3eft.wireless.optimizer import SolveOptions, WirelessResult, check_allocation, solve, solve_exhaustive
from p3eft.wireless.scenario import Scenario, generate_scenario

__all__ = [
    "CostFileError",
    "FheCostTable",
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
