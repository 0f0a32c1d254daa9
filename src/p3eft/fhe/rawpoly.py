"""Exact access to the integer polynomials inside SEAL ciphertexts and plaintexts.

The coefficient-domain refresh (:mod:`p3eft.fhe.refresh`) must add integer polynomials to a
ciphertext and read a decrypted polynomial as integers, with no floating point in between. TenSEAL's
``sealapi`` binding offers neither a writable view nor a NumPy buffer of a polynomial. What it does
offer, and what we use (ours):

* reading: SEAL's own serialisation of the object (zstd-compressed by this build of SEAL),
  decompressed with ``zstandard`` and read with ``np.frombuffer``. The binding's only other route,
  ``obj.dyn_array()[i]``, is one pybind call per 64-bit word (0.17 to 0.5 us per word measured on
  the development machine: 24 ms of a refresh answer's 82 ms went into reading 49152 words that
  way); ``Plaintext.data(i)`` is no faster and ``Ciphertext.data(i)`` only reaches the first word
  of a polynomial.
* writing: we build SEAL's own uncompressed serialisation of a ciphertext or plaintext (header,
  metadata, raw words) with NumPy and let SEAL load it through
  :func:`p3eft.fhe.serial.seal_from_bytes`, which runs SEAL's validity checks (every word below its
  prime, sizes, parms id).
* number-theoretic transforms: SEAL's own, ``Evaluator.transform_to_ntt`` / ``transform_from_ntt`` on
  ciphertexts. A ciphertext whose second polynomial is zero carries any polynomial we want through
  them, so we never implement modular NTTs ourselves.

Polynomials travel here as residues (primes x N, ``uint64``); the refresh's arithmetic on them is in
:mod:`p3eft.fhe.rns`. Integers wider than 64 bits as NumPy object arrays of Python ints
(:func:`residues`, :func:`centred`) remain for audits, tests and the key holder's recorded view:
exact, but about 130 ns per coefficient and prime.
"""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache
from typing import Any

import numpy as np
import tenseal.sealapi as sealapi
import zstandard

from p3eft.fhe import ops, serial

_SEAL_MAGIC = 0xA15E
_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compression, reserved, total size
_CT_META = struct.Struct("<4QBQQQdQ")  # parms id, is_ntt_form, size, N, primes, scale, correction factor
_PT_META = struct.Struct("<4QQd")  # parms id, coefficient count, scale
_COMPRESSION_NONE, _COMPRESSION_ZLIB, _COMPRESSION_ZSTD = 0, 1, 2


@lru_cache(maxsize=1)
def _seal_version() -> tuple[int, int]:
    """SEAL's version as it writes it into its own headers (SEAL refuses other major versions)."""
    head = serial.seal_to_bytes(sealapi.Plaintext())
    _, _, major, minor, *_ = _HEADER.unpack_from(head)
    return major, minor


def _header(body_len: int) -> bytes:
    major, minor = _seal_version()
    return _HEADER.pack(_SEAL_MAGIC, _HEADER.size, major, minor, 0, 0, _HEADER.size + body_len)


def _dynarray_bytes(words: np.ndarray) -> bytes:
    words = np.ascontiguousarray(words, dtype="<u8")
    body = struct.pack("<Q", words.size) + words.tobytes()
    return _header(len(body)) + body


def primes_at(ctx: Any, level: int) -> list[int]:
    """The data primes q_0..q_level of the ciphertext modulus at ``level`` (``ctx``: a CkksContext)."""
    data = ctx.seal.get_context_data(ctx.parms_id(level))
    return [m.value() for m in data.parms().coeff_modulus()]


