"""What a push token of each provider looks like, checked where a device is enrolled: a token the provider
can never take is refused with a reason, rather than stored and found dead at the first push.

- APNs: hex, of no size to assume (Apple: "device tokens are of variable length; don't hard-code their
  size" — Sending notification requests to APNs); taken here as whole bytes, at least the 32 every token has
  had so far, at most the column's 512 characters.
- FCM: the format is undocumented (Best practices for FCM registration token management); real tokens are
  base64url characters with at most one `:` (an instance id, then the token proper), 100 to 4,096 long
  (some 150-165 in practice) — the shape the sandbox's emulator takes too.
- AOSP (Pushy): undocumented as well (examples are 22 hex characters): letters, digits, `_`, `-`, `:`,
  1 to 512 of them — no space or control character.
"""

from __future__ import annotations

import hashlib
import re

from models.enums import Provider

MAX_TOKEN_CHARS = 512  # the column's size
_APNS = re.compile(r"(?:[0-9a-fA-F]{2}){32,256}")
_FCM = re.compile(r"[A-Za-z0-9_-]+(?::[A-Za-z0-9_-]+)?")
_FCM_LENGTHS = range(100, MAX_TOKEN_CHARS + 1)
_AOSP = re.compile(r"[A-Za-z0-9_:-]{1,512}")


def token_problem(provider: Provider, token: str) -> str | None:
    """Why `token` cannot be a push token of `provider`, in words that never repeat it; None when it can."""
    if provider is Provider.apns:
        if _APNS.fullmatch(token) is None:
            return "an APNs device token is hex digits, an even number of them, 64 to 512"
        return None
    if provider is Provider.fcm:
        if len(token) not in _FCM_LENGTHS or _FCM.fullmatch(token) is None:
            return (
                "an FCM registration token is 100 to 512 base64url characters (A-Z, a-z, 0-9, '-', '_'), "
                "with at most one ':'"
            )
        return None
    if _AOSP.fullmatch(token) is None:
        return "an AOSP push token is 1 to 512 letters, digits, '_', '-' or ':'"
    return None


def token_digest(token: str) -> str:
    """A digest that tells whether a device still has the token read earlier, without carrying the token."""
    return hashlib.sha256(token.encode()).hexdigest()
