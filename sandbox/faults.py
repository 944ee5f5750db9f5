"""Fault injection for the emulators: latency, error rates, storms, GOAWAY and the stream limit."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType


class LatencyKind(StrEnum):
    fixed = "fixed"
    uniform = "uniform"
    normal = "normal"


@dataclass(frozen=True, slots=True)
class Latency:
    """How long the emulator waits before answering one request, in milliseconds (never below 0)."""

    kind: LatencyKind = LatencyKind.fixed
    a_ms: float = 0.0  # fixed value, uniform low bound, or normal mean
    b_ms: float = 0.0  # uniform high bound, or normal standard deviation

    @classmethod
    def fixed(cls, ms: float) -> Latency:
        return cls(LatencyKind.fixed, ms)

    @classmethod
    def uniform(cls, low_ms: float, high_ms: float) -> Latency:
        return cls(LatencyKind.uniform, low_ms, high_ms)

    @classmethod
    def normal(cls, mean_ms: float, stddev_ms: float) -> Latency:
        return cls(LatencyKind.normal, mean_ms, stddev_ms)

    def sample_s(self, rng: random.Random) -> float:
        if self.kind is LatencyKind.uniform:
            ms = rng.uniform(self.a_ms, self.b_ms)
        elif self.kind is LatencyKind.normal:
            ms = rng.gauss(self.a_ms, self.b_ms)
        else:
            ms = self.a_ms
        return max(ms, 0.0) / 1000.0


@dataclass(frozen=True, slots=True)
class Storm:
    """A stretch of failures: `fraction` of requests fail with `reason` (the provider's own reason string).

    It ends after `duration_s` seconds or `requests` failed requests, whichever comes first (neither: when
    stopped). A 429 burst is `Storm("TooManyRequests", retry_after_s=5, requests=20)`; a 5xx storm is
    `Storm("ServiceUnavailable", fraction=0.5, duration_s=10)`.
    """

    reason: str
    fraction: float = 1.0
    duration_s: float | None = None
    requests: int | None = None
    retry_after_s: int | None = None


class Garbage(StrEnum):
    """An answer no provider sends: met when something else answers, or when a connection breaks."""

    html = "html"  # an HTML error page with the given status, as a proxy in front of the provider sends
    not_json = "not_json"  # the given status, `application/json`, and a body that does not parse
    truncated = "truncated"  # the answer's HEADERS, then a DATA frame cut short, then the connection closes


@dataclass(frozen=True, slots=True)
class GarbageBurst:
    """The next `requests` requests are answered with `kind` garbage (`status` for html and not_json)."""

    kind: Garbage
    requests: int
    status: int = 502

    def response_body(self) -> tuple[str, bytes]:
        """The content type and body of an html or not_json answer."""
        if self.kind is Garbage.html:
            page = f"<html><head><title>{self.status}</title></head><body>upstream error</body></html>"
            return "text/html", page.encode()
        return "application/json", b'{"reason": "BadDevi'


@dataclass(frozen=True, slots=True)
class InjectedError:
    """What the emulator must answer instead of handling the request."""

    reason: str
    retry_after_s: int | None = None


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """The faults one emulator starts with; `FaultRuntime` changes them while it runs."""

    latency: Latency = Latency()
    seed: int | None = None
    error_rates: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    retry_after_s: int | None = None  # sent with injected 429/503 errors when set
    storm: Storm | None = None
    goaway_every_n_streams: int | None = None
    max_concurrent_streams: int = 1000  # APNs advertises 1000 once a connection is authenticated


class FaultRuntime:
    """The live, changeable faults of one emulator. Safe to change from another thread."""

    def __init__(
        self, config: FaultConfig | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        config = config or FaultConfig()
        self.config = config
        self._clock = clock
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self.latency = config.latency
        self.error_rates: dict[str, float] = dict(config.error_rates)
        self.retry_after_s = config.retry_after_s
        self.goaway_every_n_streams = config.goaway_every_n_streams
        self.goaways_sent = 0  # by the every-N rule, over all connections
        self.max_concurrent_streams = config.max_concurrent_streams
        self._storm: Storm | None = None
        self._garbage: list[GarbageBurst] = []  # the current burst first, then those queued after it
        self._garbage_left = 0
        self._storm_started_at = 0.0
        self._storm_failures = 0
        if config.storm is not None:
            self.start_storm(config.storm)

    def start_storm(self, storm: Storm) -> None:
        with self._lock:
            self._storm = storm
            self._storm_started_at = self._clock()
            self._storm_failures = 0

    def start_garbage(self, *bursts: GarbageBurst) -> None:
        """Answer the next requests with `bursts`, one after another (replacing any still under way)."""
        with self._lock:
            self._garbage = [b for b in bursts if b.requests > 0]
            self._garbage_left = self._garbage[0].requests if self._garbage else 0

    @property
    def garbage_left(self) -> int:
        """Garbage answers still to send, over every burst queued."""
        with self._lock:
            return self._garbage_left + sum(b.requests for b in self._garbage[1:])

    def pick_garbage(self) -> GarbageBurst | None:
        """The garbage this request gets instead of an answer, if a burst is on. Called once per request."""
        with self._lock:
            if not self._garbage:
                return None
            burst = self._garbage[0]
            self._garbage_left -= 1
            if self._garbage_left == 0:
                self._garbage.pop(0)
                self._garbage_left = self._garbage[0].requests if self._garbage else 0
            return burst

    def stop_storm(self) -> None:
        with self._lock:
            self._storm = None

    @property
    def storm_active(self) -> bool:
        with self._lock:
            return self._current_storm() is not None

    @property
    def storm_failures(self) -> int:
        """Requests the current (or last) storm failed."""
        with self._lock:
            return self._storm_failures

    def set_error_rate(self, reason: str, rate: float) -> None:
        with self._lock:
            if rate > 0:
                self.error_rates[reason] = rate
            else:
                self.error_rates.pop(reason, None)

    def delay_s(self) -> float:
        with self._lock:
            return self.latency.sample_s(self._rng)

    def pick_error(self) -> InjectedError | None:
        """Decide whether this request fails, and how. Called once per request."""
        with self._lock:
            storm = self._current_storm()
            if storm is not None and self._rng.random() < storm.fraction:
                self._storm_failures += 1
                return InjectedError(storm.reason, storm.retry_after_s)
            return self._pick_random_error()

    def _pick_random_error(self) -> InjectedError | None:
        if not self.error_rates:
            return None
        draw = self._rng.random()
        for reason, rate in self.error_rates.items():
            if draw < rate:
                return InjectedError(reason, self.retry_after_s)
            draw -= rate
        return None

    def _current_storm(self) -> Storm | None:
        storm = self._storm
        if storm is None:
            return None
        over_time = (
            storm.duration_s is not None and self._clock() - self._storm_started_at >= storm.duration_s
        )
        over_count = storm.requests is not None and self._storm_failures >= storm.requests
        if over_time or over_count:
            self._storm = None
            return None
        return storm