def _members(saved: bytes) -> bytes:
    """The member bytes of one SEAL serialisation, decompressed (SEAL writes zstd, zlib or none)."""
    magic, hsize, _, _, compression, _, total = _HEADER.unpack_from(saved)
    if magic != _SEAL_MAGIC or total != len(saved):
        raise ValueError("not one whole SEAL serialisation")
    body = saved[hsize:]
    if compression == _COMPRESSION_ZSTD:
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    if compression == _COMPRESSION_ZLIB:
        return zlib.decompress(body)
    if compression == _COMPRESSION_NONE:
        return body
    raise ValueError(f"unknown SEAL compression mode {compression}")


def read_words(obj: Any, count: int | None = None) -> np.ndarray:
    """The first ``count`` 64-bit words of a SEAL plaintext or ciphertext (all by default).

    SEAL saves a ciphertext as its metadata then a nested, uncompressed DynArray (header, word count,
    words); a plaintext likewise with shorter metadata. One save and one decompression read them all."""
    meta = _CT_META if isinstance(obj, sealapi.Ciphertext) else _PT_META
    members = _members(serial.seal_to_bytes(obj))
    start = meta.size + _HEADER.size
    (size,) = struct.unpack_from("<Q", members, start)
    n = size if count is None else count
    if n > size:
        raise ValueError(f"asked for {n} words of a {size}-word SEAL object")
    return np.frombuffer(members, dtype="<u8", count=n, offset=start + 8).astype(np.uint64)


def ciphertext_from_polys(
    ctx: Any, level: int, polys: np.ndarray, scale: float, ntt_form: bool
) -> sealapi.Ciphertext:
    """A SEAL ciphertext with the given residues, shape (size, primes, N), loaded and checked by SEAL."""
    size, count, n = polys.shape
    body = _CT_META.pack(*ctx.parms_id(level), int(ntt_form), size, n, count, float(scale), 1)
    body += _dynarray_bytes(polys.reshape(-1))
    return serial.seal_from_bytes(
        sealapi.Ciphertext(ctx.seal), ctx.seal, _header(len(body)) + body, "polynomial"
    )


def ntt_plaintext_from_residues(ctx: Any, level: int, res: np.ndarray, scale: float) -> sealapi.Plaintext:
    """A CKKS plaintext (NTT form, at ``level``, labelled ``scale``) of an integer polynomial given by
    its residues (primes x N) modulo the level's primes, exactly.

    The residues go through SEAL's NTT in a carrier ciphertext (p, 1) (:func:`_ntt_carrier`), are
    read back, and are loaded as a plaintext that SEAL checks. What the key holder needs to encrypt an
    integer polynomial with SEAL's seeded symmetric encryption (half the bytes of a ciphertext)."""
    words = read_words(_ntt_carrier(ctx, level, res, scale), res.size)  # the first polynomial: p, NTT
    body = _PT_META.pack(*ctx.parms_id(level), words.size, float(scale)) + _dynarray_bytes(words)
    return serial.seal_from_bytes(sealapi.Plaintext(), ctx.seal, _header(len(body)) + body, "plaintext")


def _ntt_carrier(ctx: Any, level: int, res: np.ndarray, scale: float) -> sealapi.Ciphertext:
    """The ciphertext (p, 1) in NTT form, p given by its residues modulo the level's primes: SEAL's
    NTT of p, which SEAL only runs on a ciphertext whose second polynomial is not zero."""
    count, n = len(primes_at(ctx, level)), ctx.params.poly_modulus_degree
    if res.shape != (count, n):
        raise ValueError(f"residues of shape {res.shape} for a level of {count} primes x {n}")
    polys = np.zeros((2, count, n), dtype=np.uint64)
    polys[0] = res
    polys[1, :, 0] = 1
    lifted = ciphertext_from_polys(ctx, level, polys, scale, ntt_form=False)
    ctx.evaluator.transform_to_ntt_inplace(lifted)
    return lifted


def residues(values: np.ndarray, primes: list[int]) -> np.ndarray:
    """Exact residues (primes x N, uint64) of integer values (object array of Python ints, any sign)."""
    return np.stack([(values % q).astype(np.uint64) for q in primes])


