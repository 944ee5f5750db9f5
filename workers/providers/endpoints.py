"""Where each push service lives: the real hosts by default, loopback emulators for the sandbox."""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from workers.providers.credentials import ApnsEnvironment
from workers.providers.http2 import Http2Pool, Origin


@dataclass(frozen=True, slots=True)
class ProviderEndpoints:
    """Base URLs of the push services. `http://` means cleartext HTTP/2 with prior knowledge (h2c).

    `ca_file` or `ca_pem` adds a trusted CA for `https://` endpoints: an emulator's self-signed one.
    """

    apns_production: str = "https://api.push.apple.com"
    apns_sandbox: str = "https://api.sandbox.push.apple.com"
    fcm: str = "https://fcm.googleapis.com"
    oauth_token: str = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL)
    aosp: str = "https://api.pushy.me"
    ca_file: str | None = None
    ca_pem: str | None = None

    @classmethod
    def loopback(
        cls,
        *,
        apns_port: int,
        fcm_port: int,
        aosp_port: int,
        host: str = "127.0.0.1",
        tls_ca_pem: str | None = None,
    ) -> ProviderEndpoints:
        """The sandbox emulators: cleartext h2c, or TLS when `tls_ca_pem` (the emulators' CA) is given."""
        scheme = "https" if tls_ca_pem else "http"
        return cls(
            apns_production=f"{scheme}://{host}:{apns_port}",
            apns_sandbox=f"{scheme}://{host}:{apns_port}",
            fcm=f"{scheme}://{host}:{fcm_port}",
            oauth_token=f"{scheme}://{host}:{fcm_port}/token",
            aosp=f"{scheme}://{host}:{aosp_port}",
            ca_pem=tls_ca_pem,
        )

    def tls_context(self) -> ssl.SSLContext:
        """A new verifying client context offering only h2, trusting the extra CA if one is set, else the
        system's CAs."""
        return _trust_context(*self._trust())

    def shared_tls_context(self, *, client_key_type: str | None = None) -> ssl.SSLContext:
        """This process's context of this trust, made once: the one of connections without a client
        certificate, or the one of client certificates of `client_key_type` (`ClientCertificateContext`,
        which loads its certificate into the context for each connection it makes)."""
        return _shared_context(*self._trust(), client_key_type)

    def pool(self, url: str, *, max_connections: int) -> Http2Pool:
        """Connections to `url`: TLS with this trust for `https://`, cleartext h2c for `http://`."""
        origin = Origin.from_url(url)
        context = self.shared_tls_context() if origin.scheme == "https" else None
        return Http2Pool(origin, ssl_context=context, max_connections=max_connections)

    def _trust(self) -> tuple[str | None, str | None, str | None]:
        """The extra CA (file, PEM), else the system's hashed CA directory if it has one."""
        if self.ca_file or self.ca_pem:
            return self.ca_file, self.ca_pem, None
        return None, None, _hashed_ca_directory()

    def apns(self, environment: ApnsEnvironment) -> str:
        return self.apns_production if environment is ApnsEnvironment.production else self.apns_sandbox


def _trust_context(ca_file: str | None, ca_pem: str | None, ca_directory: str | None) -> ssl.SSLContext:
    if ca_file or ca_pem:
        context = ssl.create_default_context(cafile=ca_file, cadata=ca_pem)
    else:
        context = ssl.create_default_context(capath=ca_directory)
    context.set_alpn_protocols(["h2"])
    return context


@cache
def _shared_context(
    ca_file: str | None, ca_pem: str | None, ca_directory: str | None, client_key_type: str | None
) -> ssl.SSLContext:
    # Kept for the process's life: one for each trust in the settings and kind of client certificate.
    return _trust_context(ca_file, ca_pem, ca_directory)


# A forked child makes its own: OpenSSL's context, and the locks inside it, may be in use by another thread
# of the parent at the fork.
os.register_at_fork(after_in_child=_shared_context.cache_clear)


_HASHED_NAME = re.compile(r"^[0-9a-f]{8}\.[0-9]+$")


@cache
def _hashed_ca_directory() -> str | None:
    """The system's CA directory when OpenSSL can look CAs up in it by subject hash (Debian's and Alpine's
    /etc/ssl/certs), and no CA file is forced (SSL_CERT_FILE); None otherwise, for the default trust.

    The default trust loads the whole CA bundle into a context, some 850 KB: into each of the process's
    shared contexts (one for each kind of client certificate and one without) and each `tls_context()`.
    From the directory, OpenSSL reads only the CA a handshake needs, when it needs it.
    """
    if os.environ.get("SSL_CERT_FILE"):
        return None
    directory = ssl.get_default_verify_paths().capath
    if not directory or not Path(directory).is_dir():
        return None
    with os.scandir(directory) as entries:
        hashed = any(_HASHED_NAME.match(entry.name) for entry in entries)
    return directory if hashed else None
