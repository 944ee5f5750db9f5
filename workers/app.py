"""The composition root: builds the engine, the broker and (later) the providers from `Settings`, once per
process, and hands them down. Nothing else in mdmq reads the environment or builds these parts."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from config.settings import Settings, load_settings
from models.database import Engine, Session, create_engine
from models.secrets import KeyRing, key_ring_from_settings
from workers.broker import build_broker
from workers.fair import FairLaneName, FairQueue
from workers.fair.database import DatabaseFairQueue
from workers.fair.memory import MemoryFairQueue
from workers.fair.redis import RedisFairQueue
from workers.policy import RetryPolicy
from workers.providers.endpoints import ProviderEndpoints
from workers.push_gateway import PushGateway
from workers.services.key_checks import KeyChecks


class App:
    """mdmq's parts for one process. The engine is built lazily and rebuilt after a fork: a connection pool
    inherited from a parent process would share sockets with it."""

    def __init__(self, settings: Settings | None = None, *, policy: RetryPolicy | None = None) -> None:
        self.settings = settings or load_settings()
        self.policy = policy or RetryPolicy.defaults()
        self._engine: Engine | None = None
        self._engine_pid = 0
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None or self._engine_pid != os.getpid():
                self._engine = create_engine(
                    self.settings.database_url,
                    pool_size=self.settings.database_pool_size,
                    key_ring=self.key_ring,
                )
                self._engine_pid = os.getpid()
            return self._engine

    @cached_property
    def key_ring(self) -> KeyRing | None:
        """The keys secrets at rest are encrypted with; `SettingsError` without one in production."""
        return key_ring_from_settings(self.settings)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits when the block ends and rolls back when it raises."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    @cached_property
    def broker(self) -> dramatiq.Broker:
        s = self.settings
        return build_broker(
            s.broker_url,
            namespace=s.broker_namespace,
            heartbeat_timeout_s=s.broker_heartbeat_timeout_s,
            maintenance_per_million=s.broker_maintenance_per_million,
        )

    @cached_property
    def fair(self) -> FairQueue:
        """The bulk lane's fair queue, where the broker's processes all see it: in Redis beside a Redis
        broker's queues, in this process beside the in-process broker, in the database otherwise (RabbitMQ
        keeps no state a script could share)."""
        return self._fair_queue(FairLaneName.bulk)

    @cached_property
    def paced(self) -> FairQueue:
        """The paced lane's fair queue (`workers.fair.FairLaneName`), beside the bulk lane's."""
        return self._fair_queue(FairLaneName.paced)

    def fair_queue(self, lane: FairLaneName) -> FairQueue:
        return self.paced if lane is FairLaneName.paced else self.fair

    def _fair_queue(self, lane: FairLaneName) -> FairQueue:
        broker = self.broker
        if isinstance(broker, RedisBroker):
            return RedisFairQueue(broker.client, self.settings.broker_namespace, lane=lane)
        if isinstance(broker, StubBroker):
            return MemoryFairQueue()
        return DatabaseFairQueue(self.session, lane=lane)

    @cached_property
    def endpoints(self) -> ProviderEndpoints:
        s = self.settings
        return ProviderEndpoints(
            apns_production=s.apns_url,
            apns_sandbox=s.apns_sandbox_url,
            fcm=s.fcm_url,
            oauth_token=s.fcm_token_url,
            aosp=s.aosp_url,
            ca_file=s.push_ca_file,
        )

    @cached_property
    def gateway(self) -> PushGateway:
        s = self.settings
        return PushGateway(
            self.endpoints, provider_idle_s=s.provider_idle_s, max_connections=s.provider_max_connections
        )

    @cached_property
    def key_checks(self) -> KeyChecks:
        """The API's checks of uploaded keys: a pool of processes, started at the first upload."""
        s = self.settings
        return KeyChecks(processes=s.api_key_check_processes, queue=s.api_key_check_queue)

    def close(self) -> None:
        if "key_checks" in self.__dict__:
            self.key_checks.close()
        if "gateway" in self.__dict__:
            self.gateway.close()
        if "broker" in self.__dict__:
            self.broker.close()  # RabbitMQ: every thread's connection
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
