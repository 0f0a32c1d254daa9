"""How an example's token matrix sits in CKKS slots (ours): token rows, features replicated per block.

Every value PrivTuner handles is a logical matrix with one row per token position (``seq`` rows,
padded to ``rows_per_ct * cts``) and ``width`` feature columns (the hidden size padded to a power of
two). Row ``t`` lives in ciphertext ``t // rows_per_ct`` at block ``t % rows_per_ct``; a block has
``block`` slots and holds the row's ``width`` features repeated with period ``width`` (the engine's
``rows_rep`` form). Why this layout:

* a plaintext-weight product is one engine-style diagonal kernel per ciphertext serving all its rows
  at once (``width`` diagonals; the periodic copies let the rotations stay inside the block);
* element-wise products, polynomials and Newton steps act on every slot, and every slot holds a value
  the plaintext twin also computes, so calibrated ranges cover every slot (no hidden garbage slot
  can leave a range and spoil its ciphertext);
* row rotations (attention: token r meets token r+delta) are rotations by multiples of ``block``;
  ``rows_per_ct * block`` fills all slots, so they are cyclic inside a ciphertext. When the whole
  sequence fits one ciphertext several times over, the token rows repeat with period ``seq``
  (``copies`` times), which keeps rotations cyclic while the block stays at its minimum 2*width
  (a wide block would cost extra rotations in every replication and sum).

The data owner packs its rotated embeddings and the key mask (1 for a real token, 0 for padding) with
:func:`pack_example`; the mask travels encrypted, so the model owner does not learn the length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from p3eft.errors import P3eftError
from p3eft.fhe import packing as fhe_packing
from p3eft.fhe.context import Layout

next_pow2 = fhe_packing.next_pow2


@dataclass(frozen=True)
class PackingSpec:
    """The public slot geometry of one session (both parties compute it from the config)."""

    hidden: int
    width: int
    block: int
    rows_per_ct: int
    cts: int
    max_len: int
    slots: int
    seq: int  # logical rows: max_len padded (to a power of two in one ciphertext, else to whole cts)

    @property
    def copies(self) -> int:
        """How often the token rows repeat inside one ciphertext (1 when they span several)."""
        return self.rows_per_ct // self.seq if self.cts == 1 else 1

    @classmethod
    def build(cls, hidden: int, max_len: int, slots: int) -> PackingSpec:
        width = next_pow2(hidden)
        block = 2 * width  # the diagonal kernel reads slots j+k < 2*width-1 of a block
        if block > slots:
            raise P3eftError(f"hidden size {hidden} needs {block} slots per token, only {slots}")
        rows = slots // block
        if next_pow2(max_len) <= rows:
            return cls(hidden, width, block, rows, 1, max_len, slots, next_pow2(max_len))
        cts = -(-max_len // rows)
        return cls(hidden, width, block, rows, cts, max_len, slots, cts * rows)

    def physical(self, m: np.ndarray, ct: int) -> np.ndarray:
        """The rows of logical matrix (or row vector) ``m`` that ciphertext ``ct`` holds."""
        if self.cts == 1:
            return np.concatenate([m] * self.copies, axis=0)
        r = self.rows_per_ct
        return m[ct * r : (ct + 1) * r]

    def layout(self) -> Layout:
        return Layout(self.width, self.rows_per_ct, self.block, "rows_rep")

    def logits_layout(self, num_labels: int) -> Layout:
        """Logit c in every slot of row c of one ciphertext (rows >= num_labels are zero)."""
        return Layout(1, num_labels, self.block, "rows")

    def pad_features(self, x: np.ndarray) -> np.ndarray:
        """(rows, hidden) -> (rows, width) with zero columns."""
        x = np.asarray(x, dtype=np.float64)
        out = np.zeros((*x.shape[:-1], self.width))
        out[..., : x.shape[-1]] = x
        return out

    def pack_matrix(self, m: np.ndarray) -> list[np.ndarray]:
        """A logical (seq, width) matrix -> one slot vector per ciphertext (rows_rep form)."""
        m = np.asarray(m, dtype=np.float64)
        if m.shape != (self.seq, self.width):
            raise P3eftError(f"matrix of shape {m.shape} does not fit the packing ({self.seq}, {self.width})")
        lay = self.layout()
        return [fhe_packing.pack(self.physical(m, c), lay, self.slots) for c in range(self.cts)]

    def pack_rows(self, rows: np.ndarray) -> np.ndarray:
        """``rows_per_ct`` rows (rows_per_ct, width) -> one slot vector (rows_rep form)."""
        return fhe_packing.pack(np.asarray(rows, dtype=np.float64), self.layout(), self.slots)

    def unpack_matrix(self, slot_vectors: list[np.ndarray]) -> np.ndarray:
        lay = self.layout()
        return np.vstack([fhe_packing.unpack(s, lay) for s in slot_vectors])[: self.seq]


def token_matrix(spec: PackingSpec, embedded: np.ndarray) -> np.ndarray:
    """Embedded tokens (n <= max_len, hidden) -> logical (seq, width), zero rows beyond n."""
    emb = np.asarray(embedded, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[1] != spec.hidden or emb.shape[0] > spec.seq:
        raise P3eftError(f"embedded tokens of shape {emb.shape} do not fit ({spec.seq}, {spec.hidden})")
    out = np.zeros((spec.seq, spec.width))
    out[: emb.shape[0], : spec.hidden] = emb
    return out


def key_mask(spec: PackingSpec, length: int) -> np.ndarray:
    """Logical (seq, width): 1 in every slot of a real token's row, 0 for padding rows."""
    if not 1 <= length <= spec.seq:
        raise P3eftError(f"sequence length {length} outside 1..{spec.seq}")
    m = np.zeros((spec.seq, spec.width))
    m[:length] = 1.0
    return m


def pack_example(spec: PackingSpec, embedded: np.ndarray, length: int) -> list[tuple[np.ndarray, Layout]]:
    """Data owner: the slot vectors to encrypt for one example, with their layouts.

    ``embedded`` holds all ``seq`` rows the model computes on (real tokens, then padding tokens
    embedded like BERT does); ``length`` counts the real ones. Returns ``cts`` vectors of the token
    matrix followed by ``cts`` vectors of the key mask.
    """
    x = token_matrix(spec, embedded)
    lay = spec.layout()
    return [(s, lay) for s in spec.pack_matrix(x)] + [
        (s, lay) for s in spec.pack_matrix(key_mask(spec, length))
    ]


def pack_dlogits(spec: PackingSpec, dlogits: np.ndarray) -> list[tuple[np.ndarray, Layout]]:
    """Data owner: dL/dlogits as ``cts`` vectors per label (label-major): the logical matrix with g_c in
    every slot of row 0 and zeros elsewhere, so the model owner multiplies it straight into the head."""
    g = np.asarray(dlogits, dtype=np.float64).ravel()
    out = []
    for gc in g:
        m = np.zeros((spec.seq, spec.width))
        m[0] = gc
        out.extend((s, spec.layout()) for s in spec.pack_matrix(m))
    return out


def unpack_logits(spec: PackingSpec, slots: np.ndarray, num_labels: int) -> np.ndarray:
    """Data owner: the decrypted logits ciphertext -> (num_labels,)."""
    return fhe_packing.unpack(slots, spec.logits_layout(num_labels))[:, 0]
