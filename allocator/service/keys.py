"""Ed25519 key files at the edge: `allocator keys new`, the allocator's signing key, trusted public keys.

A private key is written once, PKCS8 PEM with mode 0600, and never printed or logged; errors name the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.signing import (
    SigningKeyError,
    key_id_of,
    load_private_key_pem,
    load_public_key,
    private_key_pem,
    public_key_pem,
    raw_public_key,
)

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"


def new_key_pair(out_dir: Path | str) -> tuple[str, Path, Path]:
    """A fresh key pair in `out_dir` as `<key_id>.key` (0600) and `<key_id>.pub`; returns (key_id, key, pub)."""
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SigningKeyError(f"{folder}: cannot create the folder ({exc.strerror})") from exc
    key = Ed25519PrivateKey.generate()
    key_id = key_id_of(key.public_key())
    private_path = folder / f"{key_id}{PRIVATE_SUFFIX}"
    public_path = folder / f"{key_id}{PUBLIC_SUFFIX}"
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise SigningKeyError(f"{private_path}: cannot create ({exc.strerror})") from exc
    with os.fdopen(fd, "wb") as out:
        out.write(private_key_pem(key))
    os.chmod(private_path, 0o600)
    public_path.write_bytes(public_key_pem(key.public_key()))
    return key_id, private_path, public_path


def signing_key_file(path: Path | str) -> Path:
    """The private key file `path` names: itself, or the only `*.key` file of a folder (`keys new --out DIR` made
    it); SigningKeyError names the folder when it holds none or several."""
    file = Path(path)
    if file.is_dir():
        found = sorted(file.glob(f"*{PRIVATE_SUFFIX}"))
        if len(found) != 1:
            names = ", ".join(f.name for f in found) or f"no *{PRIVATE_SUFFIX} file"
            raise SigningKeyError(f"{file}: a folder must hold exactly one *{PRIVATE_SUFFIX} file ({names}): name one")
        file = found[0]
    return file


def load_signing_key(path: Path | str) -> Ed25519PrivateKey:
    """The private key in a PEM file, or in the only `*.key` file of a folder (`signing_key_file`); the error names
    the file, never its content."""
    file = signing_key_file(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"{file}: cannot read the key file ({exc.strerror})") from exc
    return load_private_key_pem(data, str(file))


def loose_key_file(path: Path | str) -> str | None:
    """A warning when the private key file `load_signing_key` reads (the file, or the one `*.key` of a folder) may be
    read by other users (group or others have any permission on it; `keys new` writes it 0600), else None. POSIX only:
    elsewhere the mode says nothing, and nothing is said."""
    import os
    import stat

    try:
        file = signing_key_file(path)
    except SigningKeyError:
        return None  # load_signing_key says what is wrong
    if os.name != "posix":
        return None
    try:
        mode = stat.S_IMODE(file.stat().st_mode)
    except OSError:
        return None
    if mode & 0o077 == 0:
        return None
    return (
        f"the private key {file} may be read by other users of this machine (mode {mode:04o}): anyone who can read "
        f"it can sign as its owner; chmod 600 {file}"
    )


def load_trusted_keys(path: Path | str) -> dict[str, Ed25519PublicKey]:
    """Public keys by key id: one file (PEM or 64 hex characters), or every `*.pub` file of a folder."""
    if not str(path):
        raise SigningKeyError("'': name a public key file, or a folder of *.pub files")  # Path('') is the cwd
    place = Path(path)
    if place.is_dir():
        files = sorted(place.glob(f"*{PUBLIC_SUFFIX}"))
        if not files:
            holds_private = any(place.glob(f"*{PRIVATE_SUFFIX}"))
            private = " (it holds private keys: trust their .pub files)" if holds_private else ""
            raise SigningKeyError(f"{place}: no *{PUBLIC_SUFFIX} files in the folder{private}")
    elif place.is_file():
        files = [place]
    elif place.exists():
        raise SigningKeyError(f"{place}: not a file or folder of trusted keys")
    else:
        raise SigningKeyError(f"{place}: no such file or folder of trusted keys")
    out: dict[str, Ed25519PublicKey] = {}
    for file in files:
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise SigningKeyError(f"{file}: cannot read ({exc.strerror})") from exc
        if b"PRIVATE KEY" in data[:64]:
            raise SigningKeyError(f"{file}: a private key; trust its public key (the {PUBLIC_SUFFIX} file beside it)")
        key = load_public_key(data, str(file))
        out[key_id_of(key)] = key
    return out


def public_key_hex(key: Ed25519PublicKey) -> str:
    """The raw public key as 64 hex characters: what the operator keyring (`operator_keys`) holds."""
    return raw_public_key(key).hex()
