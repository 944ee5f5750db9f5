"""Client certificates over a TLS context shared by many of them: each connection presents its own."""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Iterator
from typing import Protocol

from cryptography import x509

logger = logging.getLogger(__name__)


class _Loading:
    """Held from loading a certificate into a shared context to making the TLS object that copies it."""

    lock = threading.Lock()
    warned_of_file = False  # the private-file fallback, said once a process

    @classmethod
    def renew(cls) -> None:
        # A process forked while another thread held it would have it held for good.
        cls.lock = threading.Lock()


os.register_at_fork(after_in_child=_Loading.renew)


class TlsContext(Protocol):
    """What asyncio's TLS layer asks of its context: an `ssl.SSLContext`, or a `ClientCertificateContext`."""

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject: ...


class ClientCertificateContext:
    """A context shared with other client certificates, bound to one: every TLS object it makes presents
    this certificate.

    OpenSSL copies a context's certificate and key into a TLS object when it makes it, and a later change to
    the context does not reach that object [SSL_CTX_use_certificate(3)]. So the certificate is loaded into
    the shared context and the TLS object made right after, under one lock for the process; the certificate
    and key are kept as PEM text (a few KB) rather than in a context of their own (27 KiB each).

    A context holds one certificate per key type (RSA, EC, Ed25519...), and a TLS 1.3 client presents the
    first its signature algorithms allow, not the last loaded: share a context only between certificates
    of one `key_type`.
    """

    __slots__ = ("_chain_and_key", "_shared")

    def __init__(self, shared: ssl.SSLContext, *chain_and_key_pem: str) -> None:
        """The certificate chain and the key as PEM text, in one or more parts (the credential's own strings,
        not a copy joined here). Raises ssl.SSLError if the key is not the certificate's, or either cannot
        be read."""
        _load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), chain_and_key_pem)  # checked on a throw-away one
        self._shared = shared
        self._chain_and_key = chain_and_key_pem

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        """Raises ValueError for a `session` to resume: a session carries the client authentication of the
        connection that made it, and the shared context's sessions may be another organization's."""
        if session is not None:
            raise ValueError("a connection with a client certificate of a shared context resumes no session")
        with _Loading.lock:
            _load_chain(self._shared, self._chain_and_key)
            return self._shared.wrap_bio(
                incoming, outgoing, server_side=server_side, server_hostname=server_hostname
            )


def key_type(certificate_pem: str) -> str:
    """The certificate's public key algorithm (its OID): which of a context's certificate slots it takes."""
    return x509.load_pem_x509_certificate(certificate_pem.encode()).public_key_algorithm_oid.dotted_string


def _load_chain(context: ssl.SSLContext, chain_and_key_pem: tuple[str, ...]) -> None:
    # ssl loads a certificate chain only from a file: one in memory where Linux has them, else a private one.
    # A line break between the parts: a PEM block must start on a line of its own.
    with _private_file("\n".join(chain_and_key_pem).encode()) as path:
        context.load_cert_chain(path)


@contextlib.contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    memory_file = _memory_file()
    if memory_file is not None:
        with os.fdopen(memory_file, "wb") as file:
            file.write(data)
            file.flush()
            yield f"/proc/self/fd/{file.fileno()}"
        return
    if not _Loading.warned_of_file:
        _Loading.warned_of_file = True
        logger.warning(
            "no memory file (memfd_create) for client certificates: each connection writes its certificate "
            "and key to a private file and removes it at once; keep the temporary directory on a tmpfs"
        )
    with tempfile.TemporaryDirectory(prefix="mdmq-tls-") as directory:
        path = os.path.join(directory, "client.pem")
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
            file.write(data)
        yield path


def _memory_file() -> int | None:
    if not hasattr(os, "memfd_create") or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.memfd_create("mdmq-client-certificate", os.MFD_CLOEXEC)
    except OSError:  # refused by a seccomp filter (EPERM), or no descriptor left (EMFILE): a file will do
        return None
