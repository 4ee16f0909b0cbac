"""The broker profile, and what a role says within seconds when LEDGER_BOOTSTRAP is wrong."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ledger.kafka.broker import free_port, port_is_free
from ledger.kafka.profiles import KAFKA, TANSU, profile_for
from tests.support.spawn import LEDGER

SENTENCE_WITHIN_S = 10


def test_the_profile_follows_what_the_broker_serves() -> None:
    assert profile_for({0, 1, 3, 18, 23}) is KAFKA
    assert profile_for({0, 1, 3, 18}) is TANSU


@contextmanager
def listening(reply: bytes | None) -> Iterator[int]:
    """A TCP server that answers every connection with ``reply`` (None: says nothing, keeps it open)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            if reply is not None:
                conn.sendall(reply)
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in held:
            conn.close()


def run_worker(port: int, **variables: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    run = subprocess.run(LEDGER + ["worker", "examples/demo.py"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "LEDGER_BOOTSTRAP": f"127.0.0.1:{port}", **variables})
    return run, time.monotonic() - started


@pytest.mark.parametrize("reply,said", [
    (b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n", "answered, but not as a Kafka broker (it sent "
                                                             "'HTTP/1.1 400 Bad Request')"),
    (None, "did not answer a Kafka request within 3 s"),
], ids=["http", "silent"])
def test_a_port_that_is_not_kafka_is_named_within_seconds(reply: bytes | None, said: str) -> None:
    with listening(reply) as port:
        run, took = run_worker(port)
    assert run.returncode == 2 and said in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1 and took < SENTENCE_WITHIN_S, (run.stderr, took)


def test_no_broker_at_all_is_one_sentence() -> None:
    run, took = run_worker(free_port())
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and took < SENTENCE_WITHIN_S, (run.stderr, took)
    assert "cannot reach Kafka at 127.0.0.1:" in run.stderr and "nothing accepts connections there" in run.stderr


class Certificates:
    """A CA, and certificates it signs, as PEM files in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.ca = self._write("ca", self.key, x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                              .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                              .not_valid_before(now - datetime.timedelta(days=1))
                              .not_valid_after(now + datetime.timedelta(days=30))
                              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                              .sign(self.key, hashes.SHA256()))[0]

    def issue(self, name: str, *, host: str = "127.0.0.1", expired: bool = False) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        start = now - datetime.timedelta(days=30 if expired else 1)
        san = x509.IPAddress(ipaddress.ip_address(host)) if host[0].isdigit() else x509.DNSName(host)
        certificate = (x509.CertificateBuilder()
                       .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                       .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(start).not_valid_after(now - datetime.timedelta(days=1) if expired else
                                                                now + datetime.timedelta(days=30))
                       .add_extension(x509.SubjectAlternativeName([san]), critical=False)
                       .sign(self.key, hashes.SHA256()))
        return self._write(name, key, certificate)

    def _write(self, name: str, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> tuple[Path, Path]:
        certificate_file, key_file = self.folder / f"{name}.crt", self.folder / f"{name}.key"
        certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return certificate_file, key_file


@contextmanager
def tls_listening(certificate: tuple[Path, Path], client_ca: Path | None = None) -> Iterator[int]:
    """A TLS listener that is not Kafka (``openssl s_server``, in a process of its own), asking clients
    for a certificate signed by ``client_ca`` if given."""
    port = free_port()
    asks = ["-Verify", "1", "-CAfile", str(client_ca)] if client_ca else []
    server = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(certificate[0]),
                               "-key", str(certificate[1]), "-www", "-quiet", *asks],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while port_is_free("127.0.0.1", port) and time.monotonic() < deadline:  # until it listens
            time.sleep(0.05)
        yield port
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize(("case", "said"), [
    ("expired", "has expired (certificate has expired): the broker needs a new one"),
    ("another host", "does not name 127.0.0.1 (IP address mismatch"),
    ("no client certificate", "it is not a TLS listener, or it wants a client certificate"),
    # mutual TLS done, then a listener that does not answer Kafka
    ("client certificate", "accepted a connection but did not answer a Kafka request within 3 s"),
])
def test_each_tls_mistake_is_one_sentence(tmp_path: Path, case: str, said: str) -> None:
    certificates = Certificates(tmp_path)
    served = certificates.issue("broker", expired=case == "expired",
                                host="broker.example" if case == "another host" else "127.0.0.1")
    variables = {"LEDGER_KAFKA_SECURITY_PROTOCOL": "SSL", "LEDGER_KAFKA_SSL_CA_LOCATION": str(certificates.ca)}
    if case == "client certificate":
        certificate, key = certificates.issue("client")
        variables |= {"LEDGER_KAFKA_SSL_CERTIFICATE_LOCATION": str(certificate),
                      "LEDGER_KAFKA_SSL_KEY_LOCATION": str(key)}
    asks = certificates.ca if "client" in case else None
    with tls_listening(served, client_ca=asks) as port:
        run, took = run_worker(port, **variables)
    assert run.returncode == 2 and said in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1 and took < SENTENCE_WITHIN_S, (run.stderr, took)
