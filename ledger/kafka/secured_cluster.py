"""The secured form of ledger's Kafka cluster, for ``ledger cluster --security sasl_ssl`` and for compose
with ``LEDGER_KAFKA_SECURITY=sasl_ssl``: what a managed Kafka asks of a client.

The brokers' settings are those of ``compose/kafka/sasl_ssl.env`` for both: clients and brokers talk
over one SASL_SSL listener, the KRaft controllers over SASL_PLAINTEXT; ledger's principals log in with
SCRAM-SHA-512, the brokers and the ``admin`` with PLAIN (the one user of the brokers' JAAS file). This
module makes the files that env file names under ``/security`` (``MOUNT``, compose's mount point; the
local cluster's own folder otherwise): a CA and the brokers' certificate for the given host names
(openssl), a password per principal, the JAAS file, each principal's client properties, and the
admin's properties for Kafka's own tools. Once the brokers run, the admin creates the SCRAM users
(AlterUserScramCredentials: compose's image formats its storage without them) and the ACLs, which give
each ledger principal what its role needs on the topics and groups of a topic prefix: ``ledger-server``
and ``ledger-worker`` create, read and write them; ``ledger-auditor`` reads them (it can replay,
never append).

Given an OAuth issuer, the listener also takes SASL OAUTHBEARER: the brokers check a token's
signature against the issuer's keys, its issuer, and its audience ``KAFKA_AUDIENCE``; the principal is
the token's subject (a service's client id, with the client credentials grant), granted like the others.

``python -m ledger.kafka.secured_cluster prepare|users`` is what compose's one-shot services run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import threading
import urllib.request
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeAlias

from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.admin import CreateAclsRequest
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import CompactArray, CompactBytes, CompactString, Int8, Int16, Int32, Schema, TaggedFields

from ledger.kafka.security import KafkaClientConfig
from ledger.kafka.tokens import metadata_urls

ADMIN = "admin"
PRINCIPALS = {"server": "ledger-server", "worker": "ledger-worker", "auditor": "ledger-auditor"}
MOUNT = "/security"  # where compose mounts the files; sasl_ssl.env's paths are under it
LOCAL_HOSTS = ("127.0.0.1", "localhost")
SCRAM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192
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
    """The certificates, passwords, JAAS file, broker properties, users, ACLs and client files of a
    secured cluster, kept in ``folder``."""

    def __init__(self, folder: Path, oauth_issuer: str | None = None) -> None:
        self.folder = folder
        self.ca = folder / "ca.crt"
        self.oauth_issuer = oauth_issuer
        self._jwks_uri: str | None = None
        self._passwords: dict[str, str] = {}

    def prepare(self, hosts: Sequence[str] = LOCAL_HOSTS) -> None:
        """Make the CA, the brokers' certificate for ``hosts``, the passwords and the files naming them,
        unless the folder has them."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        passwords = self.folder / "passwords.json"
        if not passwords.exists():
            made = {name: secrets.token_urlsafe(18) for name in (ADMIN, *PRINCIPALS.values())}
            _write_secret(passwords, json.dumps(made, indent=2) + "\n")
        self._passwords = json.loads(passwords.read_text())
        if not (self.folder / "broker.pem").exists():
            self._certificates(hosts)
        admin = self._passwords[ADMIN]
        # The admin is the brokers' one PLAIN user (user_admin); the SCRAM users live in the metadata.
        _write_secret(self.folder / "broker-jaas.conf", "KafkaServer {\n"
                      f"  {_jaas(PLAIN_MODULE, username=ADMIN, password=admin, user_admin=admin)}\n"
                      f"  {_jaas(SCRAM_MODULE)}\n}};\n")
        _write_secret(self.folder / "admin.properties", "# admin: --command-config of Kafka's own tools\n"
                      "security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\n"
                      f"sasl.jaas.config={_jaas(PLAIN_MODULE, username=ADMIN, password=admin)}\n"
                      f"ssl.truststore.type=PEM\nssl.truststore.location={self.ca}\n")
        for role in PRINCIPALS:
            _write_secret(self.client_file(role), self.client_properties(role))
        if self.oauth_issuer is not None:
            self._jwks_uri = jwks_uri(self.oauth_issuer)

    def _certificates(self, hosts: Sequence[str]) -> None:
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
        openssl("req", "-new", "-key", "broker.key", "-subj", f"/CN={hosts[0]}", "-out", "broker.csr")
        (self.folder / "broker.ext").write_text(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={','.join(map(_alt_name, hosts))}\n")
        openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-sha256", "-days", "825", "-extfile", "broker.ext", "-out", "broker.crt")
        # Kafka's PEM keystore: the (unencrypted PKCS#8) key, then the chain.
        _write_secret(self.folder / "broker.pem",
                      "".join((self.folder / name).read_text() for name in ("broker.key", "broker.crt", "ca.crt")))

    def broker_properties(self, settings: Mapping[str, str]) -> dict[str, str]:
        """The brokers' properties: ``settings`` (sasl_ssl.env's, by property) with this folder's paths,
        and OAUTHBEARER's when there is an issuer."""
        return {name: self.here(value) for name, value in settings.items()} | self._oauthbearer_properties()

    def here(self, value: str) -> str:
        """``value`` with compose's ``MOUNT`` paths turned into this folder's."""
        return value.replace(f"{MOUNT}/", f"{self.folder}/")

    def _oauthbearer_properties(self) -> dict[str, str]:
        if self._jwks_uri is None:
            return {}
        return {
            "listener.name.client.sasl.enabled.mechanisms": f"PLAIN,{SCRAM},OAUTHBEARER",
            "listener.name.client.oauthbearer.sasl.jaas.config": _jaas(OAUTHBEARER_MODULE),
            "listener.name.client.oauthbearer.sasl.server.callback.handler.class": OAUTHBEARER_VALIDATOR,
            "sasl.oauthbearer.jwks.endpoint.url": self._jwks_uri,
            "sasl.oauthbearer.expected.issuer": self.oauth_issuer or "",
            "sasl.oauthbearer.expected.audience": KAFKA_AUDIENCE,
        }

    def jvm_options(self, kafka_opts: str) -> list[str]:
        """The brokers' JVM options: ``kafka_opts`` (sasl_ssl.env's KAFKA_OPTS, the JAAS file) with this
        folder's paths, and the one URL Kafka may fetch OAuth keys from."""
        allowed = [f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={self._jwks_uri}"] if self._jwks_uri else []
        return [*self.here(kafka_opts).split(), *allowed]

    def client_file(self, role: str) -> Path:
        return self.folder / f"{role}.properties"

    def client_properties(self, role: str) -> str:
        name = PRINCIPALS[role]
        return (f"# {name}: LEDGER_KAFKA_CONFIG for a ledger {role}\nsecurity.protocol=SASL_SSL\n"
                f"sasl.mechanism={SCRAM}\nsasl.username={name}\nsasl.password={self._passwords[name]}\n"
                f"ssl.ca.location={self.ca}\n")

    def admin_config(self) -> KafkaClientConfig:
        return KafkaClientConfig(protocol="SASL_SSL", mechanism="PLAIN", username=ADMIN,
                                 password=self._passwords[ADMIN], ca_location=str(self.ca))

    def answers(self, bootstrap: str, expect_brokers: int) -> bool:
        """Whether the broker at ``bootstrap`` lets ``admin`` in and lists ``expect_brokers`` brokers."""
        async def listed() -> bool:
            client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3_000,
                                    **self.admin_config().options())
            try:
                await client.bootstrap()
                return len(client.cluster.brokers()) >= expect_brokers
            except Exception:  # not up yet, whatever the reason: the caller waits and asks again
                return False
            finally:
                await client.close()
        return _run(listed())

    def create_users(self, bootstrap: str) -> None:
        """The SCRAM users of ledger's principals, with the passwords of their client files (again: an
        existing user's credential is replaced by the same password)."""
        async def created() -> None:
            async with self._admin(bootstrap) as (client, node):
                upsertions = [(name, SCRAM_SHA_512, SCRAM_ITERATIONS, salt, _salted(password, salt), {})
                              for name, password in self._passwords.items() if name != ADMIN
                              for salt in (secrets.token_bytes(32),)]
                response = await client.send(node, AlterUserScramCredentialsRequest([], upsertions))
                for name, code, message, _ in response.results:
                    if code:
                        raise RuntimeError(f"creating the SCRAM user {name} failed: {message or f'error {code}'}")
        _run(created())

    def grant(self, bootstrap: str, topic_prefix: str, grants: Mapping[str, Grants] = GRANTS,
              principals: Mapping[str, str] = PRINCIPALS) -> None:
        """The ACLs of each ledger principal (by role) on the topics and groups named ``<topic_prefix>.*``
        and on the cluster: ``grants`` maps a role to the operations it may do on each resource, and
        ``principals`` a role to its principal's name."""
        async def created() -> None:
            async with self._admin(bootstrap) as (client, node):
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
        _run(created())

    @asynccontextmanager
    async def _admin(self, bootstrap: str) -> AsyncIterator[tuple[AIOKafkaClient, int]]:
        client = AIOKafkaClient(bootstrap_servers=bootstrap, **self.admin_config().options())
        await client.bootstrap()
        try:
            yield client, client.get_random_node()
        finally:
            await client.close()


SCRAM_SHA_512 = 2  # org.apache.kafka.clients.admin.ScramMechanism


class AlterUserScramCredentialsResponse_v0(Response):
    API_KEY = 51
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("results", CompactArray(("user_name", CompactString("utf-8")), ("error_code", Int16),
                                 ("error_message", CompactString("utf-8")), ("tags", TaggedFields))),
        ("tags", TaggedFields),
    )


