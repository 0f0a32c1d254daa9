"""The encoder's forward and backward, written once over a backend (ours).

:class:`EncoderGraph` holds the frozen plaintext weights (padded to the packing's width) and runs
BERT on a :mod:`p3eft.privtuner.backend`: the twin (NumPy) or the encrypted path (ciphertexts).
The trained parameters -- LoRA A and B of query and value in the adapted layers, and the classifier
-- come in as a dict of logical matrices (:func:`param_matrices` lays them out):

* ``L{l}.{q|v}.A{i}``: every row holds row i of A (so A x is a product and a feature sum);
* ``L{l}.{q|v}.B{i}``: every row holds column i of B;
* ``head.W{c}``: row 0 holds row c of the classifier, other rows 0; ``head.b{c}``: row 0 holds b_c.

Order of operations (the twin follows it exactly, since it is this code):
softmax by normalise-and-square (see :meth:`EncoderGraph.layer`), with the key mask m applied to the
first exps; LayerNorm as (c * gamma) * inv_sqrt(mean(c^2) + eps) + beta with c = x - mean(x); the
embedding LayerNorm's centering fused with the removal of the secret rotation; LoRA as
sum_i (s * <x, A_i>) B_i with s = alpha / r.

Backward (ours): the data owner's dL/dlogits enters at the classifier; derivatives use the forward's
own values where the function allows it (softmax from its probabilities, tanh' = 1 - tanh^2) and a
fitted polynomial for GELU'; softmax, LayerNorm and attention backward follow the textbook formulas.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from p3eft.privtuner.backend import Linear
from p3eft.privtuner.config import PrivTunerConfig
from p3eft.privtuner.model import EncoderWeights
from p3eft.privtuner.packing import PackingSpec
from p3eft.privtuner.rotation import centering_derotation
from p3eft.privtuner.standardize import HeadStandardizer


def _pad(spec: PackingSpec, w: np.ndarray) -> np.ndarray:
    out = np.zeros((spec.width, spec.width))
    out[: w.shape[0], : w.shape[1]] = w
    return out


def _padv(spec: PackingSpec, b: np.ndarray) -> np.ndarray:
    out = np.zeros(spec.width)
    out[: b.shape[0]] = b
    return out


def param_matrices(
    spec: PackingSpec,
    cfg: PrivTunerConfig,
    lora: dict[str, np.ndarray],
    head_w: np.ndarray,
    head_b: np.ndarray,
    head_std: HeadStandardizer | None = None,
) -> dict[str, np.ndarray]:
    """Plain LoRA factors and head -> the logical matrices the graph takes (see module doc).

    ``lora`` maps ``L{l}.{q|v}.A`` (r x hidden) and ``L{l}.{q|v}.B`` (hidden x r) to arrays. With
    ``head_std`` the head is written in standardized coordinates (:mod:`p3eft.privtuner.standardize`).
    """
    if head_std is not None:
        head_w, head_b = head_std.to_standardized(head_w, head_b)
    out: dict[str, np.ndarray] = {}
    seq = spec.seq
    for name, mat in lora.items():
        prefix, which = name.rsplit(".", 1)
        if which == "A":
            for i in range(mat.shape[0]):
                out[f"{prefix}.A{i}"] = np.repeat(spec.pad_features(mat[i])[None, :], seq, axis=0)
        else:
            for i in range(mat.shape[1]):
                out[f"{prefix}.B{i}"] = np.repeat(spec.pad_features(mat[:, i])[None, :], seq, axis=0)
    for c in range(head_w.shape[0]):
        w = np.zeros((seq, spec.width))
        w[0] = spec.pad_features(head_w[c])
        b = np.zeros((seq, spec.width))
        b[0] = head_b[c]
        out[f"head.W{c}"], out[f"head.b{c}"] = w, b
    return out


def matrices_to_params(
    spec: PackingSpec,
    cfg: PrivTunerConfig,
    hidden: int,
    mats: dict[str, np.ndarray],
    head_std: HeadStandardizer | None = None,
) -> dict[str, np.ndarray]:
    """Inverse of :func:`param_matrices`: ``L{l}.{q|v}.A``/``.B``, ``head.W``, ``head.b`` arrays (the
    head in plain coordinates: ``head_std`` folds a standardized head back)."""
    out: dict[str, np.ndarray] = {}
    groups: dict[str, dict[int, np.ndarray]] = {}
    for name, m in mats.items():
        if name.startswith("head."):
            continue
        prefix, tail = name.rsplit(".", 1)
        groups.setdefault(f"{prefix}.{tail[0]}", {})[int(tail[1:])] = m[0, :hidden]
    for key, rows in groups.items():
        stacked = np.stack([rows[i] for i in range(len(rows))])
        out[key] = stacked if key.endswith(".A") else stacked.T
    labels = sorted(int(n[len("head.W") :]) for n in mats if n.startswith("head.W"))
    out["head.W"] = np.stack([mats[f"head.W{c}"][0, :hidden] for c in labels])
    out["head.b"] = np.array([mats[f"head.b{c}"][0, 0] for c in labels])
    if head_std is not None:
        out["head.W"], out["head.b"] = head_std.to_plain(out["head.W"], out["head.b"])
    return out


@dataclass
class _LayerCache:
    x: Any = None
    q: Any = None
    k: Any = None
    v: Any = None
    ps: list[Any] = field(default_factory=list)  # attention probabilities, one per row offset
    ln1: tuple[Any, Any, Any] | None = None  # (centred input, inv_s, sqrt(sigma))
    ln2: tuple[Any, Any, Any] | None = None
    y1: Any = None
    fs: list[Any] = field(default_factory=list)
    lora: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class ForwardCache:
    """What backward needs from one forward pass (backend values; ciphertexts on the encrypted path)."""

    km: Any = None
    layers: dict[int, _LayerCache] = field(default_factory=dict)
    pooled: Any = None
    feat: Any = None  # the classifier's input: ``pooled``, or its standardization


class EncoderGraph:
    """BERT forward/backward over a backend, with frozen plaintext weights padded to the packing."""

    def __init__(self, weights: EncoderWeights, cfg: PrivTunerConfig, spec: PackingSpec, rot: np.ndarray):
        self.w, self.cfg, self.spec = weights, cfg, spec
        self.d, self.heads, self.dh = weights.hidden, weights.heads, weights.head_dim
        self.inv_sqrt_dh = 1.0 / math.sqrt(self.dh)
        p, pv = (lambda m: _pad(spec, m)), (lambda b: _padv(spec, b))
        self.emb_center = Linear("emb.center", p(centering_derotation(rot)), None)
        self.emb_g, self.emb_b = pv(weights.emb_ln_g), pv(weights.emb_ln_b)
        row0 = np.zeros(spec.seq)
        row0[0] = 1.0
        self.pool = Linear("pool", p(weights.pooler_w), pv(weights.pooler_b), row0)
        self.pool_t = Linear("pool.T", p(weights.pooler_w.T), None, row0)
        self.lin: dict[str, Linear] = {}
        w = spec.width
        for li, lw in enumerate(weights.layers):
            for nm, mat, b in (
                ("q", lw.wq, lw.bq),
                ("k", lw.wk, lw.bk),
                ("v", lw.wv, lw.bv),
                ("o", lw.wo, lw.bo),
            ):
                self.lin[f"L{li}.{nm}"] = Linear(f"L{li}.{nm}", p(mat), pv(b))
                self.lin[f"L{li}.{nm}.T"] = Linear(f"L{li}.{nm}.T", p(mat.T), None)
            inter = lw.w1.shape[0]
            for c in range(-(-inter // w)):
                sl = slice(c * w, min((c + 1) * w, inter))
                self.lin[f"L{li}.w1.{c}"] = Linear(f"L{li}.w1.{c}", p(lw.w1[sl]), pv(lw.b1[sl]))
                self.lin[f"L{li}.w1.{c}.T"] = Linear(f"L{li}.w1.{c}.T", p(lw.w1[sl].T), None)
                self.lin[f"L{li}.w2.{c}"] = Linear(
                    f"L{li}.w2.{c}", p(lw.w2[:, sl]), pv(lw.b2) if c == 0 else None
                )
                self.lin[f"L{li}.w2.{c}.T"] = Linear(f"L{li}.w2.{c}.T", p(lw.w2[:, sl].T), None)
        self.chunks = -(-weights.intermediate // w)

    def _scaled(self, lin: Linear, factor: float | np.ndarray, offset: float | np.ndarray = 0.0) -> Linear:
        """``lin`` with its output multiplied by ``factor`` (an approximation's input scale, folded
        into the weights so it costs no level): a scalar, or one factor per output slot (seq, width),
        folded into the kernel's diagonals and the bias, minus one ``offset`` per slot, folded into
        the bias (GELU's per-slot range classes, ours)."""
        if np.ndim(factor) == 0 and np.ndim(offset) == 0 and float(offset) == 0.0:
            f = float(factor)
            if f == 1.0:
                return lin
            key = f"{lin.key}@{f!r}"
            if key not in self.lin:
                bias = None if lin.bias is None else lin.bias * f
                self.lin[key] = Linear(key, lin.weight * f, bias, lin.row_mask)
            return self.lin[key]
        shape = (self.spec.seq, self.spec.width)
        m = np.ascontiguousarray(np.broadcast_to(factor, shape), dtype=np.float64)
        o = np.ascontiguousarray(np.broadcast_to(offset, shape), dtype=np.float64)
        key = f"{lin.key}@slots:{hashlib.sha1(m.tobytes() + o.tobytes()).hexdigest()[:16]}"
        if key not in self.lin:
            self.lin[key] = Linear(key, lin.weight, lin.bias, lin.row_mask, out_scale=m, out_offset=o)
        return self.lin[key]

    @staticmethod
    def _chunk(scale: float | np.ndarray, c: int) -> float | np.ndarray:
        """Chunk ``c``'s part of a per-slot scale (chunks, seq, width); a scalar stays as it is."""
        return scale[c] if np.ndim(scale) == 3 else scale  # type: ignore[index]

    # ----- pieces --------------------------------------------------------------------------------
    def _ln(self, bk: Any, h: Any, gamma: np.ndarray, beta: np.ndarray, site: str, centered: Any = None):
        """LayerNorm with the variance scaled by sigma into the site's range (ours): sigma is a
        scalar or one public factor per position (row 0, [CLS], has its own: see calibration).

        sqrt(sigma / d) multiplies the centred values before they are squared, so the feature sum
        adds values of order one under a mask of ones (one level more than folding sigma / d into
        that mask). Why: a plaintext vector's encoding error (~3e-11 per slot at a 2^40 scale)
        multiplies the large values the mask zeroes; with minilm-l6's [CLS] row (squares up to 5e4,
        sigma / d ~ 4e-5) the folded form put a relative error of ~3e-5 on the variance.
        sqrt(sigma) is folded into gamma."""
        d = self.d
        sigma = bk.fns.in_scale(site)
        rs = np.sqrt(sigma)
        c = centered if centered is not None else bk.sub(h, bk.feature_sum(h, d, 1.0 / d))
        c_s = bk.mul_plain(c, self._per_row(rs / np.sqrt(d)))
        var_s = bk.feature_sum(bk.mul(c_s, c_s), d, 1.0)
        inv_s = bk.fn(site, bk.add_plain(var_s, self._per_row(self.w.ln_eps * sigma)))
        y = bk.add_plain(bk.mul(bk.mul_plain(c, self._per_row(rs, gamma)), inv_s), beta)
        return y, (c, inv_s, rs)

    def _per_row(self, factor: float | np.ndarray, row: np.ndarray | None = None) -> Any:
        """``factor * row`` as a plaintext operand: a scalar factor keeps its old form (a scalar or a
        (width,) row); per-row factors give the (seq, width) matrix factor_r * row (ones if no row)."""
        if np.isscalar(factor) or np.ndim(factor) == 0:
            f = float(factor)
            return f if row is None else row * f
        base = np.ones(self.spec.width) if row is None else row
        return np.outer(np.asarray(factor, dtype=np.float64), base)

    def _ln_back(self, bk: Any, dy: Any, cache: tuple[Any, Any, Any], gamma: np.ndarray) -> Any:
        """dx = inv * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), with inv = sqrt(sigma) inv_s."""
        c, inv_s, rs = cache
        d = self.d
        dxhat = bk.mul_plain(dy, self._per_row(rs, gamma))
        xhat = bk.mul(bk.mul_plain(c, self._per_row(rs)), inv_s)
        m1 = bk.feature_sum(dxhat, d, 1.0 / d)
        m2 = bk.feature_sum(bk.mul(dxhat, xhat), d, 1.0 / d)
        return bk.mul(inv_s, bk.sub(bk.sub(dxhat, m1), bk.mul(xhat, m2)))

    def _lora(self, bk: Any, x: Any, params: dict[str, Any], prefix: str, store: list[Any]) -> Any:
        s = self.cfg.lora_scaling
        total = None
        for i in range(self.cfg.lora_rank):
            u = bk.feature_sum(bk.mul(x, params[f"{prefix}.A{i}"]), self.d, s)
            store.append(u)
            t = bk.mul(u, params[f"{prefix}.B{i}"])
            total = t if total is None else bk.add(total, t)
        return total

    def _lora_back(
        self,
        bk: Any,
        dy: Any,
        x: Any,
        us: list[Any],
        params: dict[str, Any],
        prefix: str,
        grads: dict,
        need_dx: bool,
    ) -> Any:
        s = self.cfg.lora_scaling
        dx = None
        for i in range(self.cfg.lora_rank):
            grads[f"{prefix}.B{i}"] = bk.row_sum(bk.mul(dy, us[i]))
            du = bk.feature_sum(bk.mul(dy, params[f"{prefix}.B{i}"]), self.d, s)
            grads[f"{prefix}.A{i}"] = bk.row_sum(bk.mul(du, x))
            if need_dx:
                t = bk.mul(du, params[f"{prefix}.A{i}"])
                dx = t if dx is None else bk.add(dx, t)
        return dx

    def adapted(self, layer: int) -> bool:
        return layer >= self.cfg.adapt_from

    # ----- forward -------------------------------------------------------------------------------
    def embed(self, bk: Any, x_rot: Any) -> Any:
        """Remove the rotation and LayerNorm the embeddings (the first encrypted linear step)."""
        c = bk.lin(self.emb_center, x_rot)
        y, _ = self._ln(bk, None, self.emb_g, self.emb_b, "emb.inv_sqrt", centered=c)
        return y

    def layer(
        self, bk: Any, li: int, x: Any, km: Any, params: dict[str, Any], cache: _LayerCache | None
    ) -> Any:
        lw = self.lin
        shift, rounds = bk.fns.shift(li), bk.fns.softmax_rounds(li)
        train = cache is not None and self.adapted(li)
        lora_q: list[Any] = []
        lora_v: list[Any] = []
        q = bk.lin(lw[f"L{li}.q"], x)
        if self.adapted(li):
            q = bk.add(q, self._lora(bk, x, params, f"L{li}.q", lora_q))
        k = bk.lin(lw[f"L{li}.k"], x)
        v = bk.lin(lw[f"L{li}.v"], x)
        if self.adapted(li):
            v = bk.add(v, self._lora(bk, x, params, f"L{li}.v", lora_v))
        # softmax by normalise-and-square (ours): a_d ~ exp((s_d - shift) / 2^r) on a narrow range,
        # masked, normalised to a distribution, then r rounds of z <- z^2 / sum z^2, which ends at
        # exp(s_d) / sum exp(s): every reciprocal sees a sum in [~1/seq, ~seq], whatever the scores
        reduce = 2.0**rounds
        zs = []
        for delta in range(self.spec.seq):
            s = bk.head_sum(bk.mul(q, bk.rot_rows(k, delta)), self.dh, self.heads, self.inv_sqrt_dh / reduce)
            e = bk.fn(f"L{li}.exp", bk.add_plain(s, -shift / reduce))
            zs.append(bk.mul(e, bk.rot_rows(km, delta)))
        zs = self._normalise(bk, zs, f"L{li}.recip0")
        for rnd in range(1, rounds + 1):
            zs = self._normalise(bk, [bk.mul(z, z) for z in zs], f"L{li}.recip{rnd}")
        att = None
        for delta, z in enumerate(zs):
            t = bk.mul(z, bk.rot_rows(v, delta))
            att = t if att is None else bk.add(att, t)
        h1 = bk.add(x, bk.lin(lw[f"L{li}.o"], att))
        lay = self.w.layers[li]
        y1, ln1 = self._ln(
            bk, h1, _padv(self.spec, lay.ln1_g), _padv(self.spec, lay.ln1_b), f"L{li}.ln1.inv_sqrt"
        )
        f2 = None
        fs = []
        gelu_scale, gelu_offset = bk.fns.in_scale(f"L{li}.gelu"), bk.fns.in_offset(f"L{li}.gelu")
        for c in range(self.chunks):
            up = self._scaled(lw[f"L{li}.w1.{c}"], self._chunk(gelu_scale, c), self._chunk(gelu_offset, c))
            f = bk.lin(up, y1)
            fs.append(f)
            t = bk.lin(lw[f"L{li}.w2.{c}"], bk.fn(f"L{li}.gelu", f, part=c))
            f2 = t if f2 is None else bk.add(f2, t)
        h2 = bk.add(y1, f2)
        y2, ln2 = self._ln(
            bk, h2, _padv(self.spec, lay.ln2_g), _padv(self.spec, lay.ln2_b), f"L{li}.ln2.inv_sqrt"
        )
        if train:
            assert cache is not None
            cache.x, cache.q, cache.k, cache.v, cache.ps = x, q, k, v, zs
            cache.ln1, cache.ln2, cache.y1, cache.fs = ln1, ln2, y1, fs
            cache.lora = {"q": lora_q, "v": lora_v}
        return y2

    def head(self, bk: Any, x: Any, params: dict[str, Any], cache: ForwardCache | None) -> Any:
        pooled = bk.fn("pool.tanh", bk.lin(self._scaled(self.pool, bk.fns.in_scale("pool.tanh")), x))
        feat = pooled
        hs = bk.fns.head_std
        if hs is not None:  # (pooled - mean) * inv_std: one plaintext product and sum (ours)
            seq, w = self.spec.seq, self.spec.width
            feat = bk.add_plain(
                bk.mul_plain(pooled, hs.row0(hs.inv_std, seq, w)), hs.row0(-hs.mean * hs.inv_std, seq, w)
            )
        if cache is not None:
            cache.pooled, cache.feat = pooled, feat
        per_label = []
        for c in range(self.w.num_labels):
            lg = bk.add(bk.feature_sum(bk.mul(feat, params[f"head.W{c}"]), self.d, 1.0), params[f"head.b{c}"])
            per_label.append(lg)
        return bk.logits(per_label)

    def forward_frozen(self, bk: Any, x_rot: Any, km: Any) -> Any:
        """Embeddings and the frozen layers below ``adapt_from`` (the same output every epoch)."""
        x = self.embed(bk, x_rot)
        for li in range(self.cfg.adapt_from):
            x = self.layer(bk, li, x, km, {}, None)
        return x

    def forward_adapted(
        self, bk: Any, x: Any, km: Any, params: dict[str, Any], cache: ForwardCache | None
    ) -> Any:
        """The adapted layers and the head, from the frozen prefix's output."""
        if cache is not None:
            cache.km = km
        for li in range(self.cfg.adapt_from, len(self.w.layers)):
            lc = None
            if cache is not None:
                lc = cache.layers.setdefault(li, _LayerCache())
            x = self.layer(bk, li, x, km, params, lc)
        return self.head(bk, x, params, cache)

    def _normalise(self, bk: Any, zs: list[Any], site: str) -> list[Any]:
        total = zs[0]
        for z in zs[1:]:
            total = bk.add(total, z)
        inv = bk.fn(site, total)
        return [bk.mul(z, inv) for z in zs]

    # ----- backward ------------------------------------------------------------------------------
    def backward(
        self, bk: Any, cache: ForwardCache, dlogits: list[Any], params: dict[str, Any]
    ) -> dict[str, Any]:
        """Gradients of every trained parameter (same layout as the parameter), from dL/dlogits."""
        grads: dict[str, Any] = {}
        p = cache.pooled
        dp = None
        for c, g in enumerate(dlogits):
            grads[f"head.W{c}"] = bk.mul(g, cache.feat)
            grads[f"head.b{c}"] = g
            t = bk.mul(g, params[f"head.W{c}"])
            dp = t if dp is None else bk.add(dp, t)
        hs = bk.fns.head_std
        if hs is not None:  # d feat / d pooled = inv_std
            dp = bk.mul_plain(dp, hs.row0(hs.inv_std, self.spec.seq, self.spec.width))
        one_minus_p2 = bk.add_plain(bk.neg(bk.mul(p, p)), 1.0)
        dy = bk.lin(self.pool_t, bk.mul(dp, one_minus_p2))
        for li in range(len(self.w.layers) - 1, self.cfg.adapt_from - 1, -1):
            dy = self._layer_back(
                bk, li, cache.layers[li], cache.km, dy, params, grads, li > self.cfg.adapt_from
            )
        return grads

    def _layer_back(
        self, bk: Any, li: int, lc: _LayerCache, km: Any, dy2: Any, params: dict, grads: dict, need_dx: bool
    ) -> Any:
        lw = self.lin
        lay = self.w.layers[li]
        assert lc.ln1 is not None and lc.ln2 is not None
        dh2 = self._ln_back(bk, dy2, lc.ln2, _padv(self.spec, lay.ln2_g))
        dy1 = dh2
        for c in range(self.chunks):
            dg = bk.lin(lw[f"L{li}.w2.{c}.T"], dh2)
            df = bk.mul(dg, bk.fn(f"L{li}.gelu_grad", lc.fs[c], part=c))
            dy1 = bk.add(dy1, bk.lin(lw[f"L{li}.w1.{c}.T"], df))
        dh1 = self._ln_back(bk, dy1, lc.ln1, _padv(self.spec, lay.ln1_g))
        datt = bk.lin(lw[f"L{li}.o.T"], dh1)
        # softmax backward: ds = P * (dP - sum_d P_d dP_d), dP pre-scaled by 1/sqrt(dh)
        dps = [
            bk.head_sum(bk.mul(datt, bk.rot_rows(lc.v, delta)), self.dh, self.heads, self.inv_sqrt_dh)
            for delta in range(self.spec.seq)
        ]
        centre = None
        for p_d, dp_d in zip(lc.ps, dps, strict=True):
            t = bk.mul(p_d, dp_d)
            centre = t if centre is None else bk.add(centre, t)
        dq = dk = dv = None
        for delta in range(self.spec.seq):
            ds = bk.mul(lc.ps[delta], bk.sub(dps[delta], centre))
            t = bk.mul(ds, bk.rot_rows(lc.k, delta))
            dq = t if dq is None else bk.add(dq, t)
            if need_dx:
                t = bk.rot_rows(bk.mul(ds, lc.q), -delta)
                dk = t if dk is None else bk.add(dk, t)
            t = bk.rot_rows(bk.mul(lc.ps[delta], datt), -delta)
            dv = t if dv is None else bk.add(dv, t)
        dxq = self._lora_back(bk, dq, lc.x, lc.lora["q"], params, f"L{li}.q", grads, need_dx)
        dxv = self._lora_back(bk, dv, lc.x, lc.lora["v"], params, f"L{li}.v", grads, need_dx)
        if not need_dx:
            return None
        dx = bk.add(dh1, bk.lin(lw[f"L{li}.q.T"], dq))
        dx = bk.add(dx, bk.lin(lw[f"L{li}.k.T"], dk))
        dx = bk.add(dx, bk.lin(lw[f"L{li}.v.T"], dv))
        for t in (dxq, dxv):
            if t is not None:
                dx = bk.add(dx, t)
        return dx
