"""Emulated APNs, FCM and AOSP (Pushy-style) push services, spoken over real HTTP/2, for tests and benchmarks.

mdmq's production provider clients talk to these emulators exactly as they talk to the real services: same
protocol (HTTP/2 over TLS with ALPN ``h2``, or cleartext h2c with prior knowledge), same paths, headers, auth
(ES256 provider JWT or TLS client certificate for APNs, RS256 service-account OAuth for FCM, ``api_key`` for
AOSP) and the same status codes and error bodies. Like Google's endpoints and Pushy, the FCM and AOSP
emulators also serve HTTP/1.1 on the same ports (``sandbox.http1``, on h11), so that HTTP/1.1-only clients
(google-auth, requests, pyfcm) can be pointed at them: over TLS, ALPN picks ``h2`` when offered, else
``http/1.1``; over cleartext the first bytes decide (the HTTP/2 preface, or HTTP/1.1). APNs, like Apple's,
is HTTP/2 only.

A distribution of its own (``mdmq-sandbox``, ``pip install ./sandbox``; a production install has no
``sandbox``). Beside the emulators: the simulated fleet (``sandbox.fleet``) and the rollout harness that
``mdmq demo``, the acceptance tests and the benchmarks share (``sandbox.rollout``, with the worker-process
supervisor ``sandbox.processes`` and the emulators' credentials ``sandbox.credentials``).

Quick start (async)::

    from sandbox import DeviceRegistry, FaultConfig, Sandbox, Storm

    registry = DeviceRegistry()
    push_certificate = issue_mdm_push_certificate(registry)  # sandbox.tls: UID = topic, CA registered
    registry.add_apns_device(token_hex, topic=push_certificate.topic)  # environment="production"
    registry.add_apns_device(other_hex, topic=push_certificate.topic, environment="development", online=False)
    registry.unregister(dead_hex)                          # APNs 410 Unregistered / FCM 404 UNREGISTERED
    registry.add_fcm_service_account("sa@proj.iam.gserviceaccount.com", rsa_public_key, project_id="proj")
    registry.add_fcm_device(fcm_token, project_id="proj")
    registry.add_aosp_api_key("0123abcd")
    registry.add_aosp_device(aosp_token, online=False)     # stays in the push's pending_devices
    registry.subscribe(lambda delivery: ...)               # called when a push reaches an online device

    async with Sandbox(registry, tls=True, apns_faults=FaultConfig(goaway_every_n_streams=500)) as sb:
        sb.apns_url      # APNs production, "https://127.0.0.1:PORT" ("http://..." h2c without tls)
        sb.apns_sandbox_url  # APNs development: tokens and certificates work only in their environment
        sb.fcm_url       # f"{sb.fcm_url}/token" and f"{sb.fcm_url}/v1/projects/proj/messages:send"
        sb.aosp_url      # f"{sb.aosp_url}/push?api_key=KEY", f"{sb.aosp_url}/pushes/ID?api_key=KEY"
        sb.apns_faults.start_storm(Storm(reason="ServiceUnavailable", fraction=0.5, duration_s=2.0))
        sb.apns_faults.stop_storm()
        registry.come_online(aosp_token)                   # drains it from pending_devices, fires subscribers

Sync tests use ``SandboxThread`` (same arguments, ``with SandboxThread(registry) as sb:``), which runs
the emulators on an event loop in a background thread.
``serve_forever(host, apns_port, fcm_port, aosp_port, tls)`` runs them until interrupted (``mdmq sandbox``).

TLS: ``Sandbox(registry, tls=True)`` makes a throw-away CA and a server certificate for ``localhost``,
``127.0.0.1`` and the real service host names; clients trust ``sb.tls.ca_pem``. ALPN selects ``h2``
(FCM and AOSP: ``http/1.1`` for clients that offer only that).
APNs client-certificate auth: ``registry.add_apns_client_ca(ca_cert)`` (before start) and
``registry.add_apns_client_certificate(cert, topics=[...])``; ``sandbox.tls.issue_mdm_push_certificate``
does both for an MDM push certificate. MDM pushes are accepted only over a client certificate, to its
subject's UID (``400 TopicDisallowed`` otherwise, a provider token included); provider tokens may send the
other push types.

Faults (``sandbox.faults``): ``FaultConfig`` is fixed per run (latency ``Latency.fixed(ms)`` /
``Latency.uniform(lo, hi)`` / ``Latency.normal(mean, sd)`` with ``seed``; ``error_rates`` by the
provider's own reason, e.g. ``{"BadDeviceToken": 0.01}`` or ``{"UNAVAILABLE": 0.05}``; a ``storm``;
``goaway_every_n_streams``; ``max_concurrent_streams`` advertised in SETTINGS). Each emulator gets a
``FaultRuntime`` (``sb.apns_faults``, ``sb.fcm_faults``, ``sb.aosp_faults``) that can be changed while it
runs. Over HTTP/1.1, latency, error rates and storms (429 with Retry-After included) apply as over HTTP/2;
GOAWAY and the stream limit are HTTP/2 framing and do not. An HTTP/1.1 connection answers its requests one
at a time, so injected latency adds up along a keep-alive connection, as it would at the real services.

Time: ``DeviceRegistry(clock=...)`` takes a ``() -> float`` (unix seconds) so expiry can be tested without
sleeping; the emulators read the time through the registry's clock.

HTTP/2 (``sandbox.h2_connection``): the server side of RFC 9113 written for the emulators, so that they cost
little CPU per request (``python -m sandbox.bench`` measures it). A request whose header block breaks
RFC 9113 8.2-8.3 (uppercase names, connection-specific fields, missing pseudo-header fields, ...) is reset
with ``PROTOCOL_ERROR`` and the connection's other streams go on; a protocol error (bad frame, HPACK,
flow control) closes the connection with GOAWAY and its error code. Injected latency is kept to the
millisecond: answers due in the same millisecond go out together.

Emulator choices where the real services do not document behaviour: a non-JSON APNs body is answered
400 ``PayloadEmpty``; a client exceeding ``SETTINGS_MAX_CONCURRENT_STREAMS`` is a connection error
(GOAWAY ``PROTOCOL_ERROR``); AOSP pushes are kept for the emulator's lifetime, so a push past its expiration
still answers its status with the devices that never received it.
"""

from sandbox.faults import FaultConfig, FaultRuntime, Garbage, GarbageBurst, Latency, Storm
from sandbox.registry import Delivery, DeviceRegistry
from sandbox.server import Sandbox, SandboxThread, serve_forever

__all__ = [
    "Delivery",
    "DeviceRegistry",
    "FaultConfig",
    "FaultRuntime",
    "Garbage",
    "GarbageBurst",
    "Latency",
    "Sandbox",
    "SandboxThread",
    "Storm",
    "serve_forever",
]