class AlterUserScramCredentialsRequest_v0(RequestStruct):
    """KIP-554's request (aiokafka has none): deletions, then upsertions with the salted password."""
    FLEXIBLE_VERSION = True
    API_KEY = 51
    API_VERSION = 0
    RESPONSE_TYPE = AlterUserScramCredentialsResponse_v0
    SCHEMA = Schema(
        ("deletions", CompactArray(("name", CompactString("utf-8")), ("mechanism", Int8), ("tags", TaggedFields))),
        ("upsertions", CompactArray(("name", CompactString("utf-8")), ("mechanism", Int8), ("iterations", Int32),
                                    ("salt", CompactBytes), ("salted_password", CompactBytes),
                                    ("tags", TaggedFields))),
        ("tags", TaggedFields),
    )


AlterUserScramCredentialsStruct: TypeAlias = AlterUserScramCredentialsRequest_v0


class AlterUserScramCredentialsRequest(Request[AlterUserScramCredentialsStruct]):
    API_KEY = 51

    def __init__(self, deletions: list[tuple[Any, ...]], upsertions: list[tuple[Any, ...]]) -> None:
        self._deletions = deletions
        self._upsertions = upsertions

    def build(self, request_struct_class: type[AlterUserScramCredentialsStruct]) -> AlterUserScramCredentialsStruct:
        return request_struct_class(self._deletions, self._upsertions, {})


