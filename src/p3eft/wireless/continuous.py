"""Continuous stage: bandwidth, power, device frequency and server share for fixed FHE candidates.

Fast exact method (ours). Writing each user's transmission in terms of its upload time t and bandwidth
b, the minimum transmit energy is E_tx(b, t) = (N0/g) b t (2^{D/(b t)} - 1), which is jointly convex
in (b, t) (its Hessian determinant is proportional to e^z (2z^2 - z + 1) - 1 >= 0, z = D ln2 / (b t)).
The downlink on the same band takes time c / b (c = D_dl / eta) and costs the device p_rx c / b, both
convex in b; device and server CPU energies are convex in their times too, so the whole continuous
problem is convex in (b, times) even though it is a sum of ratios p D / r in (b, p). We solve it by
dual decomposition, everything as array operations over users:

* a price nu on bandwidth (sum b <= B) and mu on server capacity (sum f_s <= F_s), found by monotone
  root finding on the totals;
* per user a deadline multiplier lambda_n, root of "encryption + upload + server time = T_n";
* given (lambda, nu, mu), closed forms from the KKT conditions:
  device frequency f = clip((lambda / (2 w1 kappa))^(1/3), f_min, f_max);
  server share f_s = positive root of 2 w2 kappa_s C_s f_s^3 + mu f_s^2 = lambda C_s;
  spectral variable z solving h(z)^2 (K/z + rho) = nu lambda / a^2 with h(z) = z e^z - e^z + 1,
  a = w1 N0 / g, K = D ln2, rho = (lambda + w1 p_rx) c / lambda (increasing in z: safeguarded Newton;
  with rho = 0 it is k(z) = sqrt(nu lambda)/(a sqrt(K)), k(z) = h(z)/sqrt(z)), then
  b = lambda / (a h(z)), t = K / (z b), p = N0 b (e^z - 1) / g;
  where that p exceeds p_max, p = p_max and the SNR x = A / b (A = p_max g / N0) solves
  Q(x) + sigma x^2 = nu A^2 / (W K), W = w1 p_max + lambda, sigma = (lambda + w1 p_rx) c / (W K),
  Q(x) = x^2 (ln(1+x) - x/(1+x)) / ln(1+x)^2.

The fractional-programming method the paper prescribes (quadratic transform, convex inner steps by a
real solver) is :mod:`p3eft.wireless.fractional`; tests check both against each other and against a
general-purpose solver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from p3eft.wireless.errors import InfeasibleScenarioError
from p3eft.wireless.model import Problem, UserCosts, uplink_rate
from p3eft.wireless.roots import root_decreasing

LN2 = float(np.log(2.0))
_Z_MAX = 60.0
#: A resource price above this many times the energy scale per unit of the resource counts as "no
#: price clears the resource": the scenario is treated as infeasible (ours; stops the price search
#: from chasing an unbounded price through nested root finding).
PRICE_CAP_FACTOR = 1e3


def energy_scale(problem: Problem, costs: UserCosts) -> np.ndarray:
    """Per-user energy with everything at full speed (f_max, p_max, all of B, all of F_s): a scale
    for the price caps, not a bound on the optimum."""
    s = problem.scenario
    w1, w2, _ = s.weights
    rate = uplink_rate(np.full(problem.n_users, s.bandwidth_hz), s.p_max_w, problem.g, problem.n0)
    return w1 * (
        s.kappa_device * costs.device_cycles * s.f_max_hz**2 + s.p_max_w * costs.bits / rate
    ) + w2 * (s.kappa_server * costs.server_cycles * s.server_hz**2)


def _h(z: np.ndarray) -> np.ndarray:
    """h(z) = z e^z - e^z + 1, by its series sum_n z^n (n-1)/n! below 0.01 (no cancellation)."""
    z = np.asarray(z, dtype=float)
    series = z * z * (0.5 + z * (1 / 3 + z * (1 / 8 + z * (1 / 30 + z / 144))))
    return np.where(z < 1e-2, series, z * np.exp(z) - np.expm1(z))


def _k(z: np.ndarray) -> np.ndarray:
    return _h(z) / np.sqrt(z)


def _dk(z: np.ndarray) -> np.ndarray:
    return (2.0 * z * z * np.exp(z) - _h(z)) / (2.0 * z**1.5)


def _q(x: np.ndarray) -> np.ndarray:
    lg = np.log1p(x)
    return x * x * (lg - x / (1.0 + x)) / (lg * lg)


def _dq(x: np.ndarray) -> np.ndarray:
    lg = np.log1p(x)
    m = lg - x / (1.0 + x)
    return (2.0 * x * m + x * x * x / (1.0 + x) ** 2) / lg**2 - 2.0 * x * x * m / (lg**3 * (1.0 + x))


_ZG = np.logspace(-6, np.log10(_Z_MAX), 4000)
_LKG = np.log(_k(_ZG))
_LHG = np.log(_h(_ZG))
_XG = np.logspace(-6, 10, 4000)
_LQG = np.log(_q(_XG))
assert np.all(np.diff(_LHG) > 0) and np.all(np.diff(_LKG) > 0) and np.all(np.diff(_LQG) > 0), (
    "k and Q must be increasing"
)


_LZG = np.log(_ZG)


def _kinv(kv: np.ndarray) -> np.ndarray:
    """z with k(z) = kv (table inversion in log-log, then one fused Newton step)."""
    lk = np.log(kv)
    z = np.exp(np.interp(lk, _LKG, _LZG))
    if lk.min() < _LKG[0]:
        z = np.where(lk < _LKG[0], (2.0 * kv) ** (2.0 / 3.0), z)  # k ~ z^1.5 / 2 near 0
    em1 = np.expm1(z)
    h = z * (em1 + 1.0) - em1
    sz = np.sqrt(z)
    k = h / sz
    dk = (2.0 * z * z * (em1 + 1.0) - h) / (2.0 * z * sz)
    return np.minimum(np.maximum(z - (k - kv) / dk, 0.5 * z), np.minimum(2.0 * z, _Z_MAX))


def _hinv(hv: np.ndarray) -> np.ndarray:
    """z with h(z) = z e^z - e^z + 1 = hv (fixed-bandwidth transmission)."""
    lh = np.log(hv)
    z = np.exp(np.interp(lh, _LHG, np.log(_ZG)))
    z = np.where(lh < _LHG[0], np.sqrt(2.0 * hv), z)  # h ~ z^2 / 2 near 0
    for _ in range(2):
        z = np.clip(z - (_h(z) - hv) / (z * np.exp(z)), 0.5 * z, np.minimum(2.0 * z, _Z_MAX))
    return z


def _qinv(qv: np.ndarray) -> np.ndarray:
    """SNR x with Q(x) = qv."""
    lq = np.log(qv)
    x = np.exp(np.interp(lq, _LQG, np.log(_XG)))
    x = np.where(lq < _LQG[0], np.sqrt(2.0 * qv), x)  # Q ~ x^2 / 2 near 0
    for _ in range(2):
        x = np.clip(x - (_q(x) - qv) / _dq(x), 0.5 * x, 2.0 * x)
    return x


def _bracketed_newton(
    fun: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    lo: np.ndarray,
    hi: np.ndarray,
    iters: int = 40,
) -> np.ndarray:
    """Root in log space of an increasing ``fun`` (returning log-residual and its log-slope), inside
    [lo, hi]; Newton steps that leave the bracket are replaced by bisection."""
    a, b = np.log(lo), np.log(hi)
    x = b.copy()
    for _ in range(iters):
        r, slope = fun(np.exp(x))
        if np.all(np.abs(r) < 1e-13):
            break
        a = np.where(r < 0, x, a)
        b = np.where(r > 0, x, b)
        with np.errstate(divide="ignore", invalid="ignore"):
            nx = x - r / slope
        bad = ~np.isfinite(nx) | (nx <= a) | (nx >= b)
        x = np.where(np.abs(r) < 1e-13, x, np.where(bad, 0.5 * (a + b), nx))
    return np.exp(x)


def _free_z(tau: np.ndarray, kk: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """z with h(z)^2 (K/z + rho) = tau (unconstrained power, downlink term rho >= 0).

    log F is increasing and convex in log z (its log-slope 2 z^2 e^z / h(z) - K / (K + rho z) grows),
    so Newton in log z from above descends monotonically onto the root (from below, its first step
    lands above): no bracket needed. Both z(rho = 0) and z(K = 0) bound the root from above.
    """
    z = _kinv(np.sqrt(tau / kk))
    down = rho > 0
    if not down.any():
        return z
    z = np.where(down, np.minimum(z, _hinv(np.sqrt(tau / np.where(down, rho, 1.0)))), z)
    ltau = np.log(tau)
    for _ in range(50):
        ez = np.exp(z)
        h = _h(z)
        r = 2 * np.log(h) + np.log(kk / z + rho) - ltau
        if np.all(np.abs(r) < 1e-11):
            break
        slope = 2 * z * z * ez / h - kk / (kk + rho * z)
        z = np.where(down, z * np.exp(-r / slope), z)
    return z


def _capped_x(tau: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """SNR x with Q(x) + sigma x^2 = tau (power at p_max, downlink term sigma >= 0)."""
    x0 = _qinv(tau)
    down = sigma > 0
    if not down.any():
        return x0
    safe = np.where(down, sigma, 1.0)
    hi = np.where(down, np.minimum(x0, np.sqrt(tau / safe)), x0)
    lo = np.minimum(np.minimum(_qinv(tau / 2), np.sqrt(tau / (2 * safe))), hi)
    ltau = np.log(tau)

    def fun(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = _q(x) + sigma * x * x
        return np.log(g) - ltau, x * (_dq(x) + 2 * sigma * x) / g

    return np.where(down, _bracketed_newton(fun, lo, hi), x0)


@dataclass
class ContinuousSolution:
    """Optimal continuous resources for one choice of parameter sets."""

    b: np.ndarray  # Hz
    p: np.ndarray  # W
    f: np.ndarray  # device cycles/s
    f_s: np.ndarray  # server cycles/s
    t_enc: np.ndarray
    t_tx: np.ndarray
    t_dl: np.ndarray
    t_srv: np.ndarray
    t_lat: np.ndarray  # fixed refresh latency
    e_enc: np.ndarray  # J, device CPU (encryption, decryption, refresh answers)
    e_tx: np.ndarray
    e_rx: np.ndarray  # device receiving the downlink
    e_srv: np.ndarray
    e_dl: np.ndarray  # base station sending the downlink
    energy: float  # sum w1 (e_enc + e_tx + e_rx) + w2 (e_srv + e_dl)
    prices: dict[str, float] = field(default_factory=dict)
    lam: np.ndarray | None = None
    evaluations: int = 0
    history: list[float] = field(default_factory=list)


def check_user_deadlines(problem: Problem, costs: UserCosts, fixed_b: np.ndarray | None = None) -> np.ndarray:
    """Users whose deadline is missed even with all bandwidth, p_max, f_max and all server capacity."""
    s = problem.scenario
    bw = np.full(problem.n_users, s.bandwidth_hz) if fixed_b is None else fixed_b
    rate = uplink_rate(bw, s.p_max_w, problem.g, problem.n0)
    t_min = (
        costs.device_cycles / s.f_max_hz
        + costs.bits / rate
        + costs.down_bits / (problem.eta * bw)
        + costs.server_cycles / s.server_hz
        + costs.latency
    )
    return np.flatnonzero(t_min > problem.deadlines * (1 + 1e-12))


class DualSolver:
    """Exact solver of the continuous stage by dual decomposition (see module docstring)."""

    def __init__(
        self,
        problem: Problem,
        tol: float = 1e-10,
        fixed_b: np.ndarray | None = None,
        fixed_p_max: bool = False,
    ) -> None:
        """``fixed_b`` pins each user's bandwidth and ``fixed_p_max`` every power at p_max (baselines);
        the remaining resources are still optimal."""
        self.problem = problem
        self.fixed_b = None if fixed_b is None else np.asarray(fixed_b, dtype=float)
        self.fixed_p_max = fixed_p_max
        self.tol = tol
        s = problem.scenario
        self.w1, self.w2, _ = s.weights
        self.T = problem.deadlines
        self._lam_guess: np.ndarray | None = None
        self._nu_guess: float | None = None
        self._mu_guess: float | None = None
        self.evals = 0

    # -- per-user closed forms -------------------------------------------------------------------
    def _response(
        self, c: UserCosts, lam: np.ndarray, nu: float | np.ndarray, mu: float | np.ndarray
    ) -> dict[str, np.ndarray]:
        """Every user's best resources at deadline prices ``lam`` and resource prices (scalars, or
        one per user in the batched solver)."""
        pr, s = self.problem, self.problem.scenario
        w1, w2 = self.w1, self.w2
        # device frequency from dE/df = deadline price (KKT), clipped to the CPU range
        f = np.minimum(np.maximum(np.cbrt(lam / (2.0 * w1 * s.kappa_device)), s.f_min_hz), s.f_max_hz)
        # server share: positive root of fs^3 + m fs^2 - l = 0 (Newton from an upper bound)
        lc = lam / (2.0 * w2 * s.kappa_server)
        fs = np.cbrt(lc)
        if np.any(mu > 0):
            m = mu / (2.0 * w2 * s.kappa_server * c.server_cycles)
            with np.errstate(divide="ignore"):
                fs = np.minimum(fs, np.sqrt(lc / m))
            for _ in range(8):
                fs = fs - (fs**3 + m * fs * fs - lc) / (3.0 * fs * fs + 2.0 * m * fs)
        cd = LN2 * c.bits
        cdl = c.down_bits / pr.eta  # downlink time x bandwidth
        gam = lam + w1 * s.rx_power_w  # price of downlink time: deadline + device receive power
        if self.fixed_b is not None:
            # fixed bandwidth: d/dt [w1 N0 b t (e^z - 1)/g + lambda t] = 0  <=>  h(z) = lambda g / (w1 N0 b)
            b = self.fixed_b.copy()
            z = _hinv(lam * pr.g / (w1 * pr.n0 * b))
            tx = cd / (b * z)
            p = pr.n0 * b * np.expm1(z) / pr.g
            cap = p > s.p_max_w
            if self.fixed_p_max:
                cap[:] = True
            p[cap] = s.p_max_w
            tx[cap] = cd[cap] / (b[cap] * np.log1p(s.p_max_w * pr.g[cap] / (pr.n0 * b[cap])))
            return _resources(c, f, fs, b, p, tx, cdl / b)
        # transmission: unconstrained power first
        a = w1 * pr.n0 / pr.g
        z = _free_z(nu * lam / a**2, cd, gam * cdl / lam)
        b = lam / (a * _h(z))
        tx = cd / (z * b)
        p = pr.n0 * b * np.expm1(z) / pr.g
        cap = p > s.p_max_w
        if self.fixed_p_max:
            cap[:] = True
        if cap.any():
            amp = s.p_max_w * pr.g[cap] / pr.n0
            wgt = w1 * s.p_max_w + lam[cap]
            nu_c = np.broadcast_to(nu, lam.shape)[cap]
            x = _capped_x(nu_c * amp**2 / (wgt * cd[cap]), gam[cap] * cdl[cap] / (wgt * cd[cap]))
            b[cap] = amp / x
            tx[cap] = cd[cap] / (b[cap] * np.log1p(x))
            p[cap] = s.p_max_w
        return _resources(c, f, fs, b, p, tx, cdl / b)

    def _lam_for(self, c: UserCosts, nu: float, mu: float) -> np.ndarray:
        self.evals += 1

        def slack(lam: np.ndarray) -> np.ndarray:
            r = self._response(c, lam, nu, mu)
            return r["t_enc"] + r["t_tx"] + r["t_dl"] + r["t_srv"] + c.latency - self.T

        x0 = self._lam_guess if self._lam_guess is not None else np.ones_like(self.T)
        lam, _, ok = root_decreasing(slack, x0, ftol=self.tol * self.T)
        if not ok.all():
            bad = np.flatnonzero(~ok)
            raise InfeasibleScenarioError("deadline", bad, "encryption + upload + server time exceeds T_n")
        self._lam_guess = lam
        return lam

    def _nu_for(self, c: UserCosts, mu: float) -> tuple[float, np.ndarray]:
        bw = self.problem.scenario.bandwidth_hz
        if self.fixed_b is not None:
            return 0.0, self._lam_for(c, 0.0, mu)

        def excess(nu: np.ndarray) -> np.ndarray:
            lam = self._lam_for(c, float(nu[0]), mu)
            return np.array([self._response(c, lam, float(nu[0]), mu)["b"].sum() - bw])

        x0 = np.array([self._nu_guess if self._nu_guess else 1e-7])
        cap = PRICE_CAP_FACTOR * float(energy_scale(self.problem, c).sum()) / bw
        nu, _, ok = root_decreasing(excess, x0, ftol=self.tol * bw, max_expand=16, x_max=max(cap, x0[0]))
        if not ok.all():
            raise self._shared_infeasible(c)
        self._nu_guess = float(nu[0])
        return float(nu[0]), self._lam_for(c, float(nu[0]), mu)

    def _shared_infeasible(self, c: UserCosts) -> InfeasibleScenarioError:
        s = self.problem.scenario
        need = c.bits / np.maximum(self.T - c.device_cycles / s.f_max_hz - c.latency, 1e-12)
        worst = np.argsort(-need)[: max(1, min(10, len(need)))]
        return InfeasibleScenarioError(
            "bandwidth/server capacity",
            sorted(worst.tolist()),
            f"the deadlines together need more than B = {s.bandwidth_hz:g} Hz and F_s = {s.server_hz:g} "
            "cycles/s (listed: the users with the largest upload rate demand)",
        )

    def user_lagrangian(self, costs: UserCosts, nu: float, mu: float) -> np.ndarray:
        """Per-user Lagrangian cost at fixed prices (inf where the user alone misses its deadline).

        l_n = min over the user's own resources of w1 (E_enc + E_tx) + w2 E_s + nu b_n + mu f_s,n,
        subject to its deadline; sum_n l_n - nu B - mu F_s bounds the optimum from below (weak duality).
        """
        late = check_user_deadlines(self.problem, costs, self.fixed_b)
        ok = np.ones(self.problem.n_users, dtype=bool)
        ok[late] = False

        def slack(lam: np.ndarray) -> np.ndarray:
            r = self._response(costs, lam, nu, mu)
            return r["t_enc"] + r["t_tx"] + r["t_dl"] + r["t_srv"] + costs.latency - self.T

        lam, _, found = root_decreasing(slack, np.ones_like(self.T), ftol=self.tol * self.T)
        r = self._response(costs, lam, nu, mu)
        s = self.problem.scenario
        e = self.w1 * (
            s.kappa_device * costs.device_cycles * r["f"] ** 2 + r["p"] * r["t_tx"] + s.rx_power_w * r["t_dl"]
        ) + self.w2 * (
            s.kappa_server * costs.server_cycles * r["f_s"] ** 2
            + self.problem.psd_dl * costs.down_bits / self.problem.eta
        )
        return np.where(ok & found, e + nu * r["b"] * (self.fixed_b is None) + mu * r["f_s"], np.inf)

    # -- the full solve -----------------------------------------------------------------------------
    def solve(self, costs: UserCosts) -> ContinuousSolution:
        """Optimal continuous resources for the given per-user workloads (raises if infeasible)."""
        pr, s = self.problem, self.problem.scenario
        late = check_user_deadlines(pr, costs, self.fixed_b)
        if late.size:
            raise InfeasibleScenarioError(
                "deadline", late, "missed even with all bandwidth, p_max, f_max and all server capacity"
            )
        # necessary condition (cheap): even with all the bandwidth each, the server shares must fit
        bw = np.full(pr.n_users, s.bandwidth_hz) if self.fixed_b is None else self.fixed_b
        t_left = (
            self.T
            - costs.device_cycles / s.f_max_hz
            - costs.bits / uplink_rate(bw, s.p_max_w, pr.g, pr.n0)
            - costs.down_bits / (pr.eta * bw)
            - costs.latency
        )
        if np.sum(costs.server_cycles / t_left) > s.server_hz:
            raise self._shared_infeasible(costs)
        self.evals = 0
        nu, lam = self._nu_for(costs, 0.0)
        mu = 0.0
        if self._response(costs, lam, nu, 0.0)["f_s"].sum() > s.server_hz:

            def excess(mu_arr: np.ndarray) -> np.ndarray:
                nonlocal nu, lam
                nu, lam = self._nu_for(costs, float(mu_arr[0]))
                return np.array([self._response(costs, lam, nu, float(mu_arr[0]))["f_s"].sum() - s.server_hz])

            x0 = np.array([self._mu_guess if self._mu_guess else 1e-12])
            cap = PRICE_CAP_FACTOR * float(energy_scale(pr, costs).sum()) / s.server_hz
            mu_arr, _, ok = root_decreasing(
                excess, x0, ftol=self.tol * s.server_hz, max_expand=16, x_max=max(cap, x0[0])
            )
            if not ok.all():
                raise self._shared_infeasible(costs)
            mu = float(mu_arr[0])
            self._mu_guess = mu
            nu, lam = self._nu_for(costs, mu)
        r = self._response(costs, lam, nu, mu)
        return make_solution(
            pr,
            costs,
            r["b"],
            r["p"],
            r["f"],
            r["f_s"],
            prices={"nu": nu, "mu": mu},
            lam=lam,
            evaluations=self.evals,
        )


def make_solution(
    problem: Problem,
    costs: UserCosts,
    b: np.ndarray,
    p: np.ndarray,
    f: np.ndarray,
    f_s: np.ndarray,
    **extra: object,
) -> ContinuousSolution:
    """Energies and times of an allocation (the single place where the model is evaluated)."""
    s = problem.scenario
    w1, w2, _ = s.weights
    b = np.asarray(b, float)
    rate = uplink_rate(b, p, problem.g, problem.n0)
    with np.errstate(divide="ignore"):
        t_tx = np.where(rate > 0, costs.bits / np.maximum(rate, 1e-300), np.inf)
        t_dl = np.where(b > 0, costs.down_bits / (problem.eta * np.maximum(b, 1e-300)), np.inf)
    e_enc = s.kappa_device * costs.device_cycles * f**2
    e_tx = p * t_tx
    e_rx = s.rx_power_w * t_dl
    e_srv = s.kappa_server * costs.server_cycles * f_s**2
    e_dl = problem.psd_dl * costs.down_bits / problem.eta  # S_dl b t_dl: independent of b
    energy = float(np.sum(w1 * (e_enc + e_tx + e_rx) + w2 * (e_srv + e_dl)))
    return ContinuousSolution(
        b=b,
        p=np.asarray(p, float),
        f=np.asarray(f, float),
        f_s=np.asarray(f_s, float),
        t_enc=costs.device_cycles / f,
        t_tx=t_tx,
        t_dl=t_dl,
        t_srv=costs.server_cycles / f_s,
        t_lat=costs.latency,
        e_enc=e_enc,
        e_tx=e_tx,
        e_rx=e_rx,
        e_srv=e_srv,
        e_dl=e_dl,
        energy=energy,
        **extra,  # type: ignore[arg-type]
    )


def _resources(
    c: UserCosts,
    f: np.ndarray,
    fs: np.ndarray,
    b: np.ndarray,
    p: np.ndarray,
    tx: np.ndarray,
    t_dl: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per-user resources with the stage times they imply (device CPU, uplink, downlink, server)."""
    return {
        "f": f,
        "f_s": fs,
        "b": b,
        "p": p,
        "t_enc": c.device_cycles / f,
        "t_tx": tx,
        "t_dl": t_dl,
        "t_srv": c.server_cycles / fs,
    }
