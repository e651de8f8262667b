"""Token quotas of the language-model routes: a token bucket per key (tokens per minute)
and the tenant's token budget, both kept in memory and settled after each request.

Tokens per minute follow OpenAI's approach: a request reserves its prompt tokens plus
`max_tokens` when admitted and is settled with the metered tokens when it ends, the unused
part refunded. The gateway has no tokenizer, so the prompt is an estimate (`estimate_tokens`)
that settlement corrects; a bucket may go below zero after settling a request that used
more than it reserved, and the key then waits for the refill.

Pure and not thread-safe: the gateway calls them from its event loop only."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from modelfab.errors import QuotaExceeded
from modelfab.gateway.errors import BadRequest, RateLimited
from modelfab.gateway.types import Caller

BYTES_PER_TOKEN = 4
"""The estimate of UTF-8 bytes per token of the prompt (English text with BPE tokenizers)."""
TOKENS_PER_TEXT = 4
"""Tokens a chat template or a tokenizer adds around each message or input (an estimate)."""


def estimate_tokens(texts: list[str]) -> int:
    """An estimate of the tokens of `texts` once templated: what admission reserves before the
    replica counts them."""
    return sum(math.ceil(len(t.encode()) / BYTES_PER_TOKEN) + TOKENS_PER_TEXT for t in texts)


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """A token bucket per key: capacity `tpm` tokens, refilled at `tpm / 60` per second."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def reserve(self, key_id: str, tpm: int, tokens: int) -> float:
        """Take `tokens` from the key's bucket; returns 0, or the seconds until the bucket
        holds them (nothing taken). `tokens` must be at most `tpm` (the caller refuses more:
        such a request could never fit)."""
        bucket = self._refilled(key_id, tpm)
        if bucket.tokens >= tokens:
            bucket.tokens -= tokens
            return 0.0
        return (tokens - bucket.tokens) * 60.0 / tpm

    def settle(self, key_id: str, tpm: int, reserved: int, used: int) -> None:
        """Give back what a request reserved and did not use (or take what it used beyond):
        the bucket may go below zero, never above `tpm`."""
        bucket = self._refilled(key_id, tpm)
        bucket.tokens = min(float(tpm), bucket.tokens + reserved - used)

    def available(self, key_id: str, tpm: int) -> float:
        """The tokens the key's bucket holds now."""
        return self._refilled(key_id, tpm).tokens

    def _refilled(self, key_id: str, tpm: int) -> _Bucket:
        t = self.clock()
        bucket = self._buckets.setdefault(key_id, _Bucket(float(tpm), t))
        bucket.tokens = min(float(tpm), bucket.tokens + (t - bucket.at) * tpm / 60.0)
        bucket.at = t
        return bucket


class TokenBudgets:
    """What a tenant has used of its token budget: the metered total loaded with a key's
    caller (from the usage tables), plus what this process metered for the tenant since that
    load. Tokens metered elsewhere, or journalled here but not yet written when the caller
    was loaded, count from the next load (the cache's TTL)."""

    def __init__(self) -> None:
        self._metered: dict[str, int] = {}  # tenant id -> tokens metered by this process
        self._base: dict[str, int] = {}  # key id -> the tenant's `_metered` when loaded

    def loaded(self, key_id: str, tenant_id: str) -> None:
        """Note that the key's caller (and its `tokens_used`) was loaded now."""
        self._base[key_id] = self._metered.get(tenant_id, 0)

    def used(self, key_id: str, tenant_id: str, loaded_used: int) -> int:
        """The tenant's tokens: `loaded_used` (the key's load) plus this process's since."""
        metered = self._metered.get(tenant_id, 0)
        return loaded_used + metered - self._base.get(key_id, metered)

    def add(self, tenant_id: str, tokens: int) -> None:
        self._metered[tenant_id] = self._metered.get(tenant_id, 0) + tokens


@dataclass
class Reservation:
    """What one admitted request holds of its key's bucket, until `TokenQuotas.settle`."""

    tenant_id: str
    key_id: str
    tpm: int | None
    tokens: int
    settled: bool = False


