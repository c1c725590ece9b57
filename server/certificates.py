"""Create the TLS certificates and SuperNode keys for a Flower deployment.

Run it once on the coordinator:

    python -m fedgraft.server.certificates certificates --node-keys 3 --hostname coordinator.example

It writes into OUT_DIR:

- `ca.crt`, `ca.key`: a certificate authority. Every SuperNode and every `flwr` CLI
  gets `ca.crt` to verify the SuperLink. `ca.key` stays on the coordinator, offline if
  possible.
- `server.crt`, `server.key`: the SuperLink's certificate, signed by the CA, valid for
  127.0.0.1, localhost and each `--hostname`.
- `supernode-<i>.key`, `supernode-<i>.pub`: one authentication key pair per SuperNode.
  Flower 1.42 reads both in OpenSSH format on a NIST curve (`flower-supernode
  --auth-supernode-private-key` calls `load_ssh_private_key`, `flwr supernode register`
  calls `load_ssh_public_key`), so they are P-384 keys in that format, as
  `ssh-keygen -t ecdsa -b 384` writes them.

Private keys are written with mode 600. Every file is written to a temporary file in the
same folder and then renamed, so a crash never leaves a half-written key. An existing
CA is kept unless `--force` is given, because replacing it invalidates every certificate
it signed.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateError",
    "CertificateFiles",
    "create_certificates",
    "create_node_keys",
    "main",
]

# The SuperLink certificate always covers the loopback names.
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
DEFAULT_VALID_DAYS = 365
_CURVE = ec.SECP384R1
# A DNS label: letters, digits and inner hyphens, at most 63 characters.
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class CertificateError(RuntimeError):
    """The certificates could not be created; the message names the path and the fix."""


@dataclass(frozen=True)
class CertificateFiles:
    """Paths of the files that `create_certificates` writes."""

    ca_certificate: Path
    ca_key: Path
    server_certificate: Path
    server_key: Path
    node_private_keys: tuple[Path, ...]
    node_public_keys: tuple[Path, ...]

    @classmethod
    def in_folder(cls, folder: Path, node_keys: int) -> CertificateFiles:
        folder = Path(folder)
        return cls(
            ca_certificate=folder / "ca.crt",
            ca_key=folder / "ca.key",
            server_certificate=folder / "server.crt",
            server_key=folder / "server.key",
            node_private_keys=tuple(folder / f"supernode-{i}.key" for i in range(1, node_keys + 1)),
            node_public_keys=tuple(folder / f"supernode-{i}.pub" for i in range(1, node_keys + 1)),
        )


def create_certificates(
    out_dir: Path | str,
    node_keys: int = 0,
    hostnames: Sequence[str] = (),
    force: bool = False,
    valid_days: int = DEFAULT_VALID_DAYS,
) -> CertificateFiles:
    """Create a CA, a SuperLink certificate signed by it and `node_keys` SuperNode key pairs.

    Raises CertificateError when OUT_DIR already contains a CA and `force` is false, or when
    an argument is invalid.
    """
    if node_keys < 0:
        raise CertificateError(f"--node-keys is {node_keys}, but it must be 0 or more.")
    if valid_days < 1:
        raise CertificateError(f"--days is {valid_days}, but it must be 1 or more.")
    alt_names = _subject_alt_names([*LOOPBACK_NAMES, *hostnames])

    out_dir = Path(out_dir)
    files = CertificateFiles.in_folder(out_dir, node_keys)
    existing = [path for path in (files.ca_certificate, files.ca_key) if path.exists()]
    if existing and not force:
        raise CertificateError(
            f"A CA already exists at {existing[0]}. Replacing it invalidates every certificate it "
            "signed, so it is kept. Pass --force to replace it, or choose another OUT_DIR."
        )
    out_dir.mkdir(parents=True, exist_ok=True)

    # The CA: a self-signed certificate that may sign end-entity certificates only.
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(_CURVE())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedgraft deployment CA")])
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    # The SuperLink's certificate, valid for every name a client may dial.
    server_key = ec.generate_private_key(_CURVE())
    server_certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0] if hostnames else "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )

    # Each file is replaced atomically, but the set is not: after a crash here, rerun with --force.
    _write_private_key(files.ca_key, _pem_private_key(ca_key))
    _write_atomic(files.ca_certificate, ca_certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_private_key(files.server_key, _pem_private_key(server_key))
    _write_atomic(files.server_certificate, server_certificate.public_bytes(serialization.Encoding.PEM), 0o644)

    create_node_keys(files.node_private_keys, files.node_public_keys)
    return files


def create_node_keys(private_paths: Sequence[Path], public_paths: Sequence[Path]) -> None:
    """Write one P-384 key pair in OpenSSH format per pair of paths."""
    for private_path, public_path in zip(private_paths, public_paths, strict=True):
        key = ec.generate_private_key(_CURVE())
        private_bytes = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        public_bytes = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        _write_private_key(Path(private_path), private_bytes)
        _write_atomic(Path(public_path), public_bytes + f" {Path(private_path).stem}\n".encode(), 0o644)


def _subject_alt_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """Return an IP address entry for each IP and a DNS entry for each host name, without repeats."""
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        labels = name.rstrip(".").split(".")
        if not name or len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
            raise CertificateError(
                f"--hostname {name!r} is neither an IP address nor a valid DNS name. Pass the name "
                "or address that SuperNodes and the flwr CLI use to reach the SuperLink, for "
                "example coordinator.example.org or 10.0.0.5."
            )
        entries.append(x509.DNSName(name))
    return entries


def _pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private_key(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o600)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to a temporary file beside `path`, set `mode`, then rename it over `path`."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file with mode 600, so a private key is never readable by others.
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fedgraft.server.certificates",
        description=(
            "Create a CA, a SuperLink TLS certificate signed by it, and SuperNode "
            "authentication key pairs in OpenSSH format."
        ),
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="Folder that receives the files.")
    parser.add_argument(
        "--node-keys", type=int, default=0, metavar="N",
        help="Number of SuperNode key pairs to create, named supernode-1.key/.pub and on (default: 0).",
    )
    parser.add_argument(
        "--hostname", action="append", default=[], metavar="NAME",
        help=(
            "Extra DNS name or IP address of the SuperLink for its certificate; repeat for several. "
            "127.0.0.1 and localhost are always included."
        ),
    )
    parser.add_argument(
        "--days", type=int, default=DEFAULT_VALID_DAYS,
        help=f"Validity of the CA and the SuperLink certificate in days (default: {DEFAULT_VALID_DAYS}).",
    )
    parser.add_argument(
        "--force", action="store_true",
        help="Replace an existing CA in OUT_DIR; every certificate it signed must then be redistributed.",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return 0 on success and 2 on invalid input."""
    args = _parse_args(argv)
    try:
        files = create_certificates(
            args.out_dir, node_keys=args.node_keys, hostnames=args.hostname, force=args.force, valid_days=args.days
        )
    except CertificateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot write into {args.out_dir}: {err}. Choose a writable OUT_DIR.", file=sys.stderr)
        return 2

    print(f"CA certificate:        {files.ca_certificate} (copy to every SuperNode and flwr CLI)")
    print(f"CA key:                {files.ca_key} (keep on the coordinator)")
    print(f"SuperLink certificate: {files.server_certificate}")
    print(f"SuperLink key:         {files.server_key}")
    for private_key, public_key in zip(files.node_private_keys, files.node_public_keys, strict=True):
        print(f"SuperNode key pair:    {private_key} (copy to the node), {public_key} (register it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
