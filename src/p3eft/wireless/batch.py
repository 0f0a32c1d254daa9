"""The continuous optimum of many choice vectors at once, for exhaustive search (ours).

Exhaustive search needs one continuous solve per choice vector (K^U of them). Solving them one by one
spends its time in numpy's per-call overhead, so here every choice vector of a chunk becomes one
*block* of users in a single flat problem: the dual method of :class:`~p3eft.wireless.continuous.
DualSolver` runs unchanged per user, with one bandwidth price nu and one server price mu per block,
all blocks' roots found together as array operations. Blocks with no feasible allocation get an
infinite objective, like the one-by-one evaluator.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from p3eft.wireless.continuous import (
    PRICE_CAP_FACTOR,
    DualSolver,
    check_user_deadlines,
    energy_scale,
    make_solution,
)
from p3eft.wireless.model import Problem, UserCosts, uplink_rate
from p3eft.wireless.roots import root_decreasing


def batch_objectives(
    problem: Problem, choices: np.ndarray, chunk: int = 2048, tol: float = 1e-10
) -> np.ndarray:
    """Objective (energy - w3 sum P) of every row of ``choices`` (B x U); inf where infeasible."""
    choices = np.asarray(choices, dtype=int)
    out = np.full(len(choices), np.inf)
    for i in range(0, len(choices), chunk):
        out[i : i + chunk] = _chunk(problem, choices[i : i + chunk], tol)
    return out


def _chunk(problem: Problem, ch: np.ndarray, tol: float) -> np.ndarray:
    n_blocks, u = ch.shape
    users = np.tile(np.arange(u), n_blocks)
    block = np.repeat(np.arange(n_blocks), u)
    k = ch.ravel()
    flat = replace(problem, g=problem.g[users], eta=problem.eta[users], deadlines=problem.deadlines[users])
    costs = UserCosts(
        bits=problem.bits[users, k],
        down_bits=problem.down_bits[users, k],
        device_cycles=problem.device_cycles[users, k],
        server_cycles=problem.server_cycles[users, k],
        latency=problem.latency[users, k],
        privacy=problem.privacy[k],
    )
    s = problem.scenario
    solver = DualSolver(flat, tol=tol)
    alive = np.ones(n_blocks, dtype=bool)
    alive[block[check_user_deadlines(flat, costs)]] = False
    # necessary condition: with all the bandwidth each, the server shares must fit
    rate = uplink_rate(np.full(len(k), s.bandwidth_hz), s.p_max_w, flat.g, flat.n0)
    t_left = (
        flat.deadlines
        - costs.device_cycles / s.f_max_hz
        - costs.bits / rate
        - costs.down_bits / (flat.eta * s.bandwidth_hz)
        - costs.latency
    )
    with np.errstate(divide="ignore"):
        need = np.where(t_left > 0, costs.server_cycles / np.maximum(t_left, 1e-300), np.inf)
    alive &= np.bincount(block, need, n_blocks) <= s.server_hz

    scale = PRICE_CAP_FACTOR * np.bincount(block, energy_scale(flat, costs), n_blocks)

    def per_user(x: np.ndarray) -> np.ndarray:
        return x[block]

    lam_guess = np.ones(len(k))
    nu_guess = np.full(n_blocks, 1e-7)

    def lam_for(nu: np.ndarray, mu: np.ndarray, final: bool = False) -> tuple[np.ndarray, np.ndarray]:
        nonlocal lam_guess
        live = per_user(alive)

        def slack(lam: np.ndarray) -> np.ndarray:  # dead blocks: 0, i.e. solved at once
            r = solver._response(costs, lam, per_user(nu), per_user(mu))
            t = r["t_enc"] + r["t_tx"] + r["t_dl"] + r["t_srv"] + costs.latency - flat.deadlines
            return np.where(live, t, 0.0)

        lam, _, ok = root_decreasing(slack, lam_guess, ftol=tol * flat.deadlines)
        lam_guess = lam
        failed = np.bincount(block, ~ok, n_blocks) > 0
        if final:  # at the final prices: a user misses its deadline whatever it does
            alive[failed] = False
        return lam, ~failed

    def nu_for(mu: np.ndarray, final: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bandwidth prices clearing each block at server prices ``mu``; ``final`` marks the blocks
        found infeasible (never inside the server-price search, where ``mu`` is only a trial)."""

        def excess(nu: np.ndarray) -> np.ndarray:
            lam, _ = lam_for(nu, mu)
            b = solver._response(costs, lam, per_user(nu), per_user(mu))["b"]
            return np.where(alive, np.bincount(block, b, n_blocks) - s.bandwidth_hz, 0.0)

        nonlocal nu_guess
        nu, _, ok = root_decreasing(
            excess,
            nu_guess,
            ftol=tol * s.bandwidth_hz,
            max_expand=16,
            x_max=np.maximum(scale / s.bandwidth_hz, 1e-7),
        )
        nu_guess = np.where(ok, nu, nu_guess)
        lam, ok_lam = lam_for(nu, mu, final)
        if final:
            alive[~ok] = False
        return nu, lam, ok & ok_lam

    mu = np.zeros(n_blocks)
    nu, lam, ok = nu_for(mu)
    fs = solver._response(costs, lam, per_user(nu), per_user(mu))["f_s"]
    busy = alive & ok & (np.bincount(block, fs, n_blocks) > s.server_hz)
    if busy.any():

        def excess_mu(m: np.ndarray) -> np.ndarray:
            m = np.where(busy, m, 0.0)
            nu_m, lam_m, _ = nu_for(m, final=False)
            f = solver._response(costs, lam_m, per_user(nu_m), per_user(m))["f_s"]
            return np.where(busy & alive, np.bincount(block, f, n_blocks) - s.server_hz, 0.0)

        mu_root, _, ok_mu = root_decreasing(
            excess_mu,
            np.full(n_blocks, 1e-12),
            ftol=tol * s.server_hz,
            max_expand=16,
            x_max=np.maximum(scale / s.server_hz, 1e-12),
        )
        alive &= ok_mu | ~busy
        mu = np.where(busy, mu_root, 0.0)
        nu, lam, ok = nu_for(mu)
    r = solver._response(costs, lam, per_user(nu), per_user(mu))
    sol = make_solution(flat, costs, r["b"], r["p"], r["f"], r["f_s"])
    w1, w2, w3 = s.weights
    e = w1 * (sol.e_enc + sol.e_tx + sol.e_rx) + w2 * (sol.e_srv + sol.e_dl) - w3 * costs.privacy
    return np.where(alive & ok, np.bincount(block, e, n_blocks), np.inf)


