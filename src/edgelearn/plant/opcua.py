"""Decisions out over OPC UA: the latest decision as variables a PLC reads or subscribes to.

The server (asyncua) runs its own asyncio loop in a thread of its own; the public API is synchronous and
thread-safe. Under ``Objects`` it holds an object named after the station, in namespace
``urn:edgelearn:<station>``, with these variables:

============  ========  ==========================================================
Label         String    the decided class; empty when the image is unknown
Confidence    Double    0..1
Unknown       Boolean   true when the image is unlike anything taught
Timestamp     DateTime  when the frame was captured (UTC)
Counter       UInt64    decisions published so far; written last, so a PLC that watches it reads a whole decision
ModelVersion  Int64     the station's knowledge version; -1 when not known
FrameId       UInt64    the frame's number in its source
============  ========  ==========================================================

and a method ``Trigger()`` that decides on the latest frame now and returns ``[Label, Confidence, Unknown]``.

Writes are off: every variable is read-only to clients (teaching or correcting over OPC UA is not offered).

Security: on a loopback endpoint (127.0.0.1, ::1, localhost) the server accepts anonymous sessions without
encryption. Beyond loopback, or when ``certificate_dir`` is given, it offers only Basic256Sha256
(Sign, SignAndEncrypt) with a self-signed certificate generated into ``certificate_dir`` (key file 0600);
anonymous sessions are then refused unless ``allow_anonymous=True``, and a client proves who it is with
an X.509 user certificate that an engineer placed in ``certificate_dir/trusted/`` (DER or PEM), or with a
name and password from the station's users file (``users``). Every identity may read, none may write.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

from edgelearn.errors import EdgelearnError, ParameterError
from edgelearn.files import default_data_dir
from edgelearn.plant.decision import Decision

log = logging.getLogger(__name__)

DEFAULT_PORT = 4840  # the port IANA assigned to OPC UA
MISSING = "the OPC UA output needs asyncua: pip install 'edgelearn[plant]'"
START_TIMEOUT = 30.0  # seconds: the standard address space takes a moment to load on a small device
VARIABLES = {"Label": "String", "Confidence": "Double", "Unknown": "Boolean", "Timestamp": "DateTime",
             "Counter": "UInt64", "ModelVersion": "Int64", "FrameId": "UInt64"}


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``opc.tcp://host:port[/path]`` -> (host, port); a clear error for anything else."""
    try:
        url = urlparse(endpoint)
        host, port = url.hostname, url.port or DEFAULT_PORT
    except ValueError as e:  # a port that is not a number or out of range
        raise ParameterError(f"bad OPC UA endpoint {endpoint!r}: {e}; expected opc.tcp://HOST:PORT") from None
    if url.scheme != "opc.tcp" or not host:
        raise ParameterError(f"bad OPC UA endpoint {endpoint!r}: expected opc.tcp://HOST:PORT, "
                             f"e.g. opc.tcp://0.0.0.0:{DEFAULT_PORT}")
    return host, port


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


class _TrustedUsers:
    """asyncua user manager: a session is let in when anonymous access is on, or when the certificate it
    brings is in the trust list. Which token types a client may send at all is set apart (identity tokens)."""

    def __init__(self, trusted: set[bytes], allow_anonymous: bool, passwords: dict[str, str]):
        self.trusted, self.allow_anonymous, self.passwords = trusted, allow_anonymous, passwords

    def get_user(self, iserver, username=None, password=None, certificate=None):
        from asyncua.crypto import uacrypto
        from asyncua.crypto.permission_rules import User, UserRole

        if username is not None:  # a name and password: they alone decide, never the channel's certificate
            expected = self.passwords.get(username)
            allowed = expected is not None and hmac.compare_digest(expected.encode(), (password or "").encode())
        else:
            der = certificate if isinstance(certificate, bytes | None) else uacrypto.der_from_x509(certificate)
            allowed = self.allow_anonymous or der in self.trusted
        return User(role=UserRole.User, name=username) if allowed else None


