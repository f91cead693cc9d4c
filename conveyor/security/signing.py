"""Asymmetric keys that sign and verify tokens: Ed25519 or RSA, each pinned to its algorithm,
named by its RFC 7638 thumbprint, and published as a JWK Set."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from conveyor.errors import ConfigurationError

Algorithm = Literal["EdDSA", "RS256"]
ALGORITHMS: tuple[Algorithm, ...] = ("EdDSA", "RS256")
PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | rsa.RSAPublicKey
#: Smaller RSA keys are refused (RFC 7518 section 3.3 asks for 2048 bits or more).
MIN_RSA_BITS = 2048
RSA_BITS = 3072
#: Separates the derived token key from every other use of the secret key.
DERIVATION_INFO = b"conveyor jwt ed25519 v1"
KEYS_HINT = (
    "make one with `conveyor keys generate > jwt.pem` and list it in "
    "CONVEYOR_JWT_PRIVATE_KEYS, or set CONVEYOR_SECRET_KEY"
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(number: int) -> str:
    return _b64(number.to_bytes((number.bit_length() + 7) // 8 or 1, "big"))


@dataclass(frozen=True)
class SigningKey:
    """A public key, with its private half when it may sign. Its algorithm follows from its
    type (Ed25519: EdDSA, RSA: RS256) and is the only one it verifies."""

    public: PublicKey
    private: PrivateKey | None = None

    @classmethod
    def of(cls, key: object) -> SigningKey:
        """The key of a private or public key object; ConfigurationError for another type
        (DSA, EC, X25519...) or an RSA key under MIN_RSA_BITS."""
        if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            raise ConfigurationError(
                f"an RSA key of {key.key_size} bits is too small: use {MIN_RSA_BITS} or more"
            )
        if isinstance(key, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
            return cls(key.public_key(), key)
        if isinstance(key, ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
            return cls(key)
        raise ConfigurationError(
            f"a {type(key).__name__} cannot sign tokens: use an Ed25519 or RSA key"
        )

    @classmethod
    def generate(cls, alg: Algorithm = "EdDSA") -> SigningKey:
        """A new random private key for `alg`."""
        if alg == "RS256":
            return cls.of(rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS))
        return cls.of(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def derived(cls, secret: str) -> SigningKey:
        """The Ed25519 key derived from `secret` (HKDF-SHA256): every process that shares
        the secret derives the same key."""
        seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=DERIVATION_INFO)
        return cls.of(ed25519.Ed25519PrivateKey.from_private_bytes(seed.derive(secret.encode())))

    @classmethod
    def load(cls, path: Path, *, private: bool) -> SigningKey:
        """The PEM key in `path` (a private one if `private`); ConfigurationError naming the
        file when it cannot be read or holds no usable key."""
        kind = "private" if private else "public"
        try:
            pem = path.read_bytes()
            loaded = (
                serialization.load_pem_private_key(pem, password=None)
                if private
                else serialization.load_pem_public_key(pem)
            )
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigurationError(f"{path} is not a readable PEM {kind} key: {exc}") from None
        try:
            return cls.of(loaded)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{path}: {exc.detail}") from None

    @property
    def alg(self) -> Algorithm:
        return "EdDSA" if isinstance(self.public, ed25519.Ed25519PublicKey) else "RS256"

    def _members(self) -> dict[str, str]:
        """The JWK's required members, the input of its thumbprint (RFC 7638 section 3.2)."""
        if isinstance(self.public, ed25519.Ed25519PublicKey):
            raw = self.public.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            return {"crv": "Ed25519", "kty": "OKP", "x": _b64(raw)}
        numbers = self.public.public_numbers()
        return {"e": _uint(numbers.e), "kty": "RSA", "n": _uint(numbers.n)}

    @property
    def kid(self) -> str:
        """The RFC 7638 JWK thumbprint (SHA-256, base64url): computed, so never mistyped."""
        canonical = json.dumps(self._members(), separators=(",", ":"), sort_keys=True)
        return _b64(hashlib.sha256(canonical.encode()).digest())

    def jwk(self) -> dict[str, str]:
        """The public JWK, as published in the JWK Set."""
        return {**self._members(), "kid": self.kid, "alg": self.alg, "use": "sig"}

    def sign(self, claims: dict[str, Any], typ: str) -> str:
        """A JWT of `claims` signed by this key with its algorithm, its header naming the key
        (`kid`) and the token's type (`typ`)."""
        if self.private is None:
            raise ConfigurationError(f"key {self.kid} has no private half: it cannot sign")
        return jwt.encode(
            claims, self.private, algorithm=self.alg, headers={"kid": self.kid, "typ": typ}
        )

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (what `conveyor keys generate` prints)."""
        if self.private is None:
            raise ConfigurationError(f"key {self.kid} has no private half: it cannot be printed")
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True)
class KeySet:
    """The keys of a deployment: the first signs, every one verifies (a retired key stays as
    public-only until the tokens it signed have expired)."""

    keys: tuple[SigningKey, ...]

    def __post_init__(self) -> None:
        if not self.keys or self.keys[0].private is None:
            raise ConfigurationError(f"no private key signs the tokens; {KEYS_HINT}")

    @classmethod
    def of(cls, keys: Iterable[SigningKey]) -> KeySet:
        """The set of `keys` in order, each kid once (its first, so a key listed as private
        and also as public keeps its private half)."""
        unique: dict[str, SigningKey] = {}
        for key in keys:
            unique.setdefault(key.kid, key)
        return cls(tuple(unique.values()))

    @classmethod
    def load(cls, private: Sequence[Path], public: Sequence[Path], secret: str | None) -> KeySet:
        """The keys of these PEM files; without private keys, the key derived from `secret`
        signs. ConfigurationError without either."""
        signers = [SigningKey.load(path, private=True) for path in private]
        if not signers and secret is not None:
            signers = [SigningKey.derived(secret)]
        return cls.of([*signers, *(SigningKey.load(path, private=False) for path in public)])

    @property
    def signer(self) -> SigningKey:
        return self.keys[0]

    def get(self, kid: str) -> SigningKey | None:
        return next((key for key in self.keys if key.kid == kid), None)

    def jwks(self) -> dict[str, Any]:
        """The RFC 7517 JWK Set of every verifying key (public halves only)."""
        return {"keys": [key.jwk() for key in self.keys]}
