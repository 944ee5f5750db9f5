"""Running the three emulators together: in-process for async and sync tests, or until stopped for the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import tempfile
import threading
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from sandbox.aosp import AospEmulator
from sandbox.apns import ApnsEmulator
from sandbox.control import ControlHandler, DeliveryLog, write_operator_files
from sandbox.faults import FaultConfig, FaultRuntime
from sandbox.fcm import FcmEmulator
from sandbox.http2 import Handler
from sandbox.http_server import HttpServer
from sandbox.registry import DeviceRegistry, apns_environment
from sandbox.tls import MdmPushCertificate, ServerTls, issue_mdm_push_certificate

log = logging.getLogger(__name__)
T = TypeVar("T")
# Google's endpoints and Pushy serve HTTP/1.1 beside HTTP/2; APNs is HTTP/2 only, and so is its emulator.
HTTP1_SERVICES = frozenset({"fcm", "aosp"})
APNS_LISTENERS = frozenset({"apns", "apns_sandbox"})


class Sandbox:
    """APNs, FCM and AOSP emulators on loopback ports (0: any free port), sharing one `DeviceRegistry`.

    APNs listens twice, as Apple serves two environments whose tokens and certificates work only in their
    own [A-SEND]: `apns_url` (port `ports["apns"]`) is production (api.push.apple.com), `apns_sandbox_url`
    (`ports["apns_sandbox"]`) is development (api.sandbox.push.apple.com). Both share `apns_faults`.

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
        apns_sandbox_port: int = 0,
        tls: bool | ServerTls = False,
        apns_faults: FaultConfig | None = None,
        fcm_faults: FaultConfig | None = None,
        aosp_faults: FaultConfig | None = None,
    ) -> None:
        self.registry = registry or DeviceRegistry()
        self.host = host
        self._ports = {"apns": apns_port, "fcm": fcm_port, "aosp": aosp_port}
        self._ports["apns_sandbox"] = apns_sandbox_port
        self.tls: ServerTls | None = ServerTls.generate() if tls is True else (tls or None)
        self.apns_faults = FaultRuntime(apns_faults)
        self.fcm_faults = FaultRuntime(fcm_faults)
        self.aosp_faults = FaultRuntime(aosp_faults)
        self.apns = ApnsEmulator(self.registry, self.apns_faults, environment="production")
        self.apns_sandbox = ApnsEmulator(self.registry, self.apns_faults, environment="development")
        self.fcm = FcmEmulator(self.registry, self.fcm_faults)
        self.aosp = AospEmulator(self.registry, self.aosp_faults)
        self.servers: dict[str, HttpServer] = {}
        self.ports: dict[str, int] = {}

    @property
    def apns_url(self) -> str:
        """APNs production (api.push.apple.com): `MDMQ_APNS_URL`."""
        return self._url("apns")

    @property
    def apns_sandbox_url(self) -> str:
        """APNs development (api.sandbox.push.apple.com): `MDMQ_APNS_SANDBOX_URL`."""
        return self._url("apns_sandbox")

    def apns_url_for(self, environment: str) -> str:
        """The listener of an APNs environment: "production", or "development" / "sandbox"."""
        return self.apns_url if apns_environment(environment) == "production" else self.apns_sandbox_url

    @property
    def fcm_url(self) -> str:
        return self._url("fcm")

    @property
    def aosp_url(self) -> str:
        return self._url("aosp")

    def settings(self) -> dict[str, Any]:
        """mdmq's settings that point it at these emulators (`MDMQ_APNS_URL` and the others), by name."""
        return {
            "apns_url": self.apns_url,
            "apns_sandbox_url": self.apns_sandbox_url,
            "fcm_url": self.fcm_url,
            "fcm_token_url": f"{self.fcm_url}/token",
            "aosp_url": self.aosp_url,
        }

    def _url(self, name: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.ports[name]}"

    async def start(self) -> None:
        handlers: dict[str, tuple[Handler, FaultRuntime]] = {
            "apns": (self.apns, self.apns_faults),
            "apns_sandbox": (self.apns_sandbox, self.apns_faults),
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
        if name in APNS_LISTENERS:
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
    apns_sandbox_port: int = 0,
    registry: DeviceRegistry | None = None,
    control_port: int | None = None,
    files: Path | None = None,
) -> None:
    """Serve the emulators until SIGINT/SIGTERM (the `mdmq sandbox` command).

    Without a registry, an open one is used: well-formed devices and AOSP keys unknown to it are registered
    on first use (APNs tokens with the prefixes of `sandbox.apns` answer as dead, of the other environment
    or of another topic), and APNs/FCM signing keys are accepted unverified. MDM pushes need a push
    certificate over TLS [A-MDMPUSH]: with `tls`, one is issued and its PEM bundle written to a private
    file whose path is printed; any certificate of its CA is accepted, its subject UID as its topic.
    `control_port`: serve the control route there too (`sandbox.control`). `files`: write the operator's
    files into that directory (`sandbox.control.write_operator_files`).
    """
    open_mode = registry is None
    registry = registry or DeviceRegistry(open_registration=True)
    certificate = issue_mdm_push_certificate(registry) if open_mode and tls else None
    sandbox = Sandbox(
        registry,
        host=host,
        apns_port=apns_port,
        apns_sandbox_port=apns_sandbox_port,
        fcm_port=fcm_port,
        aosp_port=aosp_port,
        tls=tls,
    )
    asyncio.run(_serve(sandbox, certificate, control_port=control_port, files=files))


async def _serve(
    sandbox: Sandbox,
    certificate: MdmPushCertificate | None = None,
    *,
    control_port: int | None = None,
    files: Path | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    deliveries = DeliveryLog(sandbox.registry)
    async with sandbox, _control(sandbox, deliveries, control_port) as control_url:
        log.info(
            "sandbox serving apns=%s apns_sandbox=%s fcm=%s aosp=%s",
            *(sandbox.apns_url, sandbox.apns_sandbox_url, sandbox.fcm_url, sandbox.aosp_url),
        )
        # The first three lines are read by scripts: keep their order; the development listener comes after.
        print(f"APNs {sandbox.apns_url}\nFCM  {sandbox.fcm_url}\nAOSP {sandbox.aosp_url}", flush=True)
        print(f"APNs-sandbox {sandbox.apns_sandbox_url}", flush=True)
        if control_url is not None:
            print(f"control {control_url}", flush=True)
        if files is not None:
            write_operator_files(files, sandbox, certificate)
            print(f"operator files: {files}", flush=True)
        with tempfile.TemporaryDirectory(prefix="mdmq-sandbox-") as directory:
            if certificate is not None:
                path = Path(directory, "apns-push-certificate.pem")
                path.touch(0o600)
                path.write_text(certificate.pem_bundle)
                print(f"APNs MDM push certificate (topic {certificate.topic}): {path}", flush=True)
            if sandbox.tls is not None:
                print(sandbox.tls.ca_pem.decode("ascii"), flush=True)
            await stop.wait()


@contextlib.asynccontextmanager
async def _control(sandbox: Sandbox, deliveries: DeliveryLog, port: int | None) -> AsyncIterator[str | None]:
    """The control route on `port` beside the emulators, and its URL (none without a port)."""
    if port is None:
        yield None
        return
    server = HttpServer(ControlHandler(sandbox.registry, deliveries), FaultRuntime(None), http1=True)
    bound = await server.start(sandbox.host, port)
    host = f"[{sandbox.host}]" if ":" in sandbox.host else sandbox.host
    try:
        yield f"http://{host}:{bound}"
    finally:
        await server.close()