class OpcUaServer:
    """An OPC UA server that shows the latest decision; a :class:`~edgelearn.plant.decision.Sink`.

    Parameters
    ----------
    endpoint : ``opc.tcp://HOST:PORT``; HOST 0.0.0.0 listens on every interface.
    station : the station's name: the object's browse name and the namespace ``urn:edgelearn:<station>``.
    trigger : called by the ``Trigger()`` method, in a worker thread, to decide on the latest frame
        (:meth:`Watcher.trigger`). The server does not publish the decision it returns: the caller's sinks
        do, so Counter counts it once. Without it, or when it raises an EdgelearnError (no frame yet),
        ``Trigger()`` answers a Bad status (BadNotImplemented, BadInvalidState).
    certificate_dir : where the server's key and certificate are generated (kept while valid: a year) and
        ``trusted/`` user certificates are read; default ``<data folder>/opcua`` when security is on.
    allow_anonymous : default: True on loopback, False beyond it.
    users : name -> token, the station's ``--users`` file as :func:`edgelearn.server.load_users` reads it:
        each name logs in with its token as password (sent encrypted). ``users``, ``certificate_dir`` or
        ``allow_anonymous=False`` turn security on for a loopback endpoint too.

    Raises
    ------
    ParameterError : a bad endpoint, or its port in use.
    """

    def __init__(self, endpoint: str, station: str, *, trigger: Callable[[], Decision] | None = None,
                 certificate_dir: Path | None = None, allow_anonymous: bool | None = None,
                 users: dict[str, str] | None = None):
        self.host, self.port = parse_endpoint(endpoint)
        try:
            import asyncua  # noqa: F401  (checked here so the error is one clear line, not a traceback)
        except ImportError as exc:
            raise EdgelearnError(MISSING) from exc
        self.endpoint, self.station, self._trigger = endpoint, station, trigger
        self.secure = (certificate_dir is not None or users is not None or not is_loopback(self.host)
                       or allow_anonymous is False)
        self.certificate_dir = Path(certificate_dir or default_data_dir() / "opcua") if self.secure else None
        self.allow_anonymous = is_loopback(self.host) if allow_anonymous is None else allow_anonymous
        self._passwords = dict(users or {})
        self._counter = 0
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"opcua-{station}", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(START_TIMEOUT)
        except BaseException:
            self._stop_loop()
            raise

    # --- the Sink protocol -------------------------------------------------------------------------------

    def publish(self, decision: Decision) -> None:
        """Schedule the variable writes on the server's loop and return at once."""
        if self._closed:
            return
        try:
            future = asyncio.run_coroutine_threadsafe(self._write(decision), self._loop)
        except RuntimeError:  # closed by another thread meanwhile: nobody can read it any more
            return
        future.add_done_callback(_log_failure)

    def close(self) -> None:
        """Stop the server and its loop, freeing the port. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(START_TIMEOUT)
        finally:
            self._stop_loop()

    def __enter__(self) -> OpcUaServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- on the server's loop ----------------------------------------------------------------------------

    async def _start(self) -> None:
        from asyncua import Server, ua

        uri = f"urn:edgelearn:{self.station}"
        users = _TrustedUsers(self._trusted_certificates(), self.allow_anonymous, self._passwords)
        server = Server(user_manager=users)
        await server.init()
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}/edgelearn/")
        server.set_server_name(f"edgelearn station {self.station}")
        await server.set_application_uri(uri)
        tokens = [ua.AnonymousIdentityToken] if self.allow_anonymous else []
        if self.secure:
            await self._load_certificate(server, uri)
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_Sign,
                                        ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            tokens += [ua.X509IdentityToken] + ([ua.UserNameIdentityToken] if self._passwords else [])
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens(tokens)
        await self._build_address_space(server, await server.register_namespace(uri))
        try:
            await server.start()
        except OSError as e:
            raise ParameterError(self._listen_error(e)) from None
        self._server = server

    async def _build_address_space(self, server, ns: int) -> None:
        from asyncua import ua

        station = await server.nodes.objects.add_object(ns, self.station)
        self._variables = {}
        for name, kind in VARIABLES.items():
            variant_type = getattr(ua.VariantType, kind)
            initial = ua.Variant(_initial(kind), variant_type)
            self._variables[name] = await station.add_variable(ns, name, initial, varianttype=variant_type)
        outputs = [_argument(name, kind) for name, kind in (("Label", ua.ObjectIds.String),
                                                             ("Confidence", ua.ObjectIds.Double),
                                                             ("Unknown", ua.ObjectIds.Boolean))]
        await station.add_method(ns, "Trigger", self._call_trigger, [], outputs)

    async def _write(self, decision: Decision) -> None:
        from asyncua import ua

        self._counter += 1
        values = {"Label": decision.label or "", "Confidence": float(decision.confidence),
                  "Unknown": bool(decision.unknown),
                  "Timestamp": datetime.fromtimestamp(decision.timestamp, UTC),
                  "ModelVersion": -1 if decision.model_version is None else int(decision.model_version),
                  "FrameId": int(decision.frame_id), "Counter": self._counter}  # Counter last: see the module doc
        for name, value in values.items():
            await self._variables[name].write_value(ua.Variant(value, getattr(ua.VariantType, VARIABLES[name])))

    async def _call_trigger(self, parent):
        from asyncua import ua

        if self._trigger is None:
            return ua.StatusCode(ua.StatusCodes.BadNotImplemented)
        try:
            decision = await asyncio.to_thread(self._trigger)  # inference must not stall the server's loop
        except EdgelearnError as e:  # e.g. no frame yet: the PLC sees a Bad status, the log says why
            log.warning("OPC UA Trigger() failed: %s", e)
            return ua.StatusCode(ua.StatusCodes.BadInvalidState)
        return [ua.Variant(decision.label or "", ua.VariantType.String),
                ua.Variant(float(decision.confidence), ua.VariantType.Double),
                ua.Variant(bool(decision.unknown), ua.VariantType.Boolean)]

    async def _load_certificate(self, server, uri: str) -> None:
        """Generate a private key (0600) and a self-signed certificate once; load both."""
        from asyncua.crypto.cert_gen import dump_private_key_as_pem, generate_private_key, setup_self_signed_certificate
        from cryptography.x509.oid import ExtendedKeyUsageOID

        folder = self.certificate_dir
        key, cert = folder / "server-key.pem", folder / "server-cert.der"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not key.is_file():
                with os.fdopen(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                    f.write(dump_private_key_as_pem(generate_private_key()))
            await setup_self_signed_certificate(key, cert, uri, socket.gethostname(),
                                                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                                                {"commonName": f"edgelearn {self.station}"})
        except OSError as e:
            raise ParameterError(f"cannot write the OPC UA certificate into {folder}: {e.strerror}") from None
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))

    def _trusted_certificates(self) -> set[bytes]:
        """DER bytes of the user certificates in ``certificate_dir/trusted/``."""
        from asyncua.crypto import uacrypto
        from cryptography import x509

        folder = self.certificate_dir / "trusted" if self.certificate_dir else None
        if folder is None or not folder.is_dir():
            return set()
        trusted = set()
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            data = path.read_bytes()
            try:
                certificate = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data \
                    else x509.load_der_x509_certificate(data)
            except ValueError:
                raise ParameterError(f"{path} is not a certificate (expected DER or PEM)") from None
            trusted.add(uacrypto.der_from_x509(certificate))
        return trusted

    def _listen_error(self, error: OSError) -> str:
        if error.errno == errno.EADDRINUSE:
            return (f"cannot start the OPC UA server: port {self.port} on {self.host} is already in use; "
                    f"stop the other server or choose another port")
        return f"cannot start the OPC UA server on {self.host}:{self.port}: {error.strerror or error}"

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_TIMEOUT)
        if not self._thread.is_alive():
            self._loop.close()


def _initial(kind: str):
    return {"String": "", "Double": 0.0, "Boolean": False, "DateTime": datetime.fromtimestamp(0, UTC),
            "UInt64": 0, "Int64": -1}[kind]


def _argument(name: str, data_type: int):
    from asyncua import ua

    argument = ua.Argument()
    argument.Name, argument.DataType, argument.ValueRank = name, ua.NodeId(data_type), -1
    return argument


def _log_failure(future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("OPC UA: could not write a decision: %s", future.exception())
