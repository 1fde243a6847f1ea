"""The OPC UA output: a real asyncua client on 127.0.0.1 reads, subscribes, calls Trigger(); security defaults."""

import asyncio
import socket
import time

import pytest

pytest.importorskip("asyncua")

from asyncua import Client, ua  # noqa: E402
from asyncua.crypto.cert_gen import setup_self_signed_certificate  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: E402

from edgelearn.errors import EdgelearnError, ParameterError  # noqa: E402
from edgelearn.plant.decision import Decision  # noqa: E402
from edgelearn.plant.opcua import OpcUaServer  # noqa: E402
from edgelearn.server import load_users

TIMEOUT = 10  # seconds any one client step may take
CLIENT_URI = "urn:edgelearn:test-client"
VARIABLES = ["Label", "Confidence", "Unknown", "Timestamp", "Counter", "ModelVersion", "FrameId"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def decision(frame_id: int, label: str | None = "scratch", confidence: float = 0.9) -> Decision:
    return Decision(station="line1", source="cam", frame_id=frame_id, timestamp=1_700_000_000.0 + frame_id,
                    label=label, confidence=confidence, unknown=label is None, top_k=[], model_version=3)


def url(port: int) -> str:
    return f"opc.tcp://127.0.0.1:{port}/edgelearn/"


async def station_nodes(client: Client) -> dict:
    ns = await client.get_namespace_index("urn:edgelearn:line1")
    station = await client.nodes.objects.get_child(f"{ns}:line1")
    nodes = {name: await station.get_child(f"{ns}:{name}") for name in VARIABLES + ["Trigger"]}
    return {"station": station, **nodes}


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 3 * TIMEOUT))


@pytest.fixture
def server():
    port = free_port()
    triggered = decision(99, "dent", 0.75)
    with OpcUaServer(f"opc.tcp://127.0.0.1:{port}", "line1", trigger=lambda: triggered) as srv:
        yield srv, port


def test_a_client_reads_the_latest_decision(server):
    srv, port = server
    srv.publish(decision(7))
    srv.publish(decision(8, label=None, confidence=0.2))

    async def read():
        async with Client(url(port), timeout=TIMEOUT) as client:
            nodes = await station_nodes(client)
            for _ in range(100):  # publish returns before the writes land
                if await nodes["Counter"].read_value() == 2:
                    break
                await asyncio.sleep(0.05)
            return {name: await nodes[name].read_value() for name in VARIABLES}

    values = run(read())
    assert values["Counter"] == 2 and values["FrameId"] == 8 and values["ModelVersion"] == 3
    assert values["Label"] == "" and values["Unknown"] is True and values["Confidence"] == pytest.approx(0.2)
    assert values["Timestamp"].timestamp() == pytest.approx(1_700_000_008.0)


def test_a_subscriber_receives_each_new_decision(server):
    srv, port = server

    class Handler:
        def __init__(self):
            self.changes = asyncio.Queue()

        def datachange_notification(self, node, value, data):
            self.changes.put_nowait((node, value))

    async def subscribe():
        async with Client(url(port), timeout=TIMEOUT) as client:
            nodes = await station_nodes(client)
            handler = Handler()
            subscription = await client.create_subscription(20, handler)
            await subscription.subscribe_data_change([nodes["Counter"], nodes["Label"]])
            seen = {}
            while len(seen) < 2:  # the initial values of both arrive first
                node, value = await asyncio.wait_for(handler.changes.get(), TIMEOUT)
                seen[node] = value
            labels, counters = [], []
            for i, label in enumerate(["scratch", "dent", "ok"], 1):
                srv.publish(decision(i, label))
                while counters[-1:] != [i]:
                    node, value = await asyncio.wait_for(handler.changes.get(), TIMEOUT)
                    (counters if node == nodes["Counter"] else labels).append(value)
            return labels, counters

    labels, counters = run(subscribe())
    assert counters == [1, 2, 3] and labels == ["scratch", "dent", "ok"]


def test_trigger_returns_the_callbacks_decision_and_variables_are_read_only(server):
    _, port = server

    async def call_and_write():
        async with Client(url(port), timeout=TIMEOUT) as client:
            nodes = await station_nodes(client)
            result = await nodes["station"].call_method(nodes["Trigger"])
            with pytest.raises(ua.UaStatusCodeError) as refused:
                await nodes["Label"].write_value(ua.Variant("ok", ua.VariantType.String))
            return result, refused.value, await nodes["Label"].read_value()

    result, refused, label = run(call_and_write())
    assert result[0] == "dent" and result[1] == pytest.approx(0.75) and result[2] is False
    assert refused.code in (ua.StatusCodes.BadNotWritable, ua.StatusCodes.BadUserAccessDenied)
    assert label == ""


def no_frame_yet() -> Decision:
    raise EdgelearnError("no frame from the camera yet")


@pytest.mark.parametrize(("trigger", "status"), [(None, ua.StatusCodes.BadNotImplemented),
                                                 (no_frame_yet, ua.StatusCodes.BadInvalidState)])
