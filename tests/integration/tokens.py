#!/usr/bin/python3
"""Mint Supabase-style JWTs for keel's integration tests and for `./dev run`.

As a module:

    from tokens import make_token, user_claims, raw_token
    tok = make_token(user_claims(uid, "ana@example.com"), secret=SECRET)
    tok = make_token(user_claims(uid, "a@b.c"), alg="ES256", key_pem=pem, kid="ec-1")
    bad = raw_token('{"alg":"HS256","alg":"none"}', {"sub": uid}, b"")

As a command (prints one token on stdout):

    /usr/bin/python3 tests/integration/tokens.py --secret S --sub UUID \
        --email E [--ttl 86400] [--name NAME]

HS256/HS512 use the standard library; RS256/ES256 use Debian's
python3-cryptography, imported only when needed.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import time

_HMAC_ALGS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def b64url(data):
    """Unpadded base64url of bytes (or of a str, encoded as UTF-8)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(part):
    """A dict is serialised compactly; str/bytes are used verbatim, which is
    how tests build duplicate keys or non-object JSON."""
    if isinstance(part, (dict, list)):
        part = json.dumps(part, separators=(",", ":"))
    return b64url(part)


def user_claims(sub, email, **overrides):
    """Claims of a signed-in Supabase user, valid for an hour from now.

    Any keyword replaces (or adds) a claim; a value of None removes it."""
    now = int(time.time())
    claims = {
        "sub": sub,
        "email": email,
        "aud": "authenticated",
        "role": "authenticated",
        "iat": now,
        "exp": now + 3600,
        "user_metadata": {},
        "app_metadata": {"provider": "email", "providers": ["email"]},
    }
    for key, value in overrides.items():
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    return claims


def _sign(alg, signing_input, secret, key_pem):
    if alg in _HMAC_ALGS:
        if secret is None:
            raise ValueError(alg + " needs secret")
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        return hmac.new(secret, signing_input, _HMAC_ALGS[alg]).digest()
    if alg == "none":
        return b""
    if alg not in ("RS256", "ES256"):
        raise ValueError("unsupported alg " + alg)
    if key_pem is None:
        raise ValueError(alg + " needs key_pem (a private key in PEM)")

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    if isinstance(key_pem, str):
        key_pem = key_pem.encode("ascii")
    key = serialization.load_pem_private_key(key_pem, password=None)
    if alg == "RS256":
        return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    # JWS wants ECDSA signatures as the raw 32-byte r and s, not DER.
    der = key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def make_token(claims, secret=None, alg="HS256", key_pem=None, kid=None, header_extra=None):
    """A signed compact JWS.  header_extra entries are merged into the header
    (and may override alg/typ, e.g. to lie about the algorithm)."""
    header = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    if header_extra:
        header.update(header_extra)
    signing_input = (_segment(header) + "." + _segment(claims)).encode("ascii")
    signature = _sign(alg, signing_input, secret, key_pem)
    return signing_input.decode("ascii") + "." + b64url(signature)


def raw_token(header_dict, payload_dict, signature_bytes):
    """A token assembled from parts without signing, for malformed variants.
    Header and payload may be dicts or raw JSON text; the signature is bytes
    (encoded here) or a str used verbatim as the third segment."""
    if isinstance(signature_bytes, str):
        sig = signature_bytes
    else:
        sig = b64url(signature_bytes)
    return _segment(header_dict) + "." + _segment(payload_dict) + "." + sig


def generate_keys():
    """Fresh (private_pem, public_pem) pairs as {'RS256': ..., 'ES256': ...}."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    def pems(key):
        priv = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        pub = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")
        return priv, pub

    return {
        "RS256": pems(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "ES256": pems(ec.generate_private_key(ec.SECP256R1())),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description="Print a Supabase-style user token.")
    ap.add_argument("--secret", default=os.environ.get("KEEL_JWT_SECRET"),
                    help="HS256 secret (default: $KEEL_JWT_SECRET)")
    ap.add_argument("--sub", required=True, help="the user's UUID")
    ap.add_argument("--email", required=True)
    ap.add_argument("--ttl", type=int, default=86400, help="seconds until exp")
    ap.add_argument("--name", help="user_metadata.full_name")
    ap.add_argument("--alg", default="HS256", choices=["HS256", "RS256", "ES256"])
    ap.add_argument("--key-file", help="private key PEM for RS256/ES256")
    ap.add_argument("--kid")
    args = ap.parse_args(argv)

    now = int(time.time())
    claims = user_claims(args.sub, args.email, iat=now, exp=now + args.ttl)
    if args.name:
        claims["user_metadata"] = {"full_name": args.name}
    key_pem = None
    if args.alg == "HS256":
        if not args.secret:
            ap.error("--secret (or KEEL_JWT_SECRET) is required for HS256")
    else:
        if not args.key_file:
            ap.error("--key-file is required for " + args.alg)
        with open(args.key_file, encoding="ascii") as f:
            key_pem = f.read()
    print(make_token(claims, secret=args.secret, alg=args.alg, key_pem=key_pem, kid=args.kid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
