"""Secrets at rest: push credential material and device push magic, encrypted with a ring of AES-GCM keys.

The newest key encrypts; every key of the ring decrypts, so a new key is rolled out before the rows move to it
(`mdmq secrets rotate`). A stored value that starts with `SEALED_PREFIX` is encrypted; any other value is a
plaintext row written before encryption, read as it is. A value no key of the ring decrypts is read as an
`Undecryptable`, never as an error: the dispatch holds what needs it (`reveal` raises `CannotDecrypt`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.engine import Dialect, Engine

from config.errors import MdmqError
from config.settings import Environment, Settings, SettingsError

# Versioned: a later scheme (another cipher, another key format) gets a prefix of its own. After it: the
# key's id, a colon, and url-safe base64 of the nonce, the ciphertext and the tag.
SEALED_PREFIX = "mdmq:g1:"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # random per value: 2^32 values per key keep the collision risk negligible
CANNOT_DECRYPT = "cannot decrypt credential: check MDMQ_SECRET_KEY"
# The key the embedded mode generates beside its SQLite file when no key is configured.
GENERATED_KEY_NAME = "mdmq-secret.key"
_RING_ATTRIBUTE = "mdmq_key_ring"  # where an engine's dialect keeps its ring (see `attach_key_ring`)

log = logging.getLogger(__name__)


class CannotDecrypt(MdmqError):
    """cannot decrypt credential: check MDMQ_SECRET_KEY"""

    def __init__(self) -> None:
        super().__init__(CANNOT_DECRYPT)


class Undecryptable(str):
    """A stored value that no key of the ring decrypts: the stored text itself, kept so that writing the row
    back leaves it as it was. Never a secret in clear."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Undecryptable()"


class KeyRing:
    """AES-256-GCM keys, newest first: the newest encrypts, each decrypts the values it encrypted (a value
    names its key by id, so reading tries no other). `plaintext_writes` keeps writing new values in plaintext
    (still reading encrypted ones), for a rolling deploy beside a release that cannot decrypt."""

    def __init__(self, keys: Sequence[str], *, plaintext_writes: bool = False) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        ciphers = [_cipher(key) for key in keys]
        self._raw = [base64.urlsafe_b64decode(key.encode("ascii")) for key in keys]
        self._newest = ciphers[0]
        self._by_id = dict(reversed(ciphers))  # a key given twice: its first place counts
        self.plaintext_writes = plaintext_writes

    @property
    def newest_key_id(self) -> str:
        """The id of the key that encrypts (a digest's first digits: it says which key, never the key)."""
        return self._newest[0]

    def derived_keys(self, purpose: str) -> list[bytes]:
        """A key for `purpose` from each key of the ring, newest first (HMAC-SHA256 of the purpose): signing
        keys that rotate with the ring and reveal nothing of the keys that encrypt."""
        return [hmac.new(raw, purpose.encode(), hashlib.sha256).digest() for raw in self._raw]

    @staticmethod
    def generate_key() -> str:
        return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode()

    def seal(self, plaintext: str) -> str:
        key_id, cipher = self._newest
        nonce = os.urandom(NONCE_BYTES)
        sealed = base64.urlsafe_b64encode(nonce + cipher.encrypt(nonce, plaintext.encode(), None))
        return f"{SEALED_PREFIX}{key_id}:{sealed.decode()}"

    def open(self, stored: str) -> str:
        """The plaintext of `stored`; a plaintext row as it is. `CannotDecrypt` when no key decrypts it."""
        if not is_sealed(stored):
            return stored
        key_id, _, sealed = stored.removeprefix(SEALED_PREFIX).partition(":")
        cipher = self._by_id.get(key_id)
        if cipher is None:
            raise CannotDecrypt()
        try:
            raw = base64.urlsafe_b64decode(sealed)
            return cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], None).decode()
        except (InvalidTag, ValueError):
            raise CannotDecrypt() from None

    def is_newest(self, stored: str) -> bool:
        """Whether `stored` is encrypted under the newest key already."""
        return is_sealed(stored) and stored.removeprefix(SEALED_PREFIX).startswith(self._newest[0] + ":")


def _cipher(key: str) -> tuple[str, AESGCM]:
    """The key's id (the first 8 hex digits of its SHA-256: names it in each value, reveals nothing) and its
    cipher. `ValueError` unless it is 32 bytes in url-safe base64."""
    try:
        raw = base64.urlsafe_b64decode(key.encode("ascii"))
    except (UnicodeEncodeError, binascii.Error):
        raise ValueError("not url-safe base64") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"{len(raw)} bytes, not {KEY_BYTES}")
    return hashlib.sha256(raw).hexdigest()[:8], AESGCM(raw)


def is_sealed(stored: str) -> bool:
    return stored.startswith(SEALED_PREFIX)


def reveal(value: str) -> str:
    """`value` as a provider needs it; `CannotDecrypt` when it was read as `Undecryptable`."""
    if isinstance(value, Undecryptable):
        raise CannotDecrypt()
    return value


