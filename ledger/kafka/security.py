"""How ledger's Kafka clients connect: plaintext by default; TLS and SASL as the Kafka ecosystem
configures a client, from a client properties file (``LEDGER_KAFKA_CONFIG``, librdkafka and kcat
property names) and the same keys as ``LEDGER_KAFKA_*`` environment variables (``sasl.username`` is
``LEDGER_KAFKA_SASL_USERNAME``), a variable winning over the file.

Every client ledger makes takes its options from ``connection(settings)``. Secrets (passwords) are
kept out of ``repr`` and every message.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from aiokafka.abc import AbstractTokenProvider
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
)

from ledger.kafka.tokens import ClientCredentials, ProviderError, load_provider
from ledger.settings import Settings

ENV_PREFIX = "LEDGER_KAFKA_"
CONFIG_ENV = "LEDGER_KAFKA_CONFIG"
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
# Each property ledger reads, with what it means (for --help and for the message naming an unknown one).
PROPERTIES = {
    "security.protocol": "PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL",
    "sasl.mechanism": "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER (librdkafka also spells it "
                      "sasl.mechanisms)",
    "sasl.username": "the SASL user (PLAIN, SCRAM)",
    "sasl.password": "the SASL user's password (never printed)",
    "sasl.oauthbearer.method": "oidc (the default with OAUTHBEARER): tokens by the client credentials grant, "
                               "from the next three keys",
    "sasl.oauthbearer.token.endpoint.url": "the authorization server's token endpoint",
    "sasl.oauthbearer.client.id": "this client's id there (the brokers' principal is the token's subject)",
    "sasl.oauthbearer.client.secret": "its secret (never printed)",
    "sasl.oauthbearer.scope": "scopes to ask for (optional)",
    "sasl.oauthbearer.token.provider": "ledger's own: module:attribute of an aiokafka AbstractTokenProvider (or of "
                                       "what makes one) that gets the tokens instead",
    "ssl.ca.location": "PEM file of the CA certificates to trust (default: the system's)",
    "ssl.certificate.location": "PEM file of this client's certificate, for mutual TLS",
    "ssl.key.location": "PEM file of this client's private key, for mutual TLS",
    "ssl.key.password": "password of ssl.key.location's key, when it is encrypted (never printed)",
    "ssl.endpoint.identification.algorithm": "https (default: the broker's certificate must name its host) "
                                             "or none",
}
ALIASES = {"sasl.mechanisms": "sasl.mechanism"}
SECRETS = frozenset({"sasl.password", "ssl.key.password", "sasl.oauthbearer.client.secret"})


class KafkaConfigError(ValueError):
    """The Kafka client configuration cannot be used; the message says which key and why, without secrets."""


class KafkaSecurityError(ConnectionError):
    """The broker answers but refuses this client: TLS, SASL authentication, or an ACL."""


# What a broker answers a request its ACLs refuse.
AUTHORIZATION_ERRORS = (TopicAuthorizationFailedError, GroupAuthorizationFailedError, ClusterAuthorizationFailedError)


@dataclass(frozen=True, slots=True)
class KafkaClientConfig:
    """The security options of every Kafka client of a process."""

    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_location: str | None = None
    certificate_location: str | None = None
    key_location: str | None = None
    key_password: str | None = field(default=None, repr=False)
    check_hostname: bool = True
    token_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    scope: str | None = None
    token_provider: str | None = None

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def uses_tokens(self) -> bool:
        return self.uses_sasl and self.mechanism == "OAUTHBEARER"

    @property
    def principal(self) -> str | None:
        """The name this client logs in with (its tokens' client id with OAUTHBEARER); None for a token
        provider of the user's, whose tokens name whoever it says."""
        return self.client_id if self.uses_tokens else self.username

    def login(self) -> str:
        """Whose login it is, in words: ``of NAME``, or ``from`` the token provider."""
        return f"from {self.token_provider}" if self.token_provider else f"of {self.principal}"

    def describe(self) -> str:
        """One line for a banner or a log: the protocol, mechanism and user, never a secret."""
        if not self.uses_sasl:
            return self.protocol
        if self.token_provider:
            return f"{self.protocol}, {self.mechanism} from {self.token_provider}"
        return f"{self.protocol}, {self.mechanism} as {self.principal}"

    @classmethod
    def load(cls, path: str | None, environ: Mapping[str, str]) -> KafkaClientConfig:
        """The file at ``path`` (if any), then the ``LEDGER_KAFKA_*`` variables of ``environ`` over it."""
        properties: dict[str, str] = {}
        if path:
            properties.update(read_properties(Path(path)))
        for name, value in environ.items():
            if name.startswith(ENV_PREFIX) and name != CONFIG_ENV and value.strip():
                key = name[len(ENV_PREFIX):].lower().replace("_", ".")
                properties[_known_key(key, f"{name} (the property {key})")] = value.strip()
        return cls.from_properties(properties)

    @classmethod
    def from_properties(cls, properties: Mapping[str, str]) -> KafkaClientConfig:
        protocol = properties.get("security.protocol", "PLAINTEXT").upper()
        if protocol not in PROTOCOLS:
            raise KafkaConfigError(f"security.protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        config = cls(
            protocol=protocol,
            mechanism=_upper(properties.get("sasl.mechanism", "PLAIN" if protocol.startswith("SASL_") else None)),
            username=properties.get("sasl.username"),
            password=properties.get("sasl.password"),
            ca_location=properties.get("ssl.ca.location"),
            certificate_location=properties.get("ssl.certificate.location"),
            key_location=properties.get("ssl.key.location"),
            key_password=properties.get("ssl.key.password"),
            check_hostname=_hostname_check(properties.get("ssl.endpoint.identification.algorithm", "https")),
            token_url=properties.get("sasl.oauthbearer.token.endpoint.url"),
            client_id=properties.get("sasl.oauthbearer.client.id"),
            client_secret=properties.get("sasl.oauthbearer.client.secret"),
            scope=properties.get("sasl.oauthbearer.scope"),
            token_provider=properties.get("sasl.oauthbearer.token.provider"),
        )
        method = properties.get("sasl.oauthbearer.method", "oidc").lower()
        if method != "oidc":
            raise KafkaConfigError(f"sasl.oauthbearer.method must be oidc, got {method!r} (for tokens of your own, "
                                   "name a provider in sasl.oauthbearer.token.provider)")
        config.validate()
        return config

    def validate(self) -> None:
        oauth = {"sasl.oauthbearer.token.endpoint.url": self.token_url, "sasl.oauthbearer.client.id": self.client_id,
                 "sasl.oauthbearer.client.secret": self.client_secret}
        if self.uses_tokens:
            missing = [key for key, value in oauth.items() if not value]
            if not self.token_provider and missing:
                raise KafkaConfigError(f"sasl.mechanism OAUTHBEARER needs {', '.join(missing)} (or a "
                                       "sasl.oauthbearer.token.provider of your own)")
            if self.token_url and not self.token_url.startswith(("https://", "http://")):
                raise KafkaConfigError(f"sasl.oauthbearer.token.endpoint.url must be an http(s) URL, "
                                       f"got {self.token_url!r}")
        elif any(oauth.values()) or self.token_provider:
            raise KafkaConfigError(f"sasl.oauthbearer.* properties are given but sasl.mechanism is {self.mechanism}; "
                                   "set sasl.mechanism=OAUTHBEARER")
        if self.uses_sasl:
            if self.mechanism is None or self.mechanism not in MECHANISMS:
                raise KafkaConfigError(f"sasl.mechanism must be one of {', '.join(MECHANISMS)}, "
                                       f"got {self.mechanism!r}")
            if not self.uses_tokens and (not self.username or self.password is None):
                raise KafkaConfigError(f"security.protocol {self.protocol} needs sasl.username and sasl.password")
        elif self.mechanism is not None or self.username is not None:
            raise KafkaConfigError(f"sasl.* properties are given but security.protocol is {self.protocol}; "
                                   "use SASL_SSL (or SASL_PLAINTEXT)")
        tls_files = {"ssl.ca.location": self.ca_location, "ssl.certificate.location": self.certificate_location,
                     "ssl.key.location": self.key_location}
        given = [key for key, value in tls_files.items() if value]
        if given and not self.uses_tls:
            raise KafkaConfigError(f"{given[0]} is given but security.protocol is {self.protocol}; "
                                   "use SSL (or SASL_SSL)")
        for key in given:
            if not Path(tls_files[key]).is_file():
                raise KafkaConfigError(f"{key}: no file at {tls_files[key]}")
        if bool(self.certificate_location) != bool(self.key_location):
            raise KafkaConfigError("mutual TLS needs both ssl.certificate.location and ssl.key.location")

    def options(self) -> dict[str, Any]:
        """The keyword arguments of aiokafka's clients that make this connection."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_tls:
            options["ssl_context"] = ssl_context(self)
        if self.uses_tokens:
            options.update(sasl_mechanism="OAUTHBEARER", sasl_oauth_token_provider=token_provider(self))
        elif self.uses_sasl:
            options.update(sasl_mechanism=self.mechanism, sasl_plain_username=self.username,
                           sasl_plain_password=self.password)
        return options


def client_config(settings: Settings) -> KafkaClientConfig:
    """The configuration of ``settings`` (its ``kafka_config`` file) and of this process's variables,
    read once."""
    variables = tuple(sorted((name, value) for name, value in os.environ.items() if name.startswith(ENV_PREFIX)))
    return _loaded(settings.kafka_config, variables)


@lru_cache(maxsize=8)
def _loaded(path: str | None, variables: tuple[tuple[str, str], ...]) -> KafkaClientConfig:
    return KafkaClientConfig.load(path, dict(variables))


@lru_cache(maxsize=8)
def ssl_context(config: KafkaClientConfig) -> ssl.SSLContext:
    """The TLS context of ``config``, made once (loading certificates is slow) and shared by its clients."""
    try:
        context = ssl.create_default_context(cafile=config.ca_location)
        if config.certificate_location:
            context.load_cert_chain(config.certificate_location, config.key_location, config.key_password)
    except ssl.SSLError as exc:
        raise KafkaConfigError(f"cannot use the TLS files given (ssl.ca.location, ssl.certificate.location, "
                               f"ssl.key.location): {exc.reason or exc}") from None
    context.check_hostname = config.check_hostname
    return context


@lru_cache(maxsize=8)
def token_provider(config: KafkaClientConfig) -> AbstractTokenProvider:
    """The OAUTHBEARER token provider of ``config``, one per process: its clients share its tokens."""
    if config.token_provider:
        try:
            return load_provider(config.token_provider)
        except ProviderError as exc:
            raise KafkaConfigError(str(exc)) from None
    return ClientCredentials(config.token_url, config.client_id, config.client_secret, config.scope)


def kafka_label(settings: Settings) -> str:
    """The brokers and how this process connects to them, for a banner (never a secret)."""
    config = client_config(settings)
    return settings.bootstrap if config.protocol == "PLAINTEXT" else f"{settings.bootstrap}, {config.describe()}"


def connection(settings: Settings) -> dict[str, Any]:
    """``bootstrap_servers`` and the security options for an aiokafka client of ``settings``."""
    return {"bootstrap_servers": settings.bootstrap, **client_config(settings).options()}


def not_allowed(settings: Settings, action: str) -> KafkaSecurityError:
    """The error saying the brokers' ACLs refuse ``action`` to this client's principal."""
    config = client_config(settings)
    who = ("this Kafka client" if not config.uses_sasl else f"the Kafka principal {config.principal}"
           if config.principal else f"the Kafka principal of the tokens from {config.token_provider}")
    return KafkaSecurityError(f"{who} may not {action}: the brokers' ACLs refuse it (docs/operations.md, "
                              "\"Connect to a managed Kafka\", lists what each role needs)")


def read_properties(path: Path) -> dict[str, str]:
    """``key=value`` lines (``#`` and ``!`` comments, blank lines skipped), every key one ledger reads."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise KafkaConfigError(f"{CONFIG_ENV}: cannot read {path}: {exc.strerror or exc}") from None
    properties = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        key, separator, value = line.partition("=")
        if not separator:
            raise KafkaConfigError(f"{path} line {number}: expected key=value")
        properties[_known_key(key.strip(), f"{path} line {number}")] = value.strip()
    return properties


def _known_key(key: str, where: str) -> str:
    key = ALIASES.get(key, key)
    if key not in PROPERTIES:
        raise KafkaConfigError(f"{where}: {key!r} is not a Kafka client property ledger reads; it reads "
                               f"{', '.join(PROPERTIES)}")
    return key


def _upper(mechanism: str | None) -> str | None:
    return mechanism.upper() if mechanism is not None else None


def _hostname_check(algorithm: str) -> bool:
    algorithm = algorithm.strip().lower()
    if algorithm not in ("https", "none", ""):
        raise KafkaConfigError(f"ssl.endpoint.identification.algorithm must be https or none, got {algorithm!r}")
    return algorithm == "https"


def describe_properties() -> str:
    """The properties, for ``--help``."""
    rows = [f"  {key:<40} {meaning}" for key, meaning in PROPERTIES.items()]
    return (f"Kafka client security ({CONFIG_ENV}=file of key=value lines, or each key as {ENV_PREFIX}<KEY> "
            "with . as _, e.g. LEDGER_KAFKA_SASL_USERNAME):\n" + "\n".join(rows))
