"""Model owner's encrypted encoder: forward, backward and (via the adapter) SGD on ciphertexts (ours).

:class:`EncryptedEncoder` runs :class:`~p3eft.privtuner.graph.EncoderGraph` on the
:class:`~p3eft.privtuner.backend.CipherBackend` with a PUBLIC :class:`~p3eft.fhe.context.CkksContext`
(the data owner's keys) and a :class:`~p3eft.fhe.nonlinear.Refresher` (``LocalRefresher`` in tests,
``RemoteRefresher`` over a Channel in the protocol): linear layers are plaintext-weight diagonal
kernels, attention and the LoRA branch ciphertext x ciphertext products, softmax, LayerNorm, GELU
and tanh the calibrated engine approximations, depth restored by the refresher.

API (stable):

* ``EncryptedEncoder(model, fns, ctx, refresher, pool=None)``: with a
  :class:`~p3eft.fhe.parallel.KernelPool`, the plaintext-weight products run on its workers;
* ``forward(cts, adapter, cache_key=None, keep=True) -> Ciphertext``: ``cts`` are the data owner's
  ciphertexts in :func:`p3eft.privtuner.packing.pack_example` order (``spec.cts`` token ciphertexts,
  then ``spec.cts`` key-mask ciphertexts); returns the logits ciphertext (logit c in row c, see
  :func:`p3eft.privtuner.packing.unpack_logits`). ``cache_key`` caches the frozen layers' output.
  ``keep`` keeps what :meth:`backward` needs;
* ``backward(dlogits) -> None``: ``dlogits`` are the data owner's encrypted dL/dlogits in
  :func:`p3eft.privtuner.packing.pack_dlogits` order; accumulates the encrypted gradients into the
  adapter; ``adapter.apply_sgd(lr, refresher)`` then updates it;
* ``stats``: seconds and counts per kind of work (linear, ct_x_ct, nonlinear, refresh, ...).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from p3eft.errors import P3eftError, ProtocolError
from p3eft.fhe.context import Ciphertext, CkksContext
from p3eft.fhe.galois import rotation_key_steps
from p3eft.fhe.nonlinear import Refresher
from p3eft.fhe.parallel import KernelPool
from p3eft.fhe.params import ParamSet
from p3eft.fhe.refresh import refresh_floor
from p3eft.privtuner.adapter import EncryptedAdapter
from p3eft.privtuner.approx import FnSet
from p3eft.privtuner.backend import CipherBackend, galois_steps
from p3eft.privtuner.graph import ForwardCache
from p3eft.privtuner.twin import PrivTunerModel

# ours: frozen-layer outputs kept per session (least recently used evicted; one entry is a few MB)
MAX_FROZEN_ENTRIES = 1024


def rotation_steps(model: PrivTunerModel) -> list[int]:
    """Every rotation step the encrypted model makes."""
    return galois_steps(model.spec, model.weights.heads, model.weights.head_dim)


def required_galois_steps(model: PrivTunerModel) -> list[int]:
    """The steps the data owner must generate Galois keys for: every rotation step of the encrypted
    model (``rotation_keys="exact"``), or the powers of two those compose from (``"pow2"``, fewer keys
    and more key switches per rotation; :mod:`p3eft.fhe.galois`)."""
    return rotation_key_steps(rotation_steps(model), model.cfg.params.slots, model.cfg.rotation_keys)


class ChainTooShallowError(P3eftError):
    """A CKKS chain on which one of the model's approximations cannot run between two refreshes."""


def check_chain_depth(params: ParamSet, fns: FnSet, bound: float, lam: int) -> None:
    """Refuse ``params`` when a calibrated approximation needs more levels in one phase than a
    refreshed ciphertext has above the refresh floor (ours).

    Why: a refresh returns a ciphertext at the top level and itself needs the floor's level, so a
    phase of d levels needs top - floor >= d. Without this check such a chain fails in the middle of
    the first encrypted pass, after the key generation and upload (minilm-l6's degree-16 GELU on
    ``PT32768-d5``). A scale reset that must follow a refresh takes one of its levels; the backend
    then refreshes once more rather than run a phase short of levels
    (:meth:`~p3eft.privtuner.backend.CipherBackend._fresh`)."""
    depth, site = fns.deepest_phase()
    floor = refresh_floor(params, bound, lam)
    room = params.top_level - floor
    if depth > room:
        raise ChainTooShallowError(
            f"{params.name} cannot run this model: {site} needs {depth} levels between two refreshes, "
            f"and a refreshed ciphertext has {room} above the refresh floor (level {floor} for "
            f"bound {bound:g}, lambda {lam}); choose a deeper parameter set"
        )


class EncryptedEncoder:
    """The encrypted model (model owner). One instance per data-owner session."""

    def __init__(
        self,
        model: PrivTunerModel,
        fns: FnSet,
        ctx: CkksContext,
        refresher: Refresher,
        pool: KernelPool | None = None,
    ) -> None:
        if fns.exact:
            raise ProtocolError("the encrypted encoder needs calibrated approximations, not exact functions")
        self.model = model
        self.ctx = ctx
        self.backend = CipherBackend(ctx, model.spec, fns, refresher, pool)
        # frozen layers' outputs per example key, least recently used first: a cache, so a data owner
        # sending ever new keys costs the model owner recomputation, not unbounded memory
        self._frozen: OrderedDict[Any, list[Ciphertext]] = OrderedDict()
        self.max_frozen = MAX_FROZEN_ENTRIES
        self._cache: ForwardCache | None = None
        self._adapter: EncryptedAdapter | None = None

    @property
    def stats(self) -> dict[str, Any]:
        return self.backend.stats.as_dict()

    def _split(self, cts: list[Ciphertext]) -> tuple[list[Ciphertext], list[Ciphertext]]:
        n = self.model.spec.cts
        if len(cts) != 2 * n:
            raise ProtocolError(f"an example is {2 * n} ciphertexts (tokens then key mask), got {len(cts)}")
        for c in cts:
            self.ctx.check(c)
        return list(cts[:n]), list(cts[n:])

    def forward(
        self, cts: list[Ciphertext], adapter: EncryptedAdapter, cache_key: Any = None, keep: bool = True
    ) -> Ciphertext:
        x_rot, km = self._split(cts)
        g = self.model.graph
        if cache_key is not None and cache_key in self._frozen:
            x = self._frozen[cache_key]
            self._frozen.move_to_end(cache_key)
        else:
            x = g.forward_frozen(self.backend, x_rot, km)
            if cache_key is not None and self.model.cfg.adapt_from > 0:
                self._frozen[cache_key] = x
                while len(self._frozen) > self.max_frozen:
                    self._frozen.popitem(last=False)
        self._cache = ForwardCache() if keep else None
        self._adapter = adapter
        return g.forward_adapted(self.backend, x, km, adapter.mats, self._cache)

    def backward(self, dlogits: list[Ciphertext]) -> None:
        if self._cache is None or self._adapter is None:
            raise ProtocolError("backward needs a forward pass with keep=True first")
        n, labels = self.model.spec.cts, self.model.weights.num_labels
        if len(dlogits) != n * labels:
            raise ProtocolError(f"dL/dlogits is {n * labels} ciphertexts, got {len(dlogits)}")
        for c in dlogits:
            self.ctx.check(c)
        per_label = [list(dlogits[c * n : (c + 1) * n]) for c in range(labels)]
        grads = self.model.graph.backward(self.backend, self._cache, per_label, self._adapter.mats)
        self._adapter.accumulate(grads, add=self.backend.add)
        self._cache = None