class SecretText(sa.TypeDecorator[str]):
    """A text column whose values are encrypted with the key ring of the engine that writes them, and read
    back in clear (plaintext rows too); an engine without a ring writes plaintext."""

    impl = sa.Text
    cache_ok = True

    def __init__(self, length: int | None = None) -> None:
        super().__init__()
        self.length = length  # part of the statement cache key, with the class
        self.impl = sa.String(length) if length else sa.Text()  # type: ignore[assignment]

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None or isinstance(value, Undecryptable):
            return None if value is None else str(value)  # as it was stored
        ring = key_ring_of(dialect)
        # A plaintext value that looks encrypted is encrypted all the same, or it would be read back as
        # Undecryptable.
        if ring is None or (ring.plaintext_writes and not is_sealed(value)):
            return value
        return ring.seal(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None or not is_sealed(value):
            return value
        ring = key_ring_of(dialect)
        try:
            return Undecryptable(value) if ring is None else ring.open(value)
        except CannotDecrypt:
            return Undecryptable(value)


def attach_key_ring(engine: Engine, ring: KeyRing | None) -> None:
    """Make `engine` encrypt and decrypt `SecretText` columns with `ring` (None: plaintext, and encrypted
    rows unreadable). Kept on the engine's own dialect, so two engines of one process can hold two rings."""
    setattr(engine.dialect, _RING_ATTRIBUTE, ring)


def key_ring_of(dialect: Dialect) -> KeyRing | None:
    ring = getattr(dialect, _RING_ATTRIBUTE, None)
    return ring if isinstance(ring, KeyRing) else None


def key_ring_from_settings(settings: Settings) -> KeyRing | None:
    """The ring of `MDMQ_SECRET_KEY` or `MDMQ_SECRET_KEY_FILE`; in development without either, the key beside
    the SQLite file (generated, mode 0600, when it is not there yet). None in development on PostgreSQL or an
    in-memory SQLite without a key: values are written in plaintext. `SettingsError` for a malformed key."""
    keys, variable = _configured_keys(settings)
    configured = settings.secret_key is not None or bool(settings.secret_key_file)
    if not keys and configured:
        raise SettingsError(variable, f"holds no key; {BAD_KEY}")
    if not keys and settings.environment is Environment.production:
        raise SettingsError("MDMQ_SECRET_KEY", MISSING_KEY)
    if not keys:
        key_file = generated_key_path(settings.database_url)
        if key_file is None:
            return None
        try:
            keys, variable = [_generated_key(key_file)], "MDMQ_SECRET_KEY_FILE"
        except OSError as e:
            problem = f"cannot keep the generated secret key in {key_file.parent}: {e.strerror}"
            raise SettingsError("MDMQ_DATABASE_URL", problem) from None
    try:
        return KeyRing(keys, plaintext_writes=settings.secret_plaintext_writes)
    except ValueError:
        raise SettingsError(variable, BAD_KEY) from None


MISSING_KEY = (
    "production needs a key to encrypt push credentials and push magic at rest: set MDMQ_SECRET_KEY "
    "(or MDMQ_SECRET_KEY_FILE); `mdmq secrets generate-key` makes one"
)
BAD_KEY = (
    "each key is 32 url-safe base64-encoded bytes, newest first, separated by commas (or one a line in the "
    "file); `mdmq secrets generate-key` makes one"
)


def _configured_keys(settings: Settings) -> tuple[list[str], str]:
    if settings.secret_key is not None:
        raw = settings.secret_key.get_secret_value().replace(",", "\n")
        return _key_lines(raw), "MDMQ_SECRET_KEY"
    if settings.secret_key_file:
        try:
            raw = Path(settings.secret_key_file).read_text()
        except OSError as e:
            raise SettingsError("MDMQ_SECRET_KEY_FILE", f"cannot read the key file: {e.strerror}") from None
        return _key_lines(raw), "MDMQ_SECRET_KEY_FILE"
    return [], "MDMQ_SECRET_KEY"


def _key_lines(raw: str) -> list[str]:
    return [line.strip() for line in raw.splitlines() if line.strip() and not line.strip().startswith("#")]


def generated_key_path(database_url: str) -> Path | None:
    """Where the embedded mode keeps its generated key: beside the SQLite file; None for other databases."""
    database = sqlite_path(database_url)
    return None if database is None else database.parent / GENERATED_KEY_NAME


def sqlite_path(database_url: str) -> Path | None:
    """The file of a `sqlite:///PATH` URL; None for an in-memory SQLite or another database."""
    if not database_url.startswith("sqlite:///"):
        return None
    path = database_url.removeprefix("sqlite:///").partition("?")[0]
    return None if path in ("", ":memory:") else Path(path)


def _generated_key(path: Path) -> str:
    """The key in `path`, written first (mode 0600, its directory 0700 if new) when there is none: the
    first process to get there writes it, the others read it. Written whole to a file of its own, then
    linked into place, so that no process ever reads a key file half written."""
    make_private_directory(path.parent)
    if not path.exists():
        key = KeyRing.generate_key()
        descriptor, draft = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(descriptor, "w") as out:
                out.write(key + "\n")
            os.link(draft, path)  # fails if another process linked its key first: then that key is read
            log.info("generated a secret key in %s: back it up, the database's secrets need it", path)
        except FileExistsError:
            pass
        finally:
            os.unlink(draft)
    keys = _key_lines(path.read_text())
    if not keys:
        problem = f"{path}, the key generated for this database, holds none: restore it from backup"
        raise SettingsError("MDMQ_SECRET_KEY", problem)
    return keys[0]


def make_private_directory(directory: Path) -> None:
    """Create `directory` (and its missing parents) mode 0700; an existing one is left as it is."""
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