def centred(res: np.ndarray, primes: list[int]) -> np.ndarray:
    """The integers in (-Q/2, Q/2] with the given residues (Chinese remaindering), as Python ints."""
    big_q = 1
    for q in primes:
        big_q *= q
    total = np.zeros(res.shape[1], dtype=object)
    for row, q in zip(res, primes, strict=True):
        m = big_q // q
        total = total + row.astype(object) * (m * pow(m, -1, q))  # CRT basis element: = 1 mod q, 0 mod others
    total = total % big_q
    return np.where(total > big_q // 2, total - big_q, total)


def _ones_ciphertext(ctx: Any, level: int, scale: float) -> sealapi.Ciphertext:
    """A new ciphertext (0, 1) in NTT form at ``level``, labelled ``scale``: a copy of the cached one
    (:func:`p3eft.fhe.ops.clone_raw`, far cheaper than building it), so that no caller shares or
    relabels the cache."""
    # cached per context and level, since every refresh needs it (a serialisation and a checked SEAL
    # load to build); the constant 1 is all ones in NTT form
    per_level = ctx.helper_cache.setdefault("rawpoly.ones", {})
    if level not in per_level:
        count, n = len(primes_at(ctx, level)), ctx.params.poly_modulus_degree
        polys = np.zeros((2, count, n), dtype=np.uint64)
        polys[1] = 1
        per_level[level] = ciphertext_from_polys(ctx, level, polys, 1.0, ntt_form=True)
    out = ops.clone_raw(ctx, per_level[level])
    out.scale = scale
    return out


def add_integer_poly(ctx: Any, ct: sealapi.Ciphertext, values: np.ndarray) -> sealapi.Ciphertext:
    """ct + (p, 0) for an integer polynomial p (object array of Python ints), exactly, at ct's level."""
    return add_residue_poly(ctx, ct, residues(values, primes_at(ctx, ctx.level(ct))))


def add_residue_poly(ctx: Any, ct: sealapi.Ciphertext, res: np.ndarray) -> sealapi.Ciphertext:
    """ct + (p, 0) for an integer polynomial p given by its residues modulo ct's primes, exactly.

    SEAL refuses to transform a "transparent" ciphertext (second polynomial zero), so p travels as
    (p, 1) through SEAL's NTT and the 1 is taken off again with (0, 1) in NTT form, where the
    constant polynomial 1 is all ones (ours)."""
    level = ctx.level(ct)
    out = sealapi.Ciphertext(ctx.seal)
    ctx.evaluator.add(ct, _ntt_carrier(ctx, level, res, ct.scale), out)
    ctx.evaluator.sub_inplace(out, _ones_ciphertext(ctx, level, ct.scale))
    return out


def plaintext_residues(ctx: Any, pt: sealapi.Plaintext, level: int) -> np.ndarray:
    """The coefficients (primes x N residues) of a decrypted (NTT-form) CKKS plaintext at ``level``.

    SEAL adds the plaintext to a carrier (0, 1) in NTT form and takes the sum out of NTT form, so the
    words are read once, already as coefficients."""
    primes = primes_at(ctx, level)
    n = ctx.params.poly_modulus_degree
    carrier = sealapi.Ciphertext(ctx.seal)  # (0, 1) is not transparent, so SEAL transforms it
    ctx.evaluator.add_plain(_ones_ciphertext(ctx, level, pt.scale), pt, carrier)
    ctx.evaluator.transform_from_ntt_inplace(carrier)
    return read_words(carrier, len(primes) * n).reshape(len(primes), n)


def plaintext_coefficients(ctx: Any, pt: sealapi.Plaintext, level: int) -> np.ndarray:
    """The centred integer coefficients (Python ints) of a decrypted (NTT-form) CKKS plaintext."""
    return centred(plaintext_residues(ctx, pt, level), primes_at(ctx, level))
