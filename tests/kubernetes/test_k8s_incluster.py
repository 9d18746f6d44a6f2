"""In-cluster configuration: both clients find the API server from the environment, verify its
certificate against the service-account CA, and authenticate with the mounted token."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from emulator import ApiEmulator
from k8s_harness import NS

from activator.discovery import ApiServer, _Watch
from autoscaler.backends.k8s_watch import KubeError
from autoscaler.backends.kubernetes_api import KubeApi, configuration

MS_PATH = f"/apis/serving.zeroserve.io/v1alpha1/namespaces/{NS}/modelservices"


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed server certificate for 127.0.0.1 (cryptography comes with moto, a test dep)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_path, cert_path = folder / "key.pem", folder / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture
async def tls_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[
        tuple[ApiEmulator, Path]]:
    key, cert = make_cert(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    emu = ApiEmulator()
    url = await emu.start(context)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", url.rsplit(":", 1)[1])
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("autoscaler-in-cluster")
    (sa / "ca.crt").write_bytes(cert.read_bytes())
    yield emu, sa
    await emu.close()


async def test_the_backend_client_uses_the_service_account(tls_emulator: tuple[ApiEmulator, Path]) -> None:
    emu, sa = tls_emulator
    api = KubeApi(configuration(sa_dir=sa))
    try:
        items, version = await api.list(MS_PATH, "")
        assert items == [] and int(version) > 0
    finally:
        await api.close()
    assert [a.identity for a in emu.accesses] == ["autoscaler-in-cluster"]


async def test_the_activator_client_uses_the_service_account(
        tls_emulator: tuple[ApiEmulator, Path]) -> None:
    emu, sa = tls_emulator
    (sa / "token").write_text("activator-in-cluster")
    seen: list[dict[str, dict[str, Any]]] = []
    async with aiohttp.ClientSession() as session:
        watch = _Watch(session, ApiServer.in_cluster(sa), MS_PATH, seen.append)
        assert int(await watch._list()) > 0
    assert seen == [{}]
    assert [a.identity for a in emu.accesses] == ["activator-in-cluster"]


async def test_an_untrusted_server_is_refused(tls_emulator: tuple[ApiEmulator, Path], tmp_path: Path) -> None:
    _, sa = tls_emulator
    other = tmp_path / "other"
    other.mkdir()
    _, wrong = make_cert(other)
    (sa / "ca.crt").write_bytes(wrong.read_bytes())
    api = KubeApi(configuration(sa_dir=sa))
    try:
        with pytest.raises(KubeError):
            await api.list(MS_PATH, "")
    finally:
        await api.close()
