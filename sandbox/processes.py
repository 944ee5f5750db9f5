"""mdmq's worker processes under a supervisor, for rollouts that run on real brokers (the demo, the fault
suite, the benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Self

from config.settings import Settings
from workers.launch import launcher_arguments, parse_arguments, worker_command, worker_environment


def settings_environment(settings: Settings) -> dict[str, str]:
    """This process's environment with `settings` as the `MDMQ_*` variables (and no other `MDMQ_*`)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MDMQ_")}
    return environment | {
        f"MDMQ_{name.upper()}": str(value)
        for name, value in settings.model_dump().items()
        if value is not None
    }


class WorkerProcesses:
    """The `dramatiq` command of a rollout, started again whenever it exits on its own, as the worker's
    systemd unit (`Restart=on-failure`) or its Kubernetes pod would be: Dramatiq stops every process of the
    command when one of them dies, and the fault suite kills them."""

    def __init__(
        self,
        settings: Settings,
        processes: int,
        threads: int = 8,
        *,
        log: Path | None = None,
        restart_after_s: float = 1.0,
    ) -> None:
        self._command = worker_command(processes, threads, urgent_threads=settings.worker_urgent_threads)
        # Dramatiq's worker processes: `processes` for the bulk queue, and the urgent lane's if it has one.
        self._processes: int = parse_arguments(launcher_arguments(self._command)).processes
        self._environment = worker_environment(settings, settings_environment(settings))
        self._log = log
        self._restart_after_s = restart_after_s
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._watch: threading.Thread | None = None
        self.restarts = 0

    def __enter__(self) -> Self:
        self._process = self._spawn()
        self._watch = threading.Thread(target=self._keep_running, name="mdmq-demo-workers", daemon=True)
        self._watch.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        with self._lock:
            process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        if self._watch is not None:
            self._watch.join()

    @property
    def pid(self) -> int:
        with self._lock:
            assert self._process is not None, "started"
            return self._process.pid

    def children(self) -> set[int]:
        """The command's child processes now: its workers and its metrics exposition server."""
        try:
            listed = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except FileNotFoundError:  # between an exit and the restart
            return set()
        return {int(child) for child in listed.split()}

    def worker_pids(self) -> list[int]:
        """The worker processes alone, the urgent lane's last: Dramatiq starts them before its fork processes
        (the exposition server), so they are the first children."""
        return sorted(self.children())[: self._processes]

    def all_up(self) -> bool:
        """Whether every process of the command has started: the worker processes, the exposition server."""
        return len(self.children()) >= self._processes + 1

    def _spawn(self) -> subprocess.Popen[bytes]:
        stderr = self._log.open("ab") if self._log is not None else None
        try:
            return subprocess.Popen(  # noqa: S603  (our own interpreter and module, no outside input)
                self._command, env=self._environment, stdout=subprocess.DEVNULL, stderr=stderr
            )
        finally:
            if stderr is not None:
                stderr.close()  # the child holds its own copy

    def _keep_running(self) -> None:
        while True:
            with self._lock:
                process = self._process
            assert process is not None
            process.wait()
            if self._stopping.wait(self._restart_after_s):
                return
            with self._lock:
                self._process = self._spawn()
                self.restarts += 1
