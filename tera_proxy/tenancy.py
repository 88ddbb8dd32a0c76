"""Tenancy: keys, limits, the ledger and metrics, as one service of the app.

The hot path talks to it three times per request: `admit` (auth, scope, limits) before
a replica is chosen, `headers` for the response head, `settle` once at the end, in a
`finally`, whatever happened (tokens given back, the ledger row, metrics, the log line).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from tera_proxy.accounting import Ledger, LedgerRow, Prices, cost_usd
from tera_proxy.auth import Principal, authenticate, authorize
from tera_proxy.config import Config, ModelConfig
from tera_proxy.keys import KeyStore, server_secret
from tera_proxy.limits import Admission, LimitExceeded, ratelimit_headers
from tera_proxy.metrics import Metrics
from tera_proxy.rewrite import Usage
from tera_proxy.store import key_backend, ledger_backend, limiter

log = structlog.get_logger("tera_proxy.request")

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class Ticket:
    """What admission handed out for one request, settled exactly once."""

    principal: Principal | None
    admission: Admission | None
    model: ModelConfig
    settled: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request ended, as the ledger and metrics record it."""

    request_id: str
    status: int
    replica: str
    attempts: int
    usage: Usage | None
    ttft: float | None
    duration: float
    client_disconnected: bool


class Tenancy:
    def __init__(self, config: Config, state_dir: Path, metrics: Metrics | None = None) -> None:
        self.config = config
        self.enabled = config.auth.enabled
        self.keys = KeyStore(
            key_backend(config.database, state_dir),
            server_secret(config.keys, os.environ, state_dir),
            refresh_interval=config.keys.refresh_interval,
        )
        self.limiter = limiter(config.limits)
        self.ledger = Ledger(ledger_backend(config.database, state_dir), config.ledger)
        self.metrics = metrics or Metrics()
        self._prices = {m.id: Prices.of(m) for m in config.models}

    async def start(self) -> None:
        await self.keys.start()
        await self.limiter.start()
        await self.ledger.start()

    async def stop(self) -> None:
        # The ledger last: requests finishing during shutdown still record their rows.
        await self.limiter.stop()
        await self.keys.stop()
        await self.ledger.stop()

    async def principal(self, headers: Headers) -> Principal | None:
        """Who is calling (401 if nobody valid); None when auth is off."""
        if not self.enabled:
            return None
        return await authenticate(headers, self.keys)

    async def admit(
        self, principal: Principal | None, model: ModelConfig, tokens: int
    ) -> Ticket:
        """Scope (403) and limits (429) for one request on `model`."""
        if principal is None:
            return Ticket(None, None, model)
        authorize(principal, model.id)
        try:
            admission = await self.limiter.admit(principal.key_id, principal.limits, tokens)
        except LimitExceeded as exc:
            self.metrics.observe_rejection(exc.kind)
            raise
        return Ticket(principal, admission, model)

    def headers(self, ticket: Ticket | None) -> Headers:
        if ticket is None or ticket.admission is None:
            return []
        return ratelimit_headers(ticket.admission.rate)

    async def settle(self, ticket: Ticket, outcome: Outcome) -> None:
        if ticket.settled:
            return
        ticket.settled = True
        usage = outcome.usage
        used = usage.total_tokens if usage is not None else 0
        if ticket.admission is not None:
            await self.limiter.settle(ticket.admission, used)
        self._record(ticket, outcome)

    def refused(self, principal: Principal | None, model_id: str, outcome: Outcome) -> None:
        """A request turned away before admission (401, 400, 404, 413, 429...): nothing
        to bill, but its id must still lead to a log line, and metrics count it."""
        self.metrics.observe_request(
            model_id,
            outcome.status,
            duration=outcome.duration,
            client_disconnected=outcome.client_disconnected,
        )
        log.info(
            "request",
            request_id=outcome.request_id,
            key_id=principal.key_id if principal is not None else "",
            model=model_id,
            status=outcome.status,
            duration=round(outcome.duration, 6),
            client_disconnected=outcome.client_disconnected,
        )

    def _record(self, ticket: Ticket, outcome: Outcome) -> None:
        usage = outcome.usage or Usage(0, 0)
        model = ticket.model
        cost = cost_usd(self._prices[model.id], usage)
        key_id = ticket.principal.key_id if ticket.principal is not None else ""
        self.ledger.record(
            LedgerRow(
                request_id=outcome.request_id,
                key_id=key_id,
                model=model.id,
                replica=outcome.replica,
                attempts=outcome.attempts,
                status=outcome.status,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                reasoning_tokens=usage.reasoning_tokens,
                estimated=usage.estimated,
                cost_usd=cost,
                ttft=outcome.ttft,
                duration=outcome.duration,
                client_disconnected=outcome.client_disconnected,
                created_at=time.time(),
            )
        )
        self.metrics.observe_request(
            model.id,
            outcome.status,
            duration=outcome.duration,
            ttft=outcome.ttft,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost_usd=float(cost),
            attempts=outcome.attempts,
            client_disconnected=outcome.client_disconnected,
        )
        log.info(
            "request",
            request_id=outcome.request_id,
            key_id=key_id,
            model=model.id,
            replica=outcome.replica,
            status=outcome.status,
            attempts=outcome.attempts,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_usd=format(cost, "f"),
            ttft=outcome.ttft,
            duration=round(outcome.duration, 6),
            client_disconnected=outcome.client_disconnected,
        )
