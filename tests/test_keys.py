"""Key provisioning: layout, permissions, re-runs, kit loading and real TLS handshakes."""

from __future__ import annotations

import copy
import os
import socket
import ssl
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import NameOID

from smpc.cli import main as cli_main
from smpc.errors import UserError
from smpc.pki.certs import mpyc_party_index
from smpc.pki.directory import load_directory
from smpc.pki.kit import load_broker_kit, load_kit
from smpc.pki.provision import init_keys

FEDERATION: dict[str, Any] = {
    "name": "test",
    "threshold": 1,
    "broker": {"host": "127.0.0.1", "port": 8883},
    "parties": [
        {"name": "alpha", "host": "127.0.0.1", "mpyc_ports": "14000-14049"},
        {"name": "beta", "host": "127.0.0.1", "mpyc_ports": "14100-14149"},
        {"name": "gamma", "host": "127.0.0.1", "mpyc_ports": "14200-14249"},
    ],
    "sites": [{"name": "oslo"}, {"name": "bergen"}],
    "analysts": [{"name": "analyst"}],
}
PARTY_FILES = {
    ".config/party_{i}.crt",
    ".config/party_{i}.key",
    ".config/mpyc_ca.crt",
    "tls/client.crt",
    "tls/client.key",
    "tls/ca.crt",
    "keys/encryption.key",
    "keys/signing.key",
}
OTHER_FILES = {"tls/client.crt", "tls/client.key", "tls/ca.crt", "keys/signing.key"}
PUBLIC_FILES = {"directory.json", "party-ca.crt", "federation-ca.crt", "federation.yaml"}


def write_federation(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def fed_file(tmp_path: Path) -> Path:
    return write_federation(tmp_path / "federation.yaml", FEDERATION)


@pytest.fixture
def out(tmp_path: Path, fed_file: Path) -> Path:
    out = tmp_path / "keys"
    init_keys(fed_file, out)
    return out


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def snapshot(root: Path, suffix: str = ".key") -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob(f"*{suffix}")}


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except Exception:
        return False
    return True


# --- layout and permissions -----------------------------------------------------------


def test_layout(out: Path) -> None:
    assert files_under(out / "ca") == {
        "party-ca.key",
        "party-ca.crt",
        "federation-ca.key",
        "federation-ca.crt",
    }
    assert files_under(out / "public") == PUBLIC_FILES
    assert {p.name for p in (out / "kits").iterdir()} == {
        "alpha", "beta", "gamma", "oslo", "bergen", "analyst", "broker",
    }  # fmt: skip
    for i, name in enumerate(["alpha", "beta", "gamma"]):
        expected = {f.format(i=i) for f in PARTY_FILES} | {"kit.json"}
        expected |= {f"public/{f}" for f in PUBLIC_FILES}
        assert files_under(out / "kits" / name) == expected
    for name in ["oslo", "bergen", "analyst"]:
        expected = OTHER_FILES | {"kit.json"} | {f"public/{f}" for f in PUBLIC_FILES}
        if name == "analyst":  # results are encrypted to analysts
            expected |= {"keys/encryption.key"}
        assert files_under(out / "kits" / name) == expected
    assert files_under(out / "kits" / "broker") == {
        "kit.json", "tls/server.crt", "tls/server.key", "tls/ca.crt",
    }  # fmt: skip
    # MPyC's CA file is the party CA; the broker clients' CA file is the federation CA.
    party_ca = (out / "ca" / "party-ca.crt").read_bytes()
    federation_ca = (out / "ca" / "federation-ca.crt").read_bytes()
    assert party_ca != federation_ca
    assert (out / "kits" / "beta" / ".config" / "mpyc_ca.crt").read_bytes() == party_ca
    assert (out / "kits" / "oslo" / "tls" / "ca.crt").read_bytes() == federation_ca
    # A kit holds only its own secrets.
    assert not list((out / "kits" / "oslo").rglob("*ca.key"))
    assert not (out / "kits" / "alpha" / ".config" / "party_1.key").exists()


def test_modes_do_not_depend_on_umask(tmp_path: Path, fed_file: Path) -> None:
    old = os.umask(0)
    try:
        out = tmp_path / "keys"
        init_keys(fed_file, out)
    finally:
        os.umask(old)
    keys = list(out.rglob("*.key"))
    assert len(keys) == 2 + 3 * 4 + 2 * 2 + 3 + 1  # CAs, parties, sites, analyst, broker
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700, key.parent
    for kit in (out / "kits").iterdir():
        assert stat.S_IMODE(kit.stat().st_mode) == 0o700, kit
    assert stat.S_IMODE((out / "ca").stat().st_mode) == 0o700
    for crt in out.rglob("*.crt"):
        assert stat.S_IMODE(crt.stat().st_mode) == 0o644, crt


