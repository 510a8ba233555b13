"""TLS for a fleet: a certificate authority of the fleet's own and the SuperLink's certificate, made here.

    certs = FleetCerts.ensure("runs/fleet/.fleet/certs", host="0.0.0.0", address="192.168.1.10:9092")
    certs.superlink_args()           # --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile for flower-superlink
    certs.push_ca(device, remote)    # the CA on a device: flower-supernode --root-certificates

The server certificate names 127.0.0.1, localhost, the host the SuperLink listens on and the address devices
reach it by, so SuperNodes verify it against the fleet's CA. Keys are written readable by the owner only.
Made with ``cryptography`` (a Flower dependency); nothing leaves this machine but the CA certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path


class FleetCerts:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.ca, self.cert, self.key = self.root / "ca.pem", self.root / "server.pem", self.root / "server.key"

    @classmethod
    def ensure(cls, root, host: str = "127.0.0.1", address: str | None = None) -> FleetCerts:
        certs = cls(root)
        names = {"127.0.0.1", "localhost", host, (address or "").rsplit(":", 1)[0]} - {"", "0.0.0.0"}
        stamp = certs.root / "names.txt"
        if not (certs.cert.exists() and stamp.exists() and set(stamp.read_text().split()) >= names):
            certs._make(sorted(names))
            stamp.write_text("\n".join(sorted(names)))
        return certs

    def _make(self, names: list[str]) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.root.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgetl fleet CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=365))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        sans = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=365))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False).sign(ca_key, hashes.SHA256()))
        pem = serialization.Encoding.PEM
        self._write(self.ca, ca.public_bytes(pem))
        self._write(self.cert, cert.public_bytes(pem))
        self._write(self.key, key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
                    private=True)

    @staticmethod
    def _write(path: Path, data: bytes, private: bool = False) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def superlink_args(self) -> list[str]:
        return ["--ssl-ca-certfile", str(self.ca), "--ssl-certfile", str(self.cert), "--ssl-keyfile", str(self.key)]

    def push_ca(self, device, remote_dir: str) -> None:
        device.makedirs(remote_dir)
        device.push_file(self.ca, f"{remote_dir}/ca.pem.part")
        device.rename(f"{remote_dir}/ca.pem.part", f"{remote_dir}/ca.pem")


def make_node_key(root, name: str) -> tuple[Path, Path]:
    """An EC P-256 key pair for one SuperNode (OpenSSH format, as flwr reads it): ``(private, public)`` paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    private, public = root / f"{name}.key", root / f"{name}.pub"
    if not private.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        FleetCerts._write(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                     serialization.NoEncryption()), private=True)
        FleetCerts._write(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                serialization.PublicFormat.OpenSSH))
    return private, public


def push_private_key(device, private: Path, remote_dir: str) -> str:
    remote = f"{remote_dir}/node.key"
    device.makedirs(remote_dir)
    device.push_file(private, remote + ".part")
    device.check(f"chmod 600 '{remote}.part' && mv -f '{remote}.part' '{remote}'", what="installing the SuperNode key")
    return remote
