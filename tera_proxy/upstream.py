"""The HTTP client side: one aiohttp session, and aiohttp's errors mapped exactly once.

    UpstreamError                 nothing usable came back from the replica
    ├── ConnectFailed             refused, reset or closed before a response head
    ├── UpstreamTimeout           no byte within the read timeout
    └── StreamBroken              the response body ended early or broke

The proxy never forwards the client's headers: it builds the replica's headers itself,
so hop-by-hop headers and the client's Authorization cannot reach a replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import aiohttp

from tera_proxy.config import UpstreamConfig
from tera_proxy.pool import Replica

MAX_ERROR_BODY = 64 * 1024


class UpstreamError(Exception):
    """Nothing usable came back from a replica; safe to retry if nothing was sent."""


class ConnectFailed(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class StreamBroken(UpstreamError):
    pass


class Upstream:
    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=config.connect_timeout, sock_read=config.read_timeout
        )

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.config.max_connections, limit_per_host=0, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream.start() was not awaited")
        return self._session

    async def post(
        self, replica: Replica, path: str, body: bytes, request_id: str
    ) -> aiohttp.ClientResponse:
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        if replica.api_key:
            headers["Authorization"] = f"Bearer {replica.api_key}"
        try:
            return await self.session.post(replica.url + path, data=body, headers=headers)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{replica.name}: no response within the timeout") from exc
        except aiohttp.ClientError as exc:
            raise ConnectFailed(f"{replica.name}: {type(exc).__name__}") from exc


async def read_body(resp: aiohttp.ClientResponse, limit: int | None = None) -> bytes:
    """The whole body; an error body is cut at `limit` bytes."""
    try:
        if limit is None:
            return await resp.read()
        return await resp.content.read(limit)
    except TimeoutError as exc:
        raise UpstreamTimeout("the replica stopped sending") from exc
    except (aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
        raise StreamBroken(f"the response broke: {type(exc).__name__}") from exc


async def chunks(resp: aiohttp.ClientResponse) -> AsyncGenerator[bytes, None]:
    """The body as it arrives, in whatever pieces the socket gives."""
    content = resp.content
    try:
        while True:
            data = await content.readany()
            if not data:
                return
            yield data
    except TimeoutError as exc:
        raise UpstreamTimeout("the replica stopped sending") from exc
    except aiohttp.ClientError as exc:
        raise StreamBroken(f"the response broke: {type(exc).__name__}") from exc