def test_key_types_and_pem(out: Path) -> None:
    kit = out / "kits" / "alpha" / "keys"
    signing = serialization.load_pem_private_key((kit / "signing.key").read_bytes(), None)
    assert isinstance(signing, Ed25519PrivateKey)
    assert (kit / "encryption.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


# --- certificates ---------------------------------------------------------------------


def test_party_certificates(out: Path) -> None:
    party_ca = cert(out / "ca" / "party-ca.crt")
    federation_ca = cert(out / "ca" / "federation-ca.crt")
    assert party_ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for i, name in enumerate(["alpha", "beta", "gamma"]):
        c = cert(out / "kits" / name / ".config" / f"party_{i}.crt")
        cn = c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert cn == f"MPyC party {i}"
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [f"MPyC party {i}"]
        assert issued_by(c, party_ca)
        assert not issued_by(c, federation_ca)
        assert mpyc_party_index(c) == i
        assert mpyc_party_index(c.public_bytes(serialization.Encoding.DER)) == i


def test_site_certificate_is_not_from_the_party_ca(out: Path) -> None:
    party_ca = cert(out / "ca" / "party-ca.crt")
    federation_ca = cert(out / "ca" / "federation-ca.crt")
    site = cert(out / "kits" / "oslo" / "tls" / "client.crt")
    assert not issued_by(site, party_ca)
    assert issued_by(site, federation_ca)
    assert site.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "oslo"
    ou = site.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
    assert ou == "site"
    with pytest.raises(UserError, match="not an MPyC party certificate"):
        mpyc_party_index(site)


def test_broker_certificate(out: Path) -> None:
    broker = load_broker_kit(out / "kits" / "broker")
    assert (broker.host, broker.port) == ("127.0.0.1", 8883)
    c = cert(broker.tls.cert)
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert issued_by(c, cert(out / "ca" / "federation-ca.crt"))


# --- re-runs --------------------------------------------------------------------------


def test_rerun_keeps_everything(out: Path, fed_file: Path) -> None:
    before = snapshot(out)
    certs = snapshot(out, ".crt")
    report = init_keys(fed_file, out)
    assert snapshot(out) == before
    assert snapshot(out, ".crt") == certs
    assert report.created == [] and report.reissued == []
    assert {str(p) for p in report.kept} >= set(before)
    lines = report.lines()
    assert any(line.startswith(f"{out / 'kits' / 'oslo'} (site): kept") for line in lines)
    assert not any("created" in line for line in lines)


def test_new_site_gets_just_its_kit(out: Path, tmp_path: Path) -> None:
    before = snapshot(out)
    certs = snapshot(out, ".crt")
    data = copy.deepcopy(FEDERATION)
    data["sites"].append({"name": "tromso"})
    report = init_keys(write_federation(tmp_path / "federation.yaml", data), out)
    assert {str(p) for p in report.created} == {
        "kits/tromso/tls/client.key",
        "kits/tromso/tls/client.crt",
        "kits/tromso/keys/signing.key",
    }
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k in before} == before
    assert snapshot(out, ".crt").items() >= certs.items()
    new = cert(out / "kits" / "tromso" / "tls" / "client.crt")
    assert issued_by(new, cert(out / "ca" / "federation-ca.crt"))
    for public in (out / "public", out / "kits" / "alpha" / "public"):
        assert load_directory(public).sites == ("oslo", "bergen", "tromso")


def test_missing_certificate_is_reissued_for_the_kept_key(out: Path, fed_file: Path) -> None:
    crt = out / "kits" / "beta" / ".config" / "party_1.crt"
    crt.unlink()
    key_before = (crt.parent / "party_1.key").read_bytes()
    report = init_keys(fed_file, out)
    assert [str(p) for p in report.created] == ["kits/beta/.config/party_1.crt"]
    assert (crt.parent / "party_1.key").read_bytes() == key_before
    assert mpyc_party_index(cert(crt)) == 1


