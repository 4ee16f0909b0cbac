"""What ledger may rely on from the broker it talks to: one profile per kind of broker.

Everything ledger does differently on the embedded broker (Tansu) lives in the ``TANSU`` profile
and is chosen by what the broker is, never by a setting: Tansu serves a later batch of a partition
before an earlier one under load, holds an empty fetch for its whole wait, under-reports
``end_offsets()`` and has no idempotent producer (docs/operations.md, "The embedded broker"). Apache Kafka (``KAFKA``)
does none of that, so there ledger uses what Kafka gives: the idempotent producer, fetches that
return as soon as an event arrives, and the end offsets the broker reports.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed, UnsupportedSaslMechanismError
from aiokafka.protocol.admin import ApiVersionRequest

from ledger.kafka.security import KafkaClientConfig, KafkaSecurityError, client_config, connection, ssl_context
from ledger.kafka.tokens import TokenUnavailable
from ledger.settings import Settings

log = logging.getLogger(__name__)

# OffsetForLeaderEpoch: what a replica asks a new leader before truncating its log. Every Apache
# Kafka broker since 0.11 serves it; Tansu, which does not replicate, does not advertise it.
OFFSET_FOR_LEADER_EPOCH = 23
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class BrokerProfile:
    name: str
    description: str
    idempotent_producer: bool  # InitProducerId works: the producer's retries are de-duplicated by the broker
    answers_fetch_early: bool  # an empty fetch returns as soon as an event arrives (a long poll costs no latency)
    serves_batches_in_order: bool  # a partition's batches become readable in offset order
    exact_end_offsets: bool  # ListOffsets(latest) is the true end of a partition
    # Partitions of a topic ledger creates unless LEDGER_PARTITIONS says. On Kafka every partition costs
    # the brokers CPU for every produce and every fetch (aiokafka fetches without sessions, naming each one):
    # on 3 brokers, one partition each instead of 8 in all is +50 % flows/s at C=1 and +44 % at C=16
    # (bench/flow.py), and still lets 3 workers share the load. The embedded broker scans every partition on
    # every fetch, and a partition's scan grows with the batches it holds: 8 rather than 32 is +15 % flows/s
    # at C=1 and as fast at C=16 on a fresh broker; fewer would slow a long session down sooner.
    default_partitions: int


KAFKA = BrokerProfile(
    "kafka", "Apache Kafka (or a broker that replicates like it)",
    idempotent_producer=True, answers_fetch_early=True, serves_batches_in_order=True, exact_end_offsets=True,
    default_partitions=3,
)
TANSU = BrokerProfile(
    "tansu", "Tansu, the embedded broker (no idempotent producer, paced fetches, holes waited for)",
    idempotent_producer=False, answers_fetch_early=False, serves_batches_in_order=False, exact_end_offsets=False,
    default_partitions=8,
)

_known: dict[tuple[str, KafkaClientConfig], BrokerProfile] = {}
_checked: set[tuple[str, KafkaClientConfig]] = set()  # bootstraps that answered check_bootstrap


def profile_for(advertised_apis: set[int]) -> BrokerProfile:
    return KAFKA if OFFSET_FOR_LEADER_EPOCH in advertised_apis else TANSU


class NotKafka(ConnectionError):
    """Something answers at the bootstrap address, but not as a Kafka broker."""


class KafkaUnreachable(ConnectionError):
    """Nothing accepts connections at any bootstrap address."""


async def check_bootstrap(settings: Settings) -> None:
    """Fail within seconds, saying what answered, when LEDGER_BOOTSTRAP names something that is not
    Kafka (the Kafka client would wait ~40 s for an answer that never comes), or a broker that does not
    speak the client's protocol (TLS or not) or whose certificate it does not trust. An address that
    refuses connections is left to the client, which says it cannot reach Kafka."""
    bootstrap, config = settings.bootstrap, client_config(settings)
    if (bootstrap, config) in _checked:
        return
    context = ssl_context(config) if config.uses_tls else None
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        verdict = await asyncio.to_thread(_probe, host.strip("[]"), int(port), context)
        if verdict == "":
            if config.uses_sasl:
                await _sasl_refusal(address.strip(), config)
            _checked.add((bootstrap, config))
            return
        if verdict is not None:
            raise NotKafka(f"{address.strip()} {verdict}")
    raise KafkaUnreachable(f"cannot reach Kafka at {bootstrap}: nothing accepts connections there; start a broker "
                           "(`ledger broker`, or `compose/local-cluster` for Apache Kafka) or set LEDGER_BOOTSTRAP")


def _probe(host: str, port: int, context: ssl.SSLContext | None) -> str | None:
    """'' when a Kafka broker answers (over TLS when ``context``); why not otherwise; None when
    nothing listens there."""
    client_id = b"ledger-probe"
    correlation_id = 0x1ED6E3
    request = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id  # ApiVersions v0
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as raw:
            conn = raw if context is None else context.wrap_socket(raw, server_hostname=host)
            conn.sendall(struct.pack(">i", len(request)) + request)
            try:
                answer = conn.recv(256)
            except TimeoutError:
                return (f"accepted a connection but did not answer a Kafka request within {PROBE_TIMEOUT_S:g} s: "
                        f"it is not a Kafka broker, or not a {'TLS' if context else 'plaintext'} listener "
                        "(check LEDGER_BOOTSTRAP and security.protocol)")
    except ssl.SSLCertVerificationError as exc:
        raise KafkaSecurityError(_untrusted(host, port, exc)) from None
    except ssl.SSLError as exc:
        raise KafkaSecurityError(f"{host}:{port} did not complete a TLS handshake ({exc.reason or exc}): it is not "
                                 "a TLS listener, or it wants a client certificate; check security.protocol "
                                 "(SSL and SASL_SSL speak TLS) and ssl.certificate.location") from None
    except OSError:
        return None
    if len(answer) >= 8 and struct.unpack(">i", answer[4:8])[0] == correlation_id:
        return ""
    if context is None and (answer[:2] == b"\x15\x03" or not answer):
        # A TLS listener answers a plaintext request with a TLS alert, or closes the connection.
        return ("closed the connection on a plaintext Kafka request: if it is a TLS or SASL listener, set "
                "security.protocol (SSL, SASL_SSL or SASL_PLAINTEXT) in LEDGER_KAFKA_CONFIG or "
                "LEDGER_KAFKA_SECURITY_PROTOCOL; else check LEDGER_BOOTSTRAP")
    shown = answer[:60].decode("ascii", "replace").splitlines()[0]
    return f"answered, but not as a Kafka broker (it sent {shown!r}); check LEDGER_BOOTSTRAP"


def _untrusted(host: str, port: int, exc: ssl.SSLCertVerificationError) -> str:
    reason = exc.verify_message or str(exc)
    if "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
        return (f"the TLS certificate of {host}:{port} does not name {host} ({reason}): connect by a name the "
                "certificate holds, or set ssl.endpoint.identification.algorithm=none")
    if "expired" in reason.lower():
        return f"the TLS certificate of {host}:{port} has expired ({reason}): the broker needs a new one"
    return (f"the TLS certificate of {host}:{port} is not trusted ({reason}): set ssl.ca.location to the CA "
            "certificate that signed it")


async def broker_profile(settings: Settings) -> BrokerProfile:
    """The profile of the broker ``settings`` name: asked once per process (an ApiVersions request)."""
    key = (settings.bootstrap, client_config(settings))
    if (known := _known.get(key)) is not None:
        return known
    await check_bootstrap(settings)
    client = AIOKafkaClient(**connection(settings), client_id="ledger-profile")
    try:
        with _connect_errors_unlogged():  # one sentence says why below, not a line per broker first
            await client.bootstrap()
        response = await client.send(client.get_random_node(), ApiVersionRequest())
    finally:
        await client.close()
    profile = _known[key] = profile_for({api_key for api_key, *_ in response.api_versions})
    log.info("broker at %s: %s", settings.bootstrap, profile.description)
    return profile


@contextmanager
def _connect_errors_unlogged() -> Iterator[None]:
    aiokafka_log = logging.getLogger("aiokafka")
    unlogged = _Unlogged()
    aiokafka_log.addFilter(unlogged)
    try:
        yield
    finally:
        aiokafka_log.removeFilter(unlogged)


class _Unlogged(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Unable connect to")


async def _sasl_refusal(address: str, config: KafkaClientConfig) -> None:
    """Raise why the broker at ``address`` refuses ``config``'s SASL login, if it does: a client's
    bootstrap would only say it could not connect, and log the broker's reason once per broker."""
    host, _, port = address.rpartition(":")
    try:
        conn = await create_conn(host.strip("[]"), int(port), client_id="ledger-probe", request_timeout_ms=5_000,
                                 **config.options())
    except SaslAuthenticationFailed:
        if config.uses_tokens:
            raise _token_refused(address, config) from None
        raise KafkaSecurityError(f"the broker at {address} refused the SASL login of {config.username} with "
                                 f"{config.mechanism}: the user does not exist there or sasl.password is wrong") from None
    except UnsupportedSaslMechanismError:
        raise KafkaSecurityError(f"the broker at {address} does not enable SASL mechanism {config.mechanism} on "
                                 "this listener: set sasl.mechanism to one it does (your provider names it: "
                                 "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)") from None
    except TokenUnavailable as exc:
        raise KafkaSecurityError(str(exc)) from None
    except Exception:  # any other cause: the client's own error says it
        return
    try:
        # A broker refusing a token answers with an error challenge, which aiokafka takes for success: the
        # broker then answers the next request with an error (IllegalSaslState), or closes the connection.
        if config.uses_tokens and (await conn.send(ApiVersionRequest())).error_code:
            raise _token_refused(address, config)
    except KafkaConnectionError:
        raise _token_refused(address, config) from None
    finally:
        conn.close()


def _token_refused(address: str, config: KafkaClientConfig) -> KafkaSecurityError:
    return KafkaSecurityError(f"the broker at {address} refused the OAUTHBEARER token {config.login()}: it does not "
                              "trust its issuer or signature, or expects another audience or scope")
