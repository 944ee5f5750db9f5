"""Upload load for the upload tests and the benchmark: client threads in a process and session of their
own (not the API's: in production the clients are other machines), each alternating an oversized key
(8192-bit RSA: refused) and a heavy but valid one (a distinct 4096-bit RSA key each time)."""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import os
import threading
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.integration.security.keys import RSA_8192_TEST_ONLY, rsa_key_variants

PROJECT_ID = "mdmq-load"


def service_account(key_pem: str) -> dict[str, Any]:
    """An FCM upload of a service account with `key_pem`."""
    secret = {"client_email": f"push@{PROJECT_ID}.iam.gserviceaccount.com", "private_key": key_pem,
              "project_id": PROJECT_ID}  # fmt: skip
    return {"kind": "fcm_service_account", "secret": json.dumps(secret)}


class UploadLoad:
    """`clients` threads PUT to `url` from the moment the block starts until it ends; `outcomes` then
    counts the answers, as "oversized 400", "valid 200", "valid 503 5003 Retry-After: 5"... `niceness`
    is the clients' priority (their session's, where the kernel groups CPU time by session)."""

    def __init__(self, url: str, token: str, *, clients: int, niceness: int = 0) -> None:
        context = multiprocessing.get_context("spawn")
        self._ready, self._stop, self._answers = context.Event(), context.Event(), context.Queue()
        self._process = context.Process(
            target=_upload_loop,
            args=(url, token, clients, niceness),
            kwargs={"ready": self._ready, "stop": self._stop, "answers": self._answers},
        )
        self.outcomes: Counter[str] = Counter()

    def __enter__(self) -> UploadLoad:
        self._process.start()
        if not self._ready.wait(timeout=120):  # the clients have their keys
            self._process.kill()
            raise RuntimeError("the upload clients did not start within 120 s")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self.outcomes = self._answers.get(timeout=180)
        self._process.join(timeout=30)


def _upload_loop(
    url: str, token: str, clients: int, niceness: int, *, ready: Any, stop: Any, answers: Any
) -> None:
    os.setsid()
    with contextlib.suppress(OSError):  # the session's weight, where the kernel has autogroups
        Path("/proc/self/autogroup").write_text(str(niceness))
    os.nice(niceness)
    oversized = service_account(RSA_8192_TEST_ONLY.read_text())
    variants = rsa_key_variants(rsa.generate_private_key(public_exponent=65537, key_size=4096))
    lock = threading.Lock()
    counted: Counter[str] = Counter()

    def client(number: int) -> None:
        with requests.Session() as http:
            for turn in itertools.count():
                if stop.is_set():
                    return
                with lock:
                    body = oversized if (number + turn) % 2 == 0 else service_account(next(variants))
                kind = "oversized" if body is oversized else "valid"
                try:
                    answer = http.put(
                        url, json=body, timeout=120, headers={"Authorization": f"Bearer {token}"}
                    )
                    outcome = f"{kind} {answer.status_code}"
                    if answer.status_code == 503:
                        code = answer.json()["error"]["code"]
                        outcome += f" {code} Retry-After: {answer.headers.get('Retry-After')}"
                except requests.ConnectionError:  # a keep-alive connection the API closed as it was reused
                    outcome = f"{kind} connection closed"
                with lock:
                    counted[outcome] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    ready.set()
    for thread in threads:
        thread.join()
    answers.put(counted)
