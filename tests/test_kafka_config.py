"""The Kafka client configuration: a client properties file (LEDGER_KAFKA_CONFIG) and LEDGER_KAFKA_*
variables, read as librdkafka and kcat name the keys, every mistake one sentence and no secret shown."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import jwt
import pytest
from aiokafka.abc import AbstractTokenProvider

from ledger.kafka.security import KafkaClientConfig, KafkaConfigError, client_config, kafka_label
from ledger.kafka.tokens import ClientCredentials, TokenUnavailable
from ledger.settings import Settings
from tests.support.oidc import SERVICE_CLIENT, openid_provider
from tests.support.spawn import LEDGER

SECRET = "s3cret-never-shown"


def test_a_properties_file_and_the_variables_over_it(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a client connects")
    config = tmp_path / "client.properties"
    config.write_text(f"# a managed cluster\nsecurity.protocol=SASL_SSL\nsasl.mechanisms=SCRAM-SHA-512\n"
                      f"sasl.username=svc-one\nsasl.password={SECRET}\n! another comment\n\n"
                      f"ssl.ca.location={ca}\n")
    loaded = KafkaClientConfig.load(str(config), {"LEDGER_KAFKA_SASL_USERNAME": "svc-other"})
    assert (loaded.protocol, loaded.mechanism, loaded.username, loaded.password, loaded.ca_location) == (
        "SASL_SSL", "SCRAM-SHA-512", "svc-other", SECRET, str(ca))
    assert loaded.check_hostname
    assert SECRET not in repr(loaded) and SECRET not in loaded.describe()
    assert loaded.describe() == "SASL_SSL, SCRAM-SHA-512 as svc-other"
    assert kafka_label(Settings(bootstrap="k1:9093", kafka_config=str(config))) == \
        "k1:9093, SASL_SSL, SCRAM-SHA-512 as svc-one"
    assert kafka_label(Settings(bootstrap="k1:9092")) == "k1:9092"


def test_variables_alone_configure_a_client() -> None:
    loaded = KafkaClientConfig.load(None, {"LEDGER_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext",
                                           "LEDGER_KAFKA_SASL_MECHANISM": "PLAIN",
                                           "LEDGER_KAFKA_SASL_USERNAME": "u", "LEDGER_KAFKA_SASL_PASSWORD": SECRET})
    assert loaded.options() == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                                "sasl_plain_username": "u", "sasl_plain_password": SECRET}
    assert KafkaClientConfig.load(None, {}).options() == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize(("lines", "variables", "message"), [
    ("security.protocol=SASL_SSL\nsasl.jaas.config=x\n", {}, "line 2: 'sasl.jaas.config' is not a Kafka client property"),
    ("", {"LEDGER_KAFKA_SASL_USER": "x"}, "LEDGER_KAFKA_SASL_USER (the property sasl.user): 'sasl.user' is not a Kafka client"),
    ("security.protocol=TLS\n", {}, "security.protocol must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ("security.protocol=SASL_SSL\nsasl.mechanism=GSSAPI\nsasl.username=u\nsasl.password=p\n", {},
     "sasl.mechanism must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER, got 'GSSAPI'"),
    ("security.protocol=SASL_SSL\nsasl.mechanism=OAUTHBEARER\nsasl.oauthbearer.client.id=svc\n", {},
     "OAUTHBEARER needs sasl.oauthbearer.token.endpoint.url, sasl.oauthbearer.client.secret (or a "
     "sasl.oauthbearer.token.provider of your own)"),
    (f"security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-256\nsasl.username=u\nsasl.password=p\n"
     f"sasl.oauthbearer.client.secret={SECRET}\n", {}, "sasl.mechanism is SCRAM-SHA-256; set sasl.mechanism=OAUTHBEARER"),
    ("security.protocol=SASL_SSL\nsasl.mechanism=oauthbearer\n", {"LEDGER_KAFKA_SASL_OAUTHBEARER_METHOD": "default"},
     "sasl.oauthbearer.method must be oidc, got 'default'"),
    ("security.protocol=SASL_SSL\nsasl.mechanism=OAUTHBEARER\nsasl.oauthbearer.client.id=svc\n"
     f"sasl.oauthbearer.client.secret={SECRET}\nsasl.oauthbearer.token.endpoint.url=id.example.com/token\n", {},
     "sasl.oauthbearer.token.endpoint.url must be an http(s) URL, got 'id.example.com/token'"),
    ("security.protocol=SASL_SSL\nsasl.username=u\n", {}, "needs sasl.username and sasl.password"),
    (f"sasl.username=u\nsasl.password={SECRET}\n", {}, "security.protocol is PLAINTEXT; use SASL_SSL"),
    ("security.protocol=SSL\nssl.ca.location=/nowhere/ca.pem\n", {}, "ssl.ca.location: no file at /nowhere/ca.pem"),
    ("security.protocol=SSL\nssl.endpoint.identification.algorithm=dns\n", {}, "must be https or none"),
    ("just words\n", {}, "line 1: expected key=value"),
])
def test_every_mistake_is_one_sentence_without_secrets(tmp_path: Path, lines: str, variables: dict[str, str],
                                                       message: str) -> None:
    config = tmp_path / "client.properties"
    config.write_text(lines)
    with pytest.raises(KafkaConfigError) as refused:
        KafkaClientConfig.load(str(config), variables)
    assert message in str(refused.value) and SECRET not in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_settings_file_is_read_once_per_process(tmp_path: Path) -> None:
    config = tmp_path / "client.properties"
    config.write_text("security.protocol=SSL\nssl.endpoint.identification.algorithm=none\n")
    settings = Settings(kafka_config=str(config))
    assert client_config(settings) is client_config(settings)
    assert not client_config(settings).check_hostname


def test_the_cli_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "client.properties"
    config.write_text(f"security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-256\nsasl.username=u\n"
                      f"sasl.password={SECRET}\nsasl.kerberos.service.name=kafka\n")
    done = subprocess.run(LEDGER + ["topics"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "LEDGER_KAFKA_CONFIG": str(config)})
    assert done.returncode == 2, done
    assert done.stderr.count("\n") == 1 and "'sasl.kerberos.service.name' is not a Kafka client property" in \
        done.stderr, done.stderr
    assert SECRET not in done.stderr + done.stdout


def test_help_names_the_properties_and_no_secret() -> None:
    done = subprocess.run(LEDGER + ["--help"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "LEDGER_KAFKA_SASL_PASSWORD": SECRET})
    assert "LEDGER_KAFKA_CONFIG" in done.stdout and "ssl.ca.location" in done.stdout
    assert SECRET not in done.stdout


class StaticToken(AbstractTokenProvider):
    async def token(self) -> str:
        return "a-token"


def test_oauthbearer_takes_a_token_provider_of_ones_own() -> None:
    variables = {"LEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "LEDGER_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
                 "LEDGER_KAFKA_SASL_OAUTHBEARER_TOKEN_PROVIDER": "tests.test_kafka_config:StaticToken"}
    loaded = KafkaClientConfig.load(None, variables)
    assert isinstance(loaded.options()["sasl_oauth_token_provider"], StaticToken)
    assert loaded.describe() == "SASL_PLAINTEXT, OAUTHBEARER from tests.test_kafka_config:StaticToken"
    for spec, said in (("tests.test_kafka_config:nothing", "has no attribute 'nothing'"),
                       ("tests.test_kafka_config:SECRET", "is not an aiokafka AbstractTokenProvider"),
                       ("no-colon", "must be module:attribute")):
        bad = KafkaClientConfig.load(None, {**variables, "LEDGER_KAFKA_SASL_OAUTHBEARER_TOKEN_PROVIDER": spec})
        with pytest.raises(KafkaConfigError, match=said):
            bad.options()


async def test_client_credentials_tokens_are_fetched_once_and_a_refusal_is_one_sentence() -> None:
    with openid_provider(OIDC_DEFAULT_RESOURCE="urn:ledger:kafka") as issuer:
        tokens = ClientCredentials(f"{issuer}/token", *SERVICE_CLIENT)
        token = await tokens.token()
        claims = jwt.decode(token, options={"verify_signature": False})
        assert (claims["sub"], claims["aud"], claims["iss"]) == ("ledger-service", "urn:ledger:kafka", issuer)
        assert await asyncio.gather(*(tokens.token() for _ in range(5))) == [token] * 5  # kept, not fetched again
        wrong = ClientCredentials(f"{issuer}/token", "ledger-service", SECRET)
        with pytest.raises(TokenUnavailable) as refused:
            await wrong.token()
        assert str(refused.value) == (f"the token endpoint {issuer}/token refused the client credentials of "
                                      "ledger-service (invalid_client): check sasl.oauthbearer.client.id and "
                                      "sasl.oauthbearer.client.secret")
        assert SECRET not in repr(wrong)
