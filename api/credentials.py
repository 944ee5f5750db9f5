"""Push credentials over HTTP: upload (validated, its expiry read back, a change of APNs topic guarded,
what was held for the old one released and enqueued) and list. Secrets are write-only: no answer ever
carries one."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.auth import Caller, OrganizationId
from api.errors import CONFLICT, INVALID_REQUEST, SERVICE_BUSY, ApiError, ErrorEnvelope
from api.representation import credential
from api.text import StoredText
from models.enums import CredentialKind, Provider, PushEnvironment
from models.store.credentials import list_credentials
from workers.actors import Actors
from workers.providers.credentials import InvalidCredential
from workers.services.credentials import CredentialUpload, TopicChange, upload_credential
from workers.services.key_checks import ChecksBusy

# When a refused upload may come back: a slot of the key checks frees within a second or so (one check
# of a 4096-bit RSA key is ~0.5 s of CPU), a queue of them within a few.
RETRY_AFTER_S = 5


class CredentialIn(StoredText):
    kind: CredentialKind
    secret: str = Field(min_length=1, max_length=20_000, description="PEM, service-account JSON or API key.")
    keyId: str | None = Field(default=None, max_length=64)
    teamId: str | None = Field(default=None, max_length=64)
    topic: str | None = Field(
        default=None, max_length=255, description="APNs: read from the certificate; if given, must be its."
    )
    projectId: str | None = Field(default=None, max_length=255)
    environment: PushEnvironment = PushEnvironment.production
    force: bool = Field(
        default=False, description="APNs: store a certificate of another topic than the stored."
    )

    def upload(self) -> CredentialUpload:
        return CredentialUpload(
            kind=self.kind,
            secret=self.secret,
            key_id=self.keyId,
            team_id=self.teamId,
            topic=self.topic,
            project_id=self.projectId,
            environment=self.environment,
        )


class CredentialOut(BaseModel):
    organizationId: str
    provider: str
    kind: str
    status: str
    statusReason: str | None
    notAfter: datetime | None
    keyId: str | None
    teamId: str | None
    topic: str | None
    projectId: str | None
    environment: str
    updatedAt: datetime
    released: int | None = None


class CredentialAnswer(BaseModel):
    status: bool = True
    data: CredentialOut


class CredentialsAnswer(BaseModel):
    status: bool = True
    data: list[CredentialOut]


def router(actors: Actors) -> APIRouter:
    routes = APIRouter(prefix="/v1/organizations/{organizationId}/credentials", tags=["credentials"])
    app = actors.app

    @routes.put(
        "/{provider}",
        response_model=CredentialAnswer,
        response_model_exclude_none=False,
        responses={
            409: {"model": ErrorEnvelope, "description": "Conflict (4009): a change of APNs topic"},
            503: {"model": ErrorEnvelope, "description": "Service busy (5003): every key check is taken"},
        },
    )
    def upload(
        organizationId: OrganizationId,
        provider: Provider,
        body: CredentialIn,
        caller: Caller,
    ) -> dict[str, Any]:
        """Required permission: `mdm.credential.manage`. Replaces the organization's credential for the
        provider once it validates; a certificate's expiry is read from it. Deployments held for the old one
        are released and enqueued. The secret is never returned.

        APNs takes only an MDM push certificate (`apns_certificate`: the certificate and its key, one PEM
        text): MDM pushes are certificate-only, so a token key (`apns_token`, .p8) is a 400. The topic is
        the certificate's subject UID (`com.apple.mgmt.…`); a `topic` given must be that one. A certificate
        whose topic differs from the stored credential's is a 409 (devices enrolled under the old topic
        stop answering until they re-enroll: renew with the same Apple ID instead) unless the body says
        `"force": true`; a forced change is kept in the audit record. A kind of another provider, a
        control character in a field, or an FCM project id that is not a Google Cloud project id is a 400.
        Fields the kind does not use are ignored.

        Keys are bounded before any costly check: an RSA key outside 2048-4096 bits, an EC key on another
        curve than P-256 or a key of another type is a 400 saying which. An RSA key's consistency check
        runs in a small pool of processes, once per key whatever its PEM layout; when every slot of the
        pool and its queue is taken the answer is a 503 (5003) with `Retry-After`, and nothing is stored."""
        caller.require(organizationId, "mdm.credential.manage")
        try:
            stored = upload_credential(
                app.session,
                actors.enqueue_ids,
                organization_id=organizationId,
                provider=provider,
                upload=body.upload(),
                force=body.force,
                actor=caller.actor,
                checks=app.key_checks,
            )
        except InvalidCredential as e:  # names the field, never the value
            raise ApiError(INVALID_REQUEST, str(e)) from None
        except TopicChange as e:
            raise ApiError(CONFLICT, str(e)) from None
        except ChecksBusy as e:
            raise ApiError(SERVICE_BUSY, str(e), headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        return {"status": True, "data": credential(stored.credential) | {"released": len(stored.released)}}

    @routes.get("", response_model=CredentialsAnswer)
    def listing(organizationId: OrganizationId, caller: Caller) -> dict[str, Any]:
        """Required permission: `mdm.credential.manage`. Every credential with its status and expiry."""
        caller.require(organizationId, "mdm.credential.manage")
        with app.session() as session:
            rows = list_credentials(session, organization_id=organizationId)
            return {"status": True, "data": [credential(row) for row in rows]}

    return routes
