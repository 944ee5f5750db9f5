"""The stand-alone sandbox's control route: what another process needs to play the devices and the service.

`mdmq sandbox` serves it in cleartext HTTP/1.1 on loopback beside the emulators:

- `GET /deliveries?after=N` — the pushes that reached a device since sequence number N, oldest first (at most
  `limit`, 10,000 by default): `{"deliveries": [{"seq", "provider", "token"}], "next": M}`. The simulated
  devices (`mdmq sandbox devices`) check in when one of theirs appears, as a device woken by its push does.
  The log keeps the last `KEPT` deliveries; a reader further behind misses the older ones.
- `POST /apns/certificates/revoke` with a PEM certificate as the body — Apple revokes that push certificate:
  every push authorized by it is answered 403 BadCertificate from then on.

It answers only on the address the sandbox listens on (loopback by default), as the emulators do.
"""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from models.enums import Provider
from sandbox.credentials import new_credential
from sandbox.http2 import Request, Response
from sandbox.registry import Delivery, DeviceRegistry

if TYPE_CHECKING:
    from sandbox.server import Sandbox
    from sandbox.tls import MdmPushCertificate

KEPT = 200_000
MAX_LISTED = 10_000
_JSON = (("content-type", "application/json"),)


class DeliveryLog:
    """The last `kept` deliveries of a registry, numbered from 1 in the order they reached their device."""

    def __init__(self, registry: DeviceRegistry, *, kept: int = KEPT) -> None:
        self._lock = threading.Lock()
        self._entries: collections.deque[tuple[int, str, str]] = collections.deque(maxlen=kept)
        self._last = 0
        registry.subscribe(self._on_delivery)

    def _on_delivery(self, delivery: Delivery) -> None:
        with self._lock:
            self._last += 1
            self._entries.append((self._last, delivery.provider.value, delivery.token))

    def since(self, after: int, limit: int = MAX_LISTED) -> tuple[list[tuple[int, str, str]], int]:
        """Deliveries numbered above `after` (at most `limit`), and the number to ask after next."""
        with self._lock:
            newer = [entry for entry in self._entries if entry[0] > after][:limit]
            return newer, newer[-1][0] if newer else max(after, 0)


class ControlHandler:
    """The control route's handler (`sandbox.http2.Handler`)."""

    def __init__(self, registry: DeviceRegistry, deliveries: DeliveryLog) -> None:
        self.registry = registry
        self.deliveries = deliveries

    def __call__(self, request: Request) -> Response:
        path, _, query = request.path.partition("?")
        if path == "/deliveries" and request.method == "GET":
            return self._deliveries(parse_qs(query))
        if path == "/apns/certificates/revoke" and request.method == "POST":
            return self._revoke(request.body)
        return _answer(404, {"error": "no such route"})

    def _deliveries(self, query: Mapping[str, list[str]]) -> Response:
        try:
            after = int(query.get("after", ["0"])[0])
            limit = min(int(query.get("limit", [str(MAX_LISTED)])[0]), MAX_LISTED)
        except ValueError:
            return _answer(400, {"error": "after and limit are integers"})
        entries, following = self.deliveries.since(after, max(limit, 1))
        listed = [{"seq": seq, "provider": provider, "token": token} for seq, provider, token in entries]
        return _answer(200, {"deliveries": listed, "next": following})

    def _revoke(self, body: bytes) -> Response:
        try:
            self.registry.revoke_apns_client_certificate(body)
        except ValueError:
            return _answer(400, {"error": "the body is not a PEM certificate"})
        return _answer(200, {"revoked": True})


def _answer(status: int, body: Mapping[str, Any]) -> Response:
    return Response(status, _JSON, json.dumps(body).encode())


def write_operator_files(directory: Path, sandbox: Sandbox, certificate: MdmPushCertificate | None) -> None:
    """What an operator needs to point mdmq at a running sandbox, in `directory` (made private): `env`, the
    `MDMQ_` settings of the emulators' addresses (and `MDMQ_PUSH_CA_FILE` with `--tls`), to source before
    starting mdmq; `ca.pem`; and one credential per provider to upload with `mdmq credentials put`:
    `apns.pem` (the push certificate and its key, with `--tls`), `fcm.json`, `aosp.key`."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings = {f"MDMQ_{name.upper()}": value for name, value in sandbox.settings().items()}
    if sandbox.tls is not None:
        _private(directory / "ca.pem", sandbox.tls.ca_pem.decode("ascii"))
        settings["MDMQ_PUSH_CA_FILE"] = str((directory / "ca.pem").resolve())
    if certificate is not None:
        _private(directory / "apns.pem", certificate.pem_bundle)
    for provider, name in ((Provider.fcm, "fcm.json"), (Provider.aosp, "aosp.key")):
        _private(directory / name, new_credential(sandbox.registry, provider, None).secret)
    _private(directory / "env", "".join(f"{name}={value}\n" for name, value in settings.items()))


def _private(path: Path, text: str) -> None:
    path.touch(0o600)
    path.write_text(text)
