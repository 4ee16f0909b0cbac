"""The secured local cluster as a user starts it, for the tests of ledger on a secured Kafka."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ledger.kafka.cluster import LocalCluster
from ledger.kafka.secured_cluster import KAFKA_AUDIENCE
from tests.support.oidc import SERVICE_CLIENT, openid_provider
from tests.support.spawn import LEDGER, drain, wait_for_line


@dataclass
class SecuredCluster:
    cluster: LocalCluster  # on the command's folder: its bootstrap, CA, client files and admin
    issuer: str  # the OpenID provider whose OAUTHBEARER tokens its brokers take
    said: list[str]  # what the command printed until it ran
    prefix: str  # the command's LEDGER_TOPIC_PREFIX: the topics its --oauth-principal grant is on


@contextmanager
def secured_cluster_command(folder: Path) -> Iterator[SecuredCluster]:
    """3 brokers with SASL_SSL, ACLs and the OAUTHBEARER tokens of a real OpenID provider, started by
    ``ledger cluster --security sasl_ssl --oauth-issuer URL --oauth-principal server=ledger-service``
    in ``folder``; Ctrl-C stops them at the end."""
    prefix = f"cli-{uuid.uuid4().hex[:8]}"
    with openid_provider(OIDC_DEFAULT_RESOURCE=KAFKA_AUDIENCE) as issuer:
        command = subprocess.Popen(
            [*LEDGER, "cluster", "--security", "sasl_ssl", "--dir", str(folder), "--oauth-issuer", issuer,
             "--oauth-principal", f"server={SERVICE_CLIENT[0]}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env={**os.environ, "LEDGER_TOPIC_PREFIX": prefix})
        try:
            said = wait_for_line(command, "running; press Ctrl-C", timeout=180)
            drain(command)
            yield SecuredCluster(LocalCluster(folder, brokers=3, security="sasl_ssl", oauth_issuer=issuer), issuer,
                                 said, prefix)
        finally:
            command.send_signal(signal.SIGINT)
            command.wait(60)