class TokenQuotas:
    """Admission and settlement of the token routes against a caller's `tokens_per_minute`
    (per key) and `tokens_budget` (per tenant)."""

    def __init__(self, *, reserve_max_tokens: int, clock: Callable[[], float] = time.monotonic):
        """`reserve_max_tokens`: the completion tokens reserved for a request that sets no
        max_tokens (capped by what the bucket can ever hold)."""
        self.reserve_max_tokens = reserve_max_tokens
        self.buckets = TokenBuckets(clock)
        self.budgets = TokenBudgets()

    def loaded(self, caller: Caller) -> None:
        """The gateway loaded `caller` (its `tokens_used`) now."""
        self.budgets.loaded(caller.key_id, caller.tenant_id)

    def reserve(
        self, caller: Caller, *, prompt_tokens: int, max_tokens: int | None, prompt_param: str
    ) -> Reservation:
        """Admit a request of ~`prompt_tokens` that may generate `max_tokens` (None: unset;
        0 for embeddings). Raises QuotaExceeded (429 `token_budget_exhausted`) once the
        tenant's budget is used, BadRequest (400 `request_too_large`, naming max_tokens or
        `prompt_param`) for a request larger than the key's whole tokens per minute, and
        RateLimited (429 with Retry-After) while the bucket cannot cover it."""
        self._check_budget(caller)
        tpm = caller.tokens_per_minute
        if tpm is None:
            return Reservation(caller.tenant_id, caller.key_id, None, 0)
        if max_tokens is None:
            max_tokens = max(0, min(self.reserve_max_tokens, tpm - prompt_tokens))
        tokens = prompt_tokens + max_tokens
        if tokens > tpm:
            raise _too_large(tpm, prompt_tokens, max_tokens, prompt_param)
        wait_s = self.buckets.reserve(caller.key_id, tpm, tokens)
        if wait_s > 0:
            raise RateLimited(
                f"tokens per minute limit of {tpm} for this key reached: this request reserves "
                f"{tokens} tokens (prompt ~{prompt_tokens} + max_tokens {max_tokens}); retry "
                f"after {wait_s:.1f}s, lower max_tokens, or ask an admin to raise "
                "tokens_per_minute",
                retry_after_s=wait_s,
            )
        return Reservation(caller.tenant_id, caller.key_id, tpm, tokens)

    def settle(self, reservation: Reservation, used: int) -> None:
        """End a request that was metered `used` tokens (0: none billed): refund the rest of
        its reservation and count `used` against the tenant's budget. Once per reservation;
        later calls do nothing."""
        if reservation.settled:
            return
        reservation.settled = True
        self.budgets.add(reservation.tenant_id, used)
        if reservation.tpm is not None:
            self.buckets.settle(reservation.key_id, reservation.tpm, reservation.tokens, used)

    def _check_budget(self, caller: Caller) -> None:
        budget = caller.tokens_budget
        if budget is None:
            return
        used = self.budgets.used(caller.key_id, caller.tenant_id, caller.tokens_used)
        if used >= budget:
            raise QuotaExceeded(
                f"this tenant has used {used} of its token budget of {budget} tokens; ask an "
                "admin to raise tokens_budget (`modelfab tenants update --tokens-budget`)",
                code="token_budget_exhausted",
            )


def _too_large(tpm: int, prompt_tokens: int, max_tokens: int, prompt_param: str) -> BadRequest:
    """A request no bucket of `tpm` can ever admit: 400, not 429, since retrying cannot help
    (and OpenAI's clients retry 429s on their own)."""
    param = "max_tokens" if max_tokens > 0 and prompt_tokens <= tpm else prompt_param
    return BadRequest(
        f"this request needs ~{prompt_tokens + max_tokens} tokens (prompt ~{prompt_tokens} + "
        f"max_tokens {max_tokens}), more than this key's whole limit of {tpm} tokens per "
        "minute, so it can never be admitted; lower max_tokens, shorten the input, or ask an "
        "admin to raise tokens_per_minute",
        param=param,
        code="request_too_large",
    )