def lagrangian_table(problem: Problem, nus: np.ndarray, mus: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """l_n(k; nu_g, mu_g) for every price pair g, user n and candidate k: shape (G, U, K).

    l_n is the user's exact minimum of its energy + nu b + mu f_s under its deadline (the per-user
    term of the dual function). ``+inf`` where the user cannot meet its deadline even with every
    resource (the choice is infeasible); ``-inf`` (no bound) where the multiplier search failed.
    """
    g_count, u = len(nus), problem.n_users
    users = np.tile(np.arange(u), g_count)
    nu = np.repeat(np.asarray(nus, dtype=float), u)
    mu = np.repeat(np.asarray(mus, dtype=float), u)
    flat = replace(problem, g=problem.g[users], eta=problem.eta[users], deadlines=problem.deadlines[users])
    solver = DualSolver(flat, tol=tol)
    s = problem.scenario
    out = np.empty((g_count, u, problem.n_sets))
    for k in range(problem.n_sets):
        c = UserCosts(
            bits=problem.bits[users, k],
            down_bits=problem.down_bits[users, k],
            device_cycles=problem.device_cycles[users, k],
            server_cycles=problem.server_cycles[users, k],
            latency=problem.latency[users, k],
            privacy=np.full(len(users), problem.privacy[k]),
        )
        late = np.zeros(len(users), dtype=bool)
        late[check_user_deadlines(flat, c)] = True

        def slack(lam: np.ndarray, c: UserCosts = c, late: np.ndarray = late) -> np.ndarray:
            r = solver._response(c, lam, nu, mu)
            t = r["t_enc"] + r["t_tx"] + r["t_dl"] + r["t_srv"] + c.latency - flat.deadlines
            return np.where(late, 0.0, t)

        lam, _, found = root_decreasing(slack, np.ones(len(users)), ftol=tol * flat.deadlines)
        r = solver._response(c, lam, nu, mu)
        w1, w2, _ = s.weights
        e = w1 * (
            s.kappa_device * c.device_cycles * r["f"] ** 2 + r["p"] * r["t_tx"] + s.rx_power_w * r["t_dl"]
        ) + w2 * (s.kappa_server * c.server_cycles * r["f_s"] ** 2 + flat.psd_dl * c.down_bits / flat.eta)
        val = np.where(found, e + nu * r["b"] + mu * r["f_s"], -np.inf)
        out[:, :, k] = np.where(late, np.inf, val).reshape(g_count, u)
    return out


def dual_lower_bounds(
    problem: Problem, combos: np.ndarray, nus: np.ndarray, mus: np.ndarray, chunk: int = 4096
) -> np.ndarray:
    """Each choice vector's own dual bound, max over the price grid of
    sum_n l_n(k_n; nu, mu) - nu B - mu F_s - w3 sum_n P(k_n) (weak duality: <= its continuous optimum)."""
    s = problem.scenario
    table = lagrangian_table(problem, nus, mus)  # (G, U, K)
    const = -np.asarray(nus) * s.bandwidth_hz - np.asarray(mus) * s.server_hz  # (G,)
    per_user = np.transpose(table, (1, 2, 0))  # (U, K, G)
    out = np.empty(len(combos))
    with np.errstate(invalid="ignore"):  # inf + (-inf): an infeasible user wins (the choice is infeasible)
        for i in range(0, len(combos), chunk):
            cb = combos[i : i + chunk]
            parts = [per_user[n, cb[:, n], :] for n in range(problem.n_users)]
            total = np.sum(parts, axis=0) + const[None, :]
            infeasible = np.any([np.isposinf(p).any(axis=1) for p in parts], axis=0)
            bound = np.nanmax(np.where(np.isnan(total), -np.inf, total), axis=1)
            priv = problem.privacy[cb].sum(axis=1)
            out[i : i + chunk] = np.where(infeasible, np.inf, bound - s.weights[2] * priv)
    return out
