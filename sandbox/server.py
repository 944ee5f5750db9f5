"""Running the three emulators together: in-process for async and sync tests, or until stopped for the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from sandbox.aosp import AospEmulator
from sandbox.apns import ApnsEmulator
from sandbox.faults import FaultConfig, FaultRuntime
from sandbox.fcm import FcmEmulator
from sandbox.http2 import Handler
from sandbox.http_server import HttpServer
from sandbox.registry import DeviceRegistry
from sandbox.tls import ServerTls

log = logging.getLogger(__name__)
T = TypeVar("T")
# Google's endpoints and Pushy serve HTTP/1.1 beside HTTP/2; APNs is HTTP/2 only, and so is its emulator.
HTTP1_SERVICES = frozenset({"fcm", "aosp"})


class Sandbox:
    """APNs, FCM and AOSP emulators on loopback ports (0: any free port), sharing one `DeviceRegistry`.

    `tls=True` serves all three over TLS with a generated certificate (`self.tls.ca_pem` to trust);
    pass a `ServerTls` to choose the certificate. APNs client CAs are read from the registry at start.
    FCM and AOSP also serve HTTP/1.1 on the same ports (ALPN `http/1.1`, or cleartext without the HTTP/2
    preface); APNs serves HTTP/2 only, as Apple does.
    """

    def __init__(
        self,
        registry: DeviceRegistry | None = None,
        *,
        host: str = "127.0.0.1",
        apns_port: int = 0,
        fcm_port: int = 0,
        aosp_port: int = 0,
        tls: bool | ServerTls = False,
        apns_environment: str = "development",
        apns_faults: FaultConfig | None = None,
        fcm_faults: FaultConfig | None = None,
        aosp_faults: FaultConfig | None = None,
    ) -> None:
        self.registry = registry or DeviceRegistry()
        self.host = host
        self._ports = {"apns": apns_port, "fcm": fcm_port, "aosp": aosp_port}
        self.tls: ServerTls | None = ServerTls.generate() if tls is True else (tls or None)
        self.apns_faults = FaultRuntime(apns_faults)
        self.fcm_faults = FaultRuntime(fcm_faults)
        self.aosp_faults = FaultRuntime(aosp_faults)
        self.apns = ApnsEmulator(self.registry, self.apns_faults, environment=apns_environment)
        self.fcm = FcmEmulator(self.registry, self.fcm_faults)
        self.aosp = AospEmulator(self.registry, self.aosp_faults)
        self.servers: dict[str, HttpServer] = {}
        self.ports: dict[str, int] = {}

    @property
    def apns_url(self) -> str:
        return self._url("apns")

    @property
    def fcm_url(self) -> str:
        return self._url("fcm")

    @property
    def aosp_url(self) -> str:
        return self._url("aosp")

    def _url(self, name: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.ports[name]}"

    async def start(self) -> None:
        handlers: dict[str, tuple[Handler, FaultRuntime]] = {
            "apns": (self.apns, self.apns_faults),
            "fcm": (self.fcm, self.fcm_faults),
            "aosp": (self.aosp, self.aosp_faults),
        }
        try:
            for name, (handler, faults) in handlers.items():
                http1 = name in HTTP1_SERVICES
                server = HttpServer(handler, faults, ssl_context=self._ssl_context(name), http1=http1)
                self.ports[name] = await server.start(self.host, self._ports[name])
                self.servers[name] = server
        except BaseException:
            await self.close()
            raise

    def _ssl_context(self, name: str) -> Any:
        if self.tls is None:
            return None
        if name == "apns":
            return self.tls.with_client_cas(self.registry.credentials.apns_client_cas).server_context()
        return self.tls.server_context(alpn_protocols=("h2", "http/1.1"))

    async def close(self) -> None:
        servers, self.servers = list(self.servers.values()), {}
        await asyncio.gather(*(server.close() for server in servers))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class SandboxThread:
    """A `Sandbox` on its own event loop in a background thread, for synchronous tests and tools.

    Takes the same arguments as `Sandbox`; `with SandboxThread(...) as sb:` gives the running `Sandbox`.
    """

    def __init__(self, registry: DeviceRegistry | None = None, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="mdmq-sandbox", daemon=True)
        self._registry = registry
        self._options = options
        self.sandbox: Sandbox | None = None

    def __enter__(self) -> Sandbox:
        self._thread.start()
        try:
            self.sandbox = self._run(self._start())
        except BaseException:
            self._stop_loop()
            raise
        return self.sandbox

    async def _start(self) -> Sandbox:
        sandbox = Sandbox(self._registry, **self._options)
        await sandbox.start()
        return sandbox

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.sandbox is not None:
            self._run(self.sandbox.close())
        self._stop_loop()

    def call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on the sandbox's loop (e.g. to change something that must happen there)."""
        return self._run(coroutine)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def serve_forever(
    host: str,
    apns_port: int,
    fcm_port: int,
    aosp_port: int,
    tls: bool,
    *,
    registry: DeviceRegistry | None = None,
) -> None:
    """Serve the three emulators until SIGINT/SIGTERM (the `mdmq sandbox` command).

    Without a registry, an open one is used: devices and AOSP keys unknown to it are registered on first
    use, and APNs/FCM credentials are accepted unverified, so any client configuration can try it out.
    """
    registry = registry or DeviceRegistry(open_registration=True)
    ports = (apns_port, fcm_port, aosp_port)
    asyncio.run(
        _serve(
            Sandbox(registry, host=host, apns_port=ports[0], fcm_port=ports[1], aosp_port=ports[2], tls=tls)
        )
    )


async def _serve(sandbox: Sandbox) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    async with sandbox:
        log.info(
            "sandbox serving apns=%s fcm=%s aosp=%s", sandbox.apns_url, sandbox.fcm_url, sandbox.aosp_url
        )
        print(f"APNs {sandbox.apns_url}\nFCM  {sandbox.fcm_url}\nAOSP {sandbox.aosp_url}", flush=True)
        if sandbox.tls is not None:
            print(sandbox.tls.ca_pem.decode("ascii"), flush=True)
        await stop.wait()
