"""Per-row seeded sampling: each row's next token depends only on its seed, step and logits.

This module knows nothing about records, prompts or tokenizers. HF `generate` samples from
torch's global generator, so a row's text would depend on its neighbours in the batch. Instead
the transformers engine's decode loop calls `choose_tokens`, which draws each row's token
itself (temperature, top-p, then Gumbel-max) with noise from a counter-based hash of (row seed,
step, token id). The hash is plain integer tensor arithmetic: one vectorised op for the whole
batch, identical on CPU and GPU, with no per-row generator state to carry.

Changing the noise function changes every sampled text: keep NOISE_VERSION in the ledger.
"""

from __future__ import annotations

import torch

NOISE_VERSION = "hash32x3-gumbel-v1"

_M32 = 0xFFFFFFFF
_MUL = 0x45D9F3B  # < 2**31, so products of 32-bit values never overflow int64
_STEP_SALT = 0x3C6EF372
_TOKEN_SALT = 0x1B873593


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer mix on int64 tensors holding values in [0, 2**32)."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * _MUL) & _M32
    x = x ^ (x >> 16)
    x = (x * _MUL) & _M32
    return x ^ (x >> 16)


def uniform_noise(seeds: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """Uniforms in (0, 1), shape (rows, vocab), a pure function of (seed, step, token id)."""
    seeds = seeds.to(torch.int64)
    row = hash32(hash32(seeds & _M32) ^ hash32((seeds >> 32) + _STEP_SALT))
    row = hash32(row ^ hash32(torch.full_like(row, step) + _STEP_SALT))
    tokens = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    mixed = hash32(row[:, None] ^ hash32(tokens * 2 + _TOKEN_SALT)[None, :])
    mixed = hash32(mixed ^ row[:, None])
    return (mixed.to(torch.float64) + 0.5) / 2.0**32


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p (at least one)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -1] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def choose_tokens(
    logits: torch.Tensor, seeds: torch.Tensor, step: int, temperature: float, top_p: float
) -> torch.Tensor:
    """The next token of every row: greedy at temperature 0, else seeded top-p sampling."""
    logits = logits.to(torch.float32)
    if temperature == 0:
        return logits.argmax(dim=-1)
    filtered = top_p_filter(logits / temperature, top_p)
    gumbel = -torch.log(-torch.log(uniform_noise(seeds, step, logits.shape[-1])))
    return (filtered.to(torch.float64) + gumbel).argmax(dim=-1)
