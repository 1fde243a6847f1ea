"""HTTPS for the station: the operator's certificate, or a self-signed one made in the data folder.

A self-signed certificate encrypts the connection; the browser cannot know it is really this
station, so the first visit shows a warning: compare the fingerprint the station prints at start.
"""

import datetime as dt
import ipaddress
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgelearn.files import atomic_write_bytes, write_private


def self_signed(folder: Path, hosts: list[str], days: int = 825) -> tuple[Path, Path]:
    """``folder/tls.pem`` and ``folder/tls.key`` for ``hosts`` (made once, reused while they exist)."""
    cert_path, key_path = folder / "tls.pem", folder / "tls.key"
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path
    names = list(dict.fromkeys(["localhost", "127.0.0.1", socket.gethostname(), *hosts]))
    san = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h)
           for h in names if h not in ("0.0.0.0", "::")]
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edgelearn station {names[2]}")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def fingerprint(cert_path: Path) -> str:
    """SHA-256 fingerprint as browsers show it (AB:CD:...)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
