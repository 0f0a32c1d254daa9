"""The secret orthogonal rotation of the embedding space (ours).

The model owner draws an orthogonal R (hidden x hidden) and hands the data owner the *rotated*
tables: word, position and token-type rows multiplied by R^T (row e becomes R e). The data owner
sums the rotated rows of its tokens, so it holds x~ = R x for the true embedding sum x, and encrypts
x~. The model owner removes R inside its first encrypted linear step: the embedding LayerNorm's
centering and R^T are one matrix, ``(I - 11^T/d) R^T``, applied by one diagonal kernel.

What the rotated table reveals (stated exactly): an orthogonal R keeps every norm and inner product,
so the rotated table has the same Gram matrix E E^T as the original. Rows are indexed by token id, so
anyone who also knows the original table E (for ``minilm-l6`` it is public) recovers R exactly by
orthogonal Procrustes (R^T = argmin ||E Q - E~||, an SVD), as :func:`recover_rotation` does; the
rotation then hides nothing. Against a party without E, the rotated table still reveals all norms
and pairwise inner products (hence nearest neighbours and clusters) of the token vectors. Token
identities of an example are never revealed by the table: the data owner looks its own tokens up and
only ciphertexts leave it. So the rotation protects the coordinates of a *private* embedding table,
not the data owner's input; the input is protected by the encryption alone.
"""

from __future__ import annotations

import numpy as np


def random_rotation(hidden: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal matrix (QR of a Gaussian matrix with the sign fix of Mezzadri 2007)."""
    q, r = np.linalg.qr(rng.standard_normal((hidden, hidden)))
    return q * np.sign(np.diag(r))[None, :]


def rotated_embedding_tables(
    word: np.ndarray, position: np.ndarray, token_type: np.ndarray, rot: np.ndarray
) -> dict[str, np.ndarray]:
    """What the model owner hands the data owner: every row e replaced by R e."""
    return {"word": word @ rot.T, "position": position @ rot.T, "token_type": token_type @ rot.T}


def embed(tables: dict[str, np.ndarray], token_ids: np.ndarray) -> np.ndarray:
    """Data owner: sum of word, position and token-type (0) rows for each token, from given tables."""
    ids = np.asarray(token_ids, dtype=np.int64)
    return tables["word"][ids] + tables["position"][: len(ids)] + tables["token_type"][0][None, :]


def centering_derotation(rot: np.ndarray) -> np.ndarray:
    """(I - 11^T/d) R^T: removes the rotation and the mean in one product (LayerNorm's centering)."""
    d = rot.shape[0]
    return (np.eye(d) - np.full((d, d), 1.0 / d)) @ rot.T


def recover_rotation(original: np.ndarray, rotated: np.ndarray) -> np.ndarray:
    """Orthogonal Procrustes: the R with rotated ~= original R^T, from two tables with matching rows."""
    u, _, vt = np.linalg.svd(original.T @ rotated)
    return (u @ vt).T
