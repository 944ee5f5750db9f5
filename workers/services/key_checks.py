"""The costly check of an uploaded credential's private key, run once per key: in a bounded pool of
processes for the API, where under the GIL it would stall every other request, in-process otherwise."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections import OrderedDict
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from cryptography.hazmat.primitives.asymmetric import rsa

from config.errors import MdmqError
from workers.providers.credentials import (
    ApnsCertificate,
    Credential,
    FcmServiceAccount,
    InvalidCredential,
    inconsistent_key,
)
from workers.providers.keys import key_der, key_digest, read_private_key, rsa_key_consistent

log = logging.getLogger(__name__)

# The checks' processes yield the CPU to the API's own: a queued upload may wait, a health check not.
CHECK_NICENESS = 10


class ChecksBusy(MdmqError):
    """Every slot of the key checks is taken: nothing was stored; try the upload again shortly."""

    def __init__(self) -> None:
        super().__init__("every check of uploaded keys is taken: nothing was stored, try again shortly")


class KeyChecks:
    """Checks the RSA key of a credential on its way in (`require_consistent`) and remembers each key's
    answer by the digest of its DER, so that the same key in another PEM layout is not checked again.

    With `processes` 0 the check runs in the caller's thread (`mdmq credentials put`, one upload). Else
    it runs in a pool of that many processes, started at the first check and stopped by `close`; at most
    `queue` more callers wait for a process, and one beyond them gets `ChecksBusy` at once."""

    def __init__(self, *, processes: int = 0, queue: int = 0, remember: int = 1024) -> None:
        self.processes = processes
        self._slots = threading.BoundedSemaphore(processes + queue) if processes else None
        self._remember = remember
        self._answers: OrderedDict[str, bool] = OrderedDict()
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self.checked = 0  # keys the costly check ran for: an answer remembered is not counted
        self.remembered = 0  # checks answered from memory

    def require_consistent(self, material: Credential) -> None:
        """`InvalidCredential` when `material` carries an RSA key whose primes and exponents do not match
        its modulus; `ChecksBusy` when the pool has no slot for it. Other keys cost nothing to check."""
        named = _rsa_key_of(material)
        if named is None:
            return
        name, key = named
        der = key_der(key)
        if not self._answer(der):
            raise InvalidCredential(inconsistent_key(name))

    def close(self) -> None:
        """Stops the pool's processes, if any started; a later check starts them again."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _answer(self, der: bytes) -> bool:
        digest = key_digest(der)
        with self._lock:
            if digest in self._answers:
                self._answers.move_to_end(digest)
                self.remembered += 1
                return self._answers[digest]
        consistent = self._check(der)
        with self._lock:
            self.checked += 1
            self._answers[digest] = consistent
            if len(self._answers) > self._remember:
                self._answers.popitem(last=False)
        return consistent

    def _check(self, der: bytes) -> bool:
        if self._slots is None:
            return rsa_key_consistent(der)
        if not self._slots.acquire(blocking=False):
            raise ChecksBusy()
        pool = self._started()
        try:
            return pool.submit(rsa_key_consistent, der).result()
        except BrokenProcessPool:  # a process died (killed, out of memory): the next check starts anew
            log.warning("a key-check process died; the pool starts again at the next upload")
            self._forget_pool(pool)
            raise ChecksBusy() from None
        except CancelledError:  # the app is stopping: the upload is tried again elsewhere
            raise ChecksBusy() from None
        finally:
            self._slots.release()

    def _started(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # Spawned, not forked: a fork of this threaded process would copy its locks and sockets.
                context = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(
                    max_workers=self.processes,
                    mp_context=context,
                    initializer=os.nice,
                    initargs=(CHECK_NICENESS,),
                )
            return self._pool

    def _forget_pool(self, broken: ProcessPoolExecutor) -> None:
        """Drop the broken pool, unless another thread has put a new one in its place already."""
        with self._lock:
            if self._pool is not broken:
                return
            self._pool = None
        broken.shutdown(wait=False, cancel_futures=True)


def _rsa_key_of(material: Credential) -> tuple[str, rsa.RSAPrivateKey] | None:
    """The RSA key `material` carries, with the name its errors give it; None for any other."""
    if isinstance(material, FcmServiceAccount):
        return "private_key", material.signing_key
    if isinstance(material, ApnsCertificate):
        key = read_private_key(material.private_key_pem)  # read and bounded once already: microseconds
        return ("private_key_pem", key) if isinstance(key, rsa.RSAPrivateKey) else None
    return None
