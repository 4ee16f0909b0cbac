"""The secured form of the local cluster (``ledger cluster --security sasl_ssl``): what a managed
Kafka asks of a client, on loopback.

Clients and brokers talk over one SASL_SSL listener (SCRAM-SHA-256 and SCRAM-SHA-512; the brokers
log in to each other as ``admin``); the KRaft controllers over SASL_PLAINTEXT with PLAIN, the one
mechanism a controller listener takes, so that nothing on the machine reaches the cluster
unauthenticated. A CA and the brokers' certificate (for 127.0.0.1 and localhost) are made with
openssl when the cluster folder is new, with a password for each principal; the SCRAM users are
created when the storage is formatted. The StandardAuthorizer allows nothing without an ACL, and the
ACLs give each ledger principal what its role needs on the topics and groups of a topic prefix:
``ledger-server`` and ``ledger-worker`` create, read and write them; ``ledger-auditor`` reads them
(it can replay, never append). Each principal's client properties file is written beside them.

Given an OAuth issuer, the listener also takes SASL OAUTHBEARER: the brokers check a token's
signature against the issuer's keys, its issuer, and its audience ``KAFKA_AUDIENCE``; the principal is
the token's subject (a service's client id, with the client credentials grant), granted like the others.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import threading
import urllib.request
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.protocol.admin import CreateAclsRequest

from ledger.kafka.security import KafkaClientConfig
from ledger.kafka.tokens import metadata_urls

ADMIN = "admin"
PRINCIPALS = {"server": "ledger-server", "worker": "ledger-worker", "auditor": "ledger-auditor"}
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
PLAIN_MODULE = "org.apache.kafka.common.security.plain.PlainLoginModule"
OAUTHBEARER_MODULE = "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule"
OAUTHBEARER_VALIDATOR = "org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler"
KAFKA_AUDIENCE = "urn:ledger:kafka"  # what an OAUTHBEARER token must be issued for (its aud)
# Kafka's codes (org.apache.kafka.common.acl and .resource).
TOPIC, GROUP, CLUSTER = 2, 3, 4
LITERAL, PREFIXED = 3, 4
READ, WRITE, CREATE, DESCRIBE, DESCRIBE_CONFIGS = 3, 4, 5, 8, 10
ALLOW = 3
Grants = Mapping[int, tuple[int, ...]]  # resource type -> operations allowed
WRITERS = {TOPIC: (CREATE, DESCRIBE, DESCRIBE_CONFIGS, READ, WRITE), GROUP: (READ,), CLUSTER: (DESCRIBE_CONFIGS,)}
READERS = {TOPIC: (DESCRIBE, DESCRIBE_CONFIGS, READ), GROUP: (DESCRIBE,)}
GRANTS = {"server": WRITERS, "worker": WRITERS, "auditor": READERS}


class ClusterSecurity:
    """The certificates, passwords, broker properties, ACLs and client files of a secured cluster
    kept in ``directory``/security."""

    def __init__(self, directory: Path, oauth_issuer: str | None = None) -> None:
        self.folder = directory / "security"
        self.ca = self.folder / "ca.crt"
        self.oauth_issuer = oauth_issuer
        self._jwks_uri: str | None = None
        self._passwords: dict[str, str] = {}

    def prepare(self) -> None:
        """Make the CA, the brokers' certificate and the passwords, unless the folder has them."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        passwords = self.folder / "passwords.json"
        if not passwords.exists():
            made = {name: secrets.token_urlsafe(18) for name in (ADMIN, *PRINCIPALS.values())}
            passwords.touch(mode=0o600)
            passwords.write_text(json.dumps(made, indent=2) + "\n")
        self._passwords = json.loads(passwords.read_text())
        if not (self.folder / "broker.pem").exists():
            self._certificates()
        for role in PRINCIPALS:
            self.client_file(role).write_text(self.client_properties(role))
            self.client_file(role).chmod(0o600)
        if self.oauth_issuer is not None:
            self._jwks_uri = jwks_uri(self.oauth_issuer)

    def _certificates(self) -> None:
        def openssl(*arguments: str) -> None:
            done = subprocess.run(["openssl", *arguments], cwd=self.folder, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                raise RuntimeError(f"openssl {arguments[0]} failed: {done.stderr.strip()}")

        curve = ("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out")
        openssl(*curve, "ca.key")
        openssl("req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", "3650", "-subj", "/CN=ledger local CA",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-out", "ca.crt")
        openssl(*curve, "broker.key")
        openssl("req", "-new", "-key", "broker.key", "-subj", "/CN=localhost", "-out", "broker.csr")
        (self.folder / "broker.ext").write_text(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
        openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-sha256", "-days", "825", "-extfile", "broker.ext", "-out", "broker.crt")
        # Kafka's PEM keystore: the (unencrypted PKCS#8) key, then the chain.
        keystore = self.folder / "broker.pem"
        keystore.touch(mode=0o600)
        keystore.write_text("".join((self.folder / name).read_text() for name in ("broker.key", "broker.crt", "ca.crt")))

    def broker_properties(self) -> dict[str, str]:
        admin = self._passwords[ADMIN]
        return {
            "listener.security.protocol.map": "CLIENT:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
            "inter.broker.listener.name": "CLIENT",
            "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
            "listener.name.client.sasl.enabled.mechanisms": ",".join(SCRAM_MECHANISMS),
            "listener.name.client.scram-sha-256.sasl.jaas.config": _jaas(SCRAM_MODULE),
            # The broker's own login to the other brokers; the users' credentials live in the metadata.
            "listener.name.client.scram-sha-512.sasl.jaas.config": _jaas(SCRAM_MODULE, username=ADMIN, password=admin),
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": _jaas(PLAIN_MODULE, username=ADMIN, password=admin,
                                                                     user_admin=admin),
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.folder / "broker.pem"),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{ADMIN}",
            **self._oauthbearer_properties(),
        }

    def _oauthbearer_properties(self) -> dict[str, str]:
        if self._jwks_uri is None:
            return {}
        return {
            "listener.name.client.sasl.enabled.mechanisms": ",".join((*SCRAM_MECHANISMS, "OAUTHBEARER")),
            "listener.name.client.oauthbearer.sasl.jaas.config": _jaas(OAUTHBEARER_MODULE),
            "listener.name.client.oauthbearer.sasl.server.callback.handler.class": OAUTHBEARER_VALIDATOR,
            "sasl.oauthbearer.jwks.endpoint.url": self._jwks_uri,
            "sasl.oauthbearer.expected.issuer": self.oauth_issuer or "",
            "sasl.oauthbearer.expected.audience": KAFKA_AUDIENCE,
        }

    def jvm_options(self) -> list[str]:
        """What the brokers' JVM needs: Kafka fetches only the OAuth URLs it is told it may."""
        return [f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={self._jwks_uri}"] if self._jwks_uri else []

    def format_arguments(self) -> list[str]:
        """StorageTool format's arguments that create the SCRAM users."""
        return [argument for name, password in self._passwords.items() for mechanism in SCRAM_MECHANISMS
                for argument in ("--add-scram", f"{mechanism}=[name={name},password={password}]")]

    def client_file(self, role: str) -> Path:
        return self.folder / f"{role}.properties"

    def client_properties(self, role: str) -> str:
        name = PRINCIPALS[role]
        return (f"# {name}: LEDGER_KAFKA_CONFIG for a ledger {role}\nsecurity.protocol=SASL_SSL\n"
                f"sasl.mechanism=SCRAM-SHA-512\nsasl.username={name}\nsasl.password={self._passwords[name]}\n"
                f"ssl.ca.location={self.ca}\n")

    def config(self, user: str = ADMIN) -> KafkaClientConfig:
        return KafkaClientConfig(protocol="SASL_SSL", mechanism="SCRAM-SHA-512", username=user,
                                 password=self._passwords[user], ca_location=str(self.ca))

    def answers(self, bootstrap: str, expect_brokers: int) -> bool:
        """Whether the broker at ``bootstrap`` lets ``admin`` in and lists ``expect_brokers`` brokers."""
        async def listed() -> bool:
            client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3_000,
                                    **self.config().options())
            try:
                await client.bootstrap()
                return len(client.cluster.brokers()) >= expect_brokers
            except Exception:  # not up yet, whatever the reason: the caller waits and asks again
                return False
            finally:
                await client.close()
        return _run(listed())

    def grant(self, bootstrap: str, topic_prefix: str, grants: Mapping[str, Grants] = GRANTS,
              principals: Mapping[str, str] = PRINCIPALS) -> None:
        """The ACLs of each ledger principal (by role) on the topics and groups named ``<topic_prefix>.*``
        and on the cluster: ``grants`` maps a role to the operations it may do on each resource, and
        ``principals`` a role to its principal's name."""
        async def created() -> None:
            client = AIOKafkaClient(bootstrap_servers=bootstrap, **self.config().options())
            await client.bootstrap()
            try:
                node = client.get_random_node()
                for role, allowed in grants.items():
                    for resource, operations in allowed.items():
                        name, pattern = ("kafka-cluster", LITERAL) if resource == CLUSTER else \
                            (f"{topic_prefix}.", PREFIXED)
                        for operation in operations:
                            response = await client.send(node, CreateAclsRequest(
                                resource_type=resource, resource_name=name, resource_pattern_type_filter=pattern,
                                principal=f"User:{principals[role]}", host="*", operation=operation,
                                permission_type=ALLOW))
                            for code, message in response.creation_responses:
                                if code:
                                    raise RuntimeError(f"creating an ACL of {principals[role]} failed: {message}")
            finally:
                await client.close()
        _run(created())


def jwks_uri(issuer: str) -> str:
    """Where ``issuer`` publishes its keys, from its metadata."""
    for url in metadata_urls(issuer):
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                metadata = json.load(response)
        except (OSError, ValueError):
            continue
        if isinstance(metadata, dict) and metadata.get("issuer") == issuer and isinstance(metadata.get("jwks_uri"), str):
            return metadata["jwks_uri"]
    raise RuntimeError(f"no metadata of the OAuth issuer {issuer} names its keys (jwks_uri) at {' or '.join(metadata_urls(issuer))}")


def _jaas(module: str, **options: str) -> str:
    return f"{module} required" + "".join(f' {key}="{value}"' for key, value in options.items()) + ";"


def _run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coroutine`` to its end from synchronous code, in a thread of its own: the caller's
    thread may be running an event loop."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(coroutine)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="ledger-cluster-security")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")