def test_changed_broker_host_reissues_only_the_server_certificate(
    out: Path, tmp_path: Path
) -> None:
    data = copy.deepcopy(FEDERATION)
    data["broker"]["host"] = "mqtt.example.org"
    report = init_keys(write_federation(tmp_path / "federation.yaml", data), out)
    assert [str(p) for p in report.reissued] == ["kits/broker/tls/server.crt"]
    assert report.created == []
    san = cert(out / "kits" / "broker" / "tls" / "server.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["mqtt.example.org"]


def test_lost_ca_key_reissues_its_certificates_keeping_leaf_keys(out: Path, fed_file: Path) -> None:
    before = snapshot(out)
    (out / "ca" / "party-ca.key").unlink()
    report = init_keys(fed_file, out)
    assert [str(p) for p in report.created] == ["ca/party-ca.key"]
    assert {str(p) for p in report.reissued} == {
        "ca/party-ca.crt",
        *(f"kits/{n}/.config/party_{i}.crt" for i, n in enumerate(["alpha", "beta", "gamma"])),
    }
    after = snapshot(out)
    assert after.pop("ca/party-ca.key") != before.pop("ca/party-ca.key")
    assert after == before


def test_reordered_parties_are_refused(out: Path, tmp_path: Path) -> None:
    data = copy.deepcopy(FEDERATION)
    data["parties"][0], data["parties"][1] = data["parties"][1], data["parties"][0]
    data["parties"][0]["mpyc_ports"], data["parties"][1]["mpyc_ports"] = (
        "14500-14509",
        "14600-14609",
    )
    with pytest.raises(UserError, match=r"beta is party 0 .* MPyC key of party 1"):
        init_keys(write_federation(tmp_path / "federation.yaml", data), out)


def test_role_change_is_refused(out: Path, tmp_path: Path) -> None:
    data = copy.deepcopy(FEDERATION)
    data["sites"] = [{"name": "bergen"}]
    data["analysts"].append({"name": "oslo"})
    with pytest.raises(UserError, match="oslo was provisioned as site but is a analyst"):
        init_keys(write_federation(tmp_path / "federation.yaml", data), out)


def test_removed_participant_is_reported(out: Path, tmp_path: Path) -> None:
    data = copy.deepcopy(FEDERATION)
    data["sites"] = [{"name": "oslo"}]
    report = init_keys(write_federation(tmp_path / "federation.yaml", data), out)
    assert any("bergen is no longer in" in note for note in report.notes)
    assert load_directory(out / "public").sites == ("oslo",)


def test_bad_federation_file_stops_before_writing(tmp_path: Path) -> None:
    bad = write_federation(tmp_path / "federation.yaml", {**FEDERATION, "threshold": 3})
    with pytest.raises(UserError, match="threshold: "):
        init_keys(bad, tmp_path / "keys")
    assert not (tmp_path / "keys").exists()


def test_cli(tmp_path: Path, fed_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["keys", "init", str(fed_file), "--out", str(tmp_path / "k")]) == 0
    assert "created" in capsys.readouterr().out
    bad = write_federation(tmp_path / "bad.yaml", {**FEDERATION, "threshold": 3})
    assert cli_main(["keys", "init", str(bad), "--out", str(tmp_path / "k")]) == 2
    assert "bad.yaml: threshold: " in capsys.readouterr().err


# --- loading --------------------------------------------------------------------------


def test_load_kit_round_trip(out: Path) -> None:
    beta = load_kit(out / "kits" / "beta")
    assert (beta.name, beta.role, beta.party_index) == ("beta", "party", 1)
    assert beta.mpyc is not None and beta.mpyc.cert.name == "party_1.crt"
    assert beta.mpyc_workdir / ".config" / "mpyc_ca.crt" == beta.mpyc.ca
    assert beta.tls.key.is_file() and beta.federation_file.is_file()
    directory = beta.directory
    assert directory.parties == ("alpha", "beta", "gamma")
    assert directory.role("oslo") == "site" and directory.party_index("gamma") == 2
    # The directory's public keys match the kit's private keys.
    signature = beta.signing_key.sign(b"job 42")
    directory.verify_key("beta").verify(signature, b"job 42")
    assert beta.encryption_key is not None
    oslo = load_kit(out / "kits" / "oslo")
    assert (oslo.role, oslo.party_index, oslo.encryption_key, oslo.mpyc) == (
        "site",
        None,
        None,
        None,
    )
    ephemeral = X25519PrivateKey.generate()
    shared_site = ephemeral.exchange(oslo.directory.party_encryption_key(1))
    shared_party = beta.encryption_key.exchange(ephemeral.public_key())
    assert shared_site == shared_party


def test_directory_errors(out: Path) -> None:
    directory = load_directory(out / "public" / "directory.json")
    with pytest.raises(UserError, match="'mallory' is not in"):
        directory.verify_key("mallory")
    with pytest.raises(UserError, match="no computing party 3"):
        directory.party_encryption_key(3)
    with pytest.raises(UserError, match="not a computing party"):
        directory.party_index("oslo")


@pytest.mark.parametrize(
    ("damage", "file", "words"),
    [
        ("delete", "keys/signing.key", "not found"),
        ("garbage", "keys/signing.key", "not a readable"),
        ("delete", "kit.json", "not found"),
        ("garbage", "kit.json", "not valid JSON"),
        ("garbage", "public/directory.json", "not valid JSON"),
        ("delete", ".config/party_1.crt", "not found"),
        ("delete", "tls/client.key", "not found"),
        ("swap", "keys/encryption.key", "expected an X25519 private key"),
        ("foreign", "keys/signing.key", "does not match"),
    ],
)
def test_broken_kit_names_the_file(out: Path, damage: str, file: str, words: str) -> None:
    kit = out / "kits" / "beta"
    target = kit / file
    if damage == "delete":
        target.unlink()
    elif damage == "garbage":
        target.write_bytes(b"{ not this")
    elif damage == "swap":  # a key of the wrong type where X25519 is expected
        target.unlink()
        target.write_bytes((kit / "keys" / "signing.key").read_bytes())
    else:  # another participant's key
        target.unlink()
        target.write_bytes((out / "kits" / "alpha" / file).read_bytes())
    with pytest.raises(UserError) as info:
        load_kit(kit)
    assert str(target) in str(info.value)
    assert words in str(info.value)


# --- real TLS, set up exactly as MPyC 0.11 does with --ssl ----------------------------


def mpyc_server_context(config: Path, i: int, strict: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config / f"party_{i}.crt", keyfile=config / f"party_{i}.key")
    context.load_verify_locations(cafile=config / "mpyc_ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    if strict:
        context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def client_context(cert: Path, key: Path, ca: Path, strict: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.load_cert_chain(cert, keyfile=key)
    context.load_verify_locations(cafile=ca)
    if strict:
        context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str
) -> tuple[bytes | Exception, bytes | Exception]:
    """Connect on 127.0.0.1; returns (client cert DER seen by the server, data the client read)."""
    result: dict[str, bytes | Exception] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
            except OSError as exc:
                result["server"] = exc
                return
            conn.settimeout(10)
            try:
                with server.wrap_socket(conn, server_side=True) as tls:
                    result["server"] = tls.getpeercert(binary_form=True) or b""
                    tls.sendall(b"ok")
            except OSError as exc:  # ssl.SSLError is an OSError
                result["server"] = exc
                conn.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                # In TLS 1.3 the server judges the client certificate after the client
                # finished its handshake: a refusal shows up on the first read.
                client_result: bytes | Exception = tls.recv(2)
        except OSError as exc:
            client_result = exc
        thread.join(10)
        assert not thread.is_alive()
    return result["server"], client_result


@pytest.mark.parametrize("strict", [False, True], ids=["default", "x509-strict"])
def test_mpyc_tls_between_parties(out: Path, strict: bool) -> None:
    server = mpyc_server_context(out / "kits" / "beta" / ".config", 1, strict)
    config = out / "kits" / "alpha" / ".config"
    client = client_context(
        config / "party_0.crt", config / "party_0.key", config / "mpyc_ca.crt", strict
    )
    seen, data = handshake(server, client, "MPyC party 1")
    assert data == b"ok"
    assert isinstance(seen, bytes) and mpyc_party_index(seen) == 0


def test_mpyc_tls_refuses_wrong_party_name(out: Path) -> None:
    server = mpyc_server_context(out / "kits" / "beta" / ".config", 1)
    config = out / "kits" / "alpha" / ".config"
    client = client_context(config / "party_0.crt", config / "party_0.key", config / "mpyc_ca.crt")
    _, data = handshake(server, client, "MPyC party 2")
    assert isinstance(data, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in str(data)


@pytest.mark.parametrize("who", ["oslo", "analyst"])
def test_mpyc_port_refuses_federation_ca_client(out: Path, who: str) -> None:
    server = mpyc_server_context(out / "kits" / "beta" / ".config", 1)
    kit = out / "kits" / who
    # Even trusting the party CA for the server, the site's own certificate is refused.
    client = client_context(
        kit / "tls" / "client.crt", kit / "tls" / "client.key", kit / "public" / "party-ca.crt"
    )
    seen, data = handshake(server, client, "MPyC party 1")
    assert isinstance(seen, ssl.SSLError)
    assert "certificate verify failed" in str(seen)
    assert data != b"ok"
