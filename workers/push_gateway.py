"""The bridge from synchronous actors to the asynchronous push providers.

Dramatiq runs actors on worker threads; the providers keep persistent, multiplexed HTTP/2 connections on an
event loop. One loop per process runs in a daemon thread; every worker thread submits its batch to it, so the
connections of one credential are shared by all the chunks in flight. Built lazily, and anew after a fork.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence

from workers.providers.aosp import AospProvider, PushStatus
from workers.providers.base import ProviderError, Push, PushResult
from workers.providers.credentials import Credential
from workers.providers.endpoints import ProviderEndpoints
from workers.providers.factory import DEFAULT_IDLE_S, DEFAULT_MAX_CONNECTIONS, ProviderFactory

# A batch that has not come back after this long is not coming back: its pushes are retried as transient.
SEND_TIMEOUT_S = 120.0

# One organization's pushes for one provider, with its credential.
Batch = tuple[str, Credential, Sequence[Push]]


class PushGateway:
    """Providers are kept per credential (`ProviderFactory`): closed after `provider_idle_s` unused, each
    opening at most `max_connections` connections."""

    def __init__(
        self,
        endpoints: ProviderEndpoints,
        *,
        provider_idle_s: float = DEFAULT_IDLE_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self._endpoints = endpoints
        self._provider_idle_s = provider_idle_s
        self._max_connections = max_connections
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._factory: ProviderFactory | None = None
        self._pid = 0

    def send(self, organization_id: str, credential: Credential, pushes: Sequence[Push]) -> list[PushResult]:
        """Send `pushes` with `credential`; a `ProviderError` means the whole batch could not be sent."""
        loop, factory = self._running()
        batch = (organization_id, credential, pushes)
        return asyncio.run_coroutine_threadsafe(_send(factory, batch), loop).result(SEND_TIMEOUT_S)

    def send_all(self, batches: Sequence[Batch]) -> list[list[PushResult] | Exception]:
        """Send every batch at once, each as `send` would: a chunk's batches (one per organization and
        provider) wait for the slowest provider, not for each in turn. Returns, in order, each batch's
        results or the exception that stopped it."""
        loop, factory = self._running()

        async def send_all() -> list[list[PushResult] | Exception]:
            answers = await asyncio.gather(*(_send(factory, b) for b in batches), return_exceptions=True)
            out: list[list[PushResult] | Exception] = []
            for answer in answers:
                if isinstance(answer, BaseException) and not isinstance(answer, Exception):
                    raise answer  # a cancellation or an exit is the process's, not a batch's
                out.append(answer)
            return out

        return asyncio.run_coroutine_threadsafe(send_all(), loop).result(SEND_TIMEOUT_S)

    def poll(
        self, organization_id: str, credential: Credential, push_ids: Sequence[str]
    ) -> dict[str, PushStatus | ProviderError]:
        """Ask a provider that reports delivery (AOSP) where each push stands; a push it cannot answer for
        comes back as the error that says why."""
        loop, factory = self._running()

        async def poll() -> dict[str, PushStatus | ProviderError]:
            with factory.using(organization_id, credential) as provider:
                if not isinstance(provider, AospProvider):
                    raise TypeError(f"{type(provider).__name__} does not report delivery")
                answers = await asyncio.gather(*(provider.poll(p) for p in push_ids), return_exceptions=True)
            results: dict[str, PushStatus | ProviderError] = {}
            for push_id, answer in zip(push_ids, answers, strict=True):
                if isinstance(answer, PushStatus | ProviderError):
                    results[push_id] = answer
                elif isinstance(answer, BaseException):
                    raise answer
            return results

        return asyncio.run_coroutine_threadsafe(poll(), loop).result(SEND_TIMEOUT_S)

    def close(self) -> None:
        """Close every connection and stop the loop (in the process that started it)."""
        with self._lock:
            loop, thread, factory = self._loop, self._thread, self._factory
            self._loop, self._thread, self._factory = None, None, None
        if loop is None or thread is None or factory is None or self._pid != os.getpid():
            return
        asyncio.run_coroutine_threadsafe(factory.close(), loop).result(SEND_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    def _running(self) -> tuple[asyncio.AbstractEventLoop, ProviderFactory]:
        with self._lock:
            if self._loop is None or self._factory is None or self._pid != os.getpid():
                self._loop = asyncio.new_event_loop()
                self._factory = ProviderFactory(
                    self._endpoints, idle_s=self._provider_idle_s, max_connections=self._max_connections
                )
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop.run_forever, name="mdmq-push", daemon=True)
                self._thread.start()
            return self._loop, self._factory


async def _send(factory: ProviderFactory, batch: Batch) -> list[PushResult]:
    organization_id, credential, pushes = batch
    with factory.using(organization_id, credential) as provider:
        return await provider.send(pushes)
