"""The APNs emulator's cache of verified provider tokens never vouches for more than the token it verified."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sandbox.apns_auth import ApnsAuthenticator, ApnsRejected, Pusher
from sandbox.http2 import ConnectionInfo
from sandbox.testing import KEY_ID, TEAM_ID, World


def authenticate(auth: ApnsAuthenticator, token: str) -> Pusher:
    # A fresh connection each time: what is checked here is the token, not the connection's token history.
    return auth.authenticate(f"bearer {token}", ConnectionInfo())


def rejection(auth: ApnsAuthenticator, token: str) -> str:
    with pytest.raises(ApnsRejected) as rejected:
        authenticate(auth, token)
    return rejected.value.reason


@pytest.fixture
def auth(world: World) -> ApnsAuthenticator:
    authenticator = ApnsAuthenticator(world.registry, "development")
    authenticate(authenticator, world.apns_jwt())  # verified and cached
    return authenticator


def test_a_changed_token_is_verified_anew(world: World, auth: ApnsAuthenticator) -> None:
    cached = world.apns_jwt()
    forged = world.apns_jwt(iat=world.clock() - 1, key=ec.generate_private_key(ec.SECP256R1()))
    assert rejection(auth, forged) == "InvalidProviderToken"
    header, claims, signature = cached.split(".")
    tampered = f"{header}.{claims}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    assert rejection(auth, tampered) == "InvalidProviderToken"
    authenticate(auth, cached)


def test_a_revoked_key_is_refused_although_its_token_was_cached(
    world: World, auth: ApnsAuthenticator
) -> None:
    world.registry.revoke_apns_key(KEY_ID)
    assert rejection(auth, world.apns_jwt()) == "InvalidProviderToken"
    world.registry.add_apns_key(team_id=TEAM_ID, key_id=KEY_ID, public_key=world.apns_key.public_key())
    authenticate(auth, world.apns_jwt())


def test_a_replaced_key_no_longer_vouches_for_tokens_it_signed(world: World, auth: ApnsAuthenticator) -> None:
    replacement = ec.generate_private_key(ec.SECP256R1())
    world.registry.add_apns_key(team_id=TEAM_ID, key_id=KEY_ID, public_key=replacement.public_key())
    assert rejection(auth, world.apns_jwt()) == "InvalidProviderToken"
    authenticate(auth, world.apns_jwt(iat=world.clock() - 1, key=replacement))


def test_a_cached_token_older_than_an_hour_is_expired(world: World, auth: ApnsAuthenticator) -> None:
    token = world.apns_jwt()
    world.clock.advance(3599)
    authenticate(auth, token)  # not yet an hour old: still accepted
    world.clock.advance(2)
    assert rejection(auth, token) == "ExpiredProviderToken"


def test_a_token_for_another_team_or_key_is_not_served_from_the_cache(
    world: World, auth: ApnsAuthenticator
) -> None:
    second = ec.generate_private_key(ec.SECP256R1())
    world.registry.add_apns_key(team_id="OTHERTEAM1", key_id="SECONDKEY1", public_key=second.public_key())
    # The same claims and key as the cached token, another key id: verified against that key, and refused.
    assert rejection(auth, world.apns_jwt(kid="SECONDKEY1")) == "InvalidProviderToken"
    # The cached token's key id and key, another team: the team is checked anew.
    assert rejection(auth, world.apns_jwt(team="OTHERTEAM1")) == "InvalidProviderToken"
    # The second key's own team: accepted, with that key's topics.
    assert authenticate(auth, world.apns_jwt(kid="SECONDKEY1", team="OTHERTEAM1", key=second)).topics is None