def _salted(password: str, salt: bytes) -> bytes:
    """SCRAM's SaltedPassword (RFC 5802): what the broker keeps instead of the password."""
    return hashlib.pbkdf2_hmac("sha512", password.encode(), salt, SCRAM_ITERATIONS)


def _alt_name(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"DNS:{host}"
    return f"IP:{host}"


def _write_secret(path: Path, text: str) -> None:
    """``text`` into ``path``, readable by its owner alone from the start."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)


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



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ledger.kafka.secured_cluster",
        description="What compose's one-shot services run for its secured mode (LEDGER_KAFKA_SECURITY=sasl_ssl): "
        "`prepare` before the brokers start makes the files sasl_ssl.env names; `users` once they run creates "
        "the SCRAM users and the ACLs. With --security plaintext both do nothing.")
    parser.add_argument("--security", choices=("plaintext", "sasl_ssl"), default="sasl_ssl",
                        help="the cluster's security (default: %(default)s)")
    parser.add_argument("--dir", type=Path, default=Path(MOUNT), help="the files' folder (default: %(default)s)")
    steps = parser.add_subparsers(dest="step", required=True)
    prepare = steps.add_parser("prepare", help="make the CA, the brokers' certificate, the passwords, the JAAS file "
                               "and the client properties, unless the folder has them")
    prepare.add_argument("--hosts", required=True, help="comma-separated names the brokers are reached at")
    users = steps.add_parser("users", help="create the SCRAM users and the ACLs on the topics of LEDGER_TOPIC_PREFIX")
    users.add_argument("--bootstrap", required=True, help="host:port,... of the brokers")
    options = parser.parse_args(argv)
    if options.security == "plaintext":
        print(f"{parser.prog} {options.step}: a plaintext cluster, nothing to do")
        return 0
    security = ClusterSecurity(options.dir)
    try:
        if options.step == "prepare":
            security.prepare(options.hosts.split(","))
            print(f"{parser.prog} prepare: the CA, certificate and client files are in {options.dir}")
            return 0
        security.prepare()
        prefix = os.environ.get("LEDGER_TOPIC_PREFIX") or "ledger"
        security.create_users(options.bootstrap)
        security.grant(options.bootstrap, prefix)
        print(f"{parser.prog} users: {', '.join(PRINCIPALS.values())} log in with {SCRAM}, with ACLs on {prefix}.*")
        return 0
    except (RuntimeError, OSError, KafkaError) as exc:
        print(f"{parser.prog} {options.step}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