def test_trigger_without_a_callback_or_a_frame_is_a_bad_status(trigger, status):
    port = free_port()

    async def call():
        async with Client(url(port), timeout=TIMEOUT) as client:
            nodes = await station_nodes(client)
            await nodes["station"].call_method(nodes["Trigger"])

    with OpcUaServer(f"opc.tcp://127.0.0.1:{port}", "line1", trigger=trigger), \
            pytest.raises(ua.UaStatusCodeError) as bad:
        run(call())
    assert bad.value.code == status


def test_close_frees_the_port_and_a_busy_port_is_a_clear_error():
    port = free_port()
    first = OpcUaServer(f"opc.tcp://127.0.0.1:{port}", "line1")
    with pytest.raises(ParameterError, match=f"port {port} .* already in use"):
        OpcUaServer(f"opc.tcp://127.0.0.1:{port}", "line2")
    first.close()
    first.close()
    first.publish(decision(1))  # after close: dropped, no error
    OpcUaServer(f"opc.tcp://127.0.0.1:{port}", "line1").close()


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:4840", "opc.tcp://:4840", "opc.tcp://127.0.0.1:99999",
                                      "127.0.0.1:4840"])
def test_a_bad_endpoint_is_a_clear_error(endpoint):
    with pytest.raises(ParameterError, match="bad OPC UA endpoint .*opc.tcp://"):
        OpcUaServer(endpoint, "line1")


@pytest.fixture
def client_certificate(tmp_path):
    """A test client's key and self-signed certificate (DER), made once."""
    key, cert = tmp_path / "client-key.pem", tmp_path / "client-cert.der"
    run(setup_self_signed_certificate(key, cert, CLIENT_URI, "localhost", [ExtendedKeyUsageOID.CLIENT_AUTH],
                                      {"commonName": "test client"}))
    return key, cert


async def connect(port, server_dir, client_certificate=None, *, as_user: bool = False,
                  login: tuple[str, str] | None = None) -> str:
    """Label as read by a client; with a certificate, over Basic256Sha256 SignAndEncrypt, and ``as_user``
    also as the session's identity (else the session is anonymous)."""
    client = Client(url(port), timeout=TIMEOUT)
    if client_certificate:
        key, cert = client_certificate
        client.application_uri = CLIENT_URI
        await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key},"
                                         f"{server_dir / 'server-cert.der'}")
        if as_user:
            await client.load_client_certificate(str(cert))
            await client.load_private_key(str(key))
    if login:
        client.set_user(login[0])
        client.set_password(login[1])
    async with client:
        return await (await station_nodes(client))["Label"].read_value()


def test_beyond_loopback_needs_encryption_and_a_trusted_certificate(tmp_path, client_certificate):
    port, server_dir = free_port(), tmp_path / "server"
    with OpcUaServer(f"opc.tcp://0.0.0.0:{port}", "line1", certificate_dir=server_dir):
        assert (server_dir / "server-key.pem").stat().st_mode & 0o777 == 0o600
        with pytest.raises(ua.UaError, match="No matching endpoints"):  # no unencrypted endpoint
            run(connect(port, server_dir))
        with pytest.raises(ua.UaStatusCodeError):  # encrypted but anonymous
            run(connect(port, server_dir, client_certificate))
        with pytest.raises(ua.UaStatusCodeError):  # a user certificate nobody trusted
            run(connect(port, server_dir, client_certificate, as_user=True))
    certificate = (server_dir / "server-cert.der").read_bytes()
    (server_dir / "trusted").mkdir()
    (server_dir / "trusted" / "plc.der").write_bytes(client_certificate[1].read_bytes())
    with OpcUaServer(f"opc.tcp://0.0.0.0:{port}", "line1", certificate_dir=server_dir) as srv:
        srv.publish(decision(1, "ok"))
        time.sleep(0.2)  # let the write land; the assertion is on the value, not the time
        assert run(connect(port, server_dir, client_certificate, as_user=True)) == "ok"
    assert (server_dir / "server-cert.der").read_bytes() == certificate  # PLCs that trusted it still do


def test_anonymous_beyond_loopback_is_an_explicit_opt_in(tmp_path, client_certificate):
    port, server_dir = free_port(), tmp_path / "server"
    with OpcUaServer(f"opc.tcp://0.0.0.0:{port}", "line1", certificate_dir=server_dir, allow_anonymous=True):
        assert run(connect(port, server_dir, client_certificate)) == ""


def test_a_name_and_password_from_the_users_file_log_in(tmp_path, client_certificate):
    port, server_dir, path = free_port(), tmp_path / "server", tmp_path / "users"
    path.write_text("plc1 a-long-enough-secret-token\n")
    path.chmod(0o600)
    users = load_users(path)  # the API's users file: one list of people for every door
    with OpcUaServer(f"opc.tcp://127.0.0.1:{port}", "line1", certificate_dir=server_dir, users=users,
                     allow_anonymous=False):
        assert run(connect(port, server_dir, client_certificate, login=("plc1", "a-long-enough-secret-token"))) == ""
        with pytest.raises(ua.UaStatusCodeError):
            run(connect(port, server_dir, client_certificate, login=("plc1", "a-wrong-secret-token-here")))
        with pytest.raises(ua.UaStatusCodeError):  # anonymous off
            run(connect(port, server_dir, client_certificate))
