"""A throwaway PKI for the TLS tests (a CA, a server and a client certificate, and an unrelated CA),
and an etcd server that listens on https with it."""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import time
import urllib.request
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from evc.etcdserver import EtcdServer


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: str, key, cert: x509.Certificate) -> tuple[str, str]:
    with open(path + ".pem", "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(path + "-key.pem", "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return path + ".pem", path + "-key.pem"


def _cert(subject: str, key, issuer: str, issuer_key, ca: bool, sans=(), usage=None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, encipher_only=False,
                                          decipher_only=False), critical=True)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if usage:
        b = b.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str


def make_pki(directory: str) -> Pki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("EVC test CA", ca_key, "EVC test CA", ca_key, ca=True)
    ca_path, _ = _write(os.path.join(directory, "ca"), ca_key, ca)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert("etcd", server_key, "EVC test CA", ca_key, ca=False,
                   sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                   # etcd's gateway dials etcd's own gRPC port with the server certificate: with
                   # --client-cert-auth that certificate must also be good for client authentication.
                   usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    server_cert, server_key_path = _write(os.path.join(directory, "server"), server_key, server)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert("evc", client_key, "EVC test CA", ca_key, ca=False, usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    client_cert, client_key_path = _write(os.path.join(directory, "client"), client_key, client)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca, _ = _write(os.path.join(directory, "other-ca"), other_key,
                         _cert("Some other CA", other_key, "Some other CA", other_key, ca=True))
    return Pki(ca_path, server_cert, server_key_path, client_cert, client_key_path, other_ca)


class TlsEtcdServer(EtcdServer):
    """EtcdServer listening on https with the test PKI; with `client_auth`, clients need a certificate."""

    def __init__(self, pki: Pki, client_auth: bool = False):
        args = ["--cert-file", pki.server_cert, "--key-file", pki.server_key]
        if client_auth:
            args += ["--client-cert-auth", "--trusted-ca-file", pki.ca]
        super().__init__(extra_args=tuple(args))
        self.pki = pki

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    def wait_healthy(self, timeout: float = 20.0) -> None:
        ctx = ssl.create_default_context(cafile=self.pki.ca)
        ctx.load_cert_chain(self.pki.client_cert, self.pki.client_key)
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; see {self.data_dir}/etcd.log")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1, context=ctx) as r:
                    if json.load(r).get("health") == "true":
                        return
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise TimeoutError(f"etcd at {self.url} not healthy after {timeout}s: {last}")
