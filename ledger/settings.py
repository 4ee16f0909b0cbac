"""Settings, read from ``LEDGER_*`` environment variables; ``ledger --help`` prints this table."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
# The shortest task lifetime ledger gives (a shorter requested ttl gets this one, as the spec lets it).
MIN_TTL_MS = 1_000
WEB_SESSION_S = 8 * 3600  # how long a web page's sign-in lasts (ledger.http.login), and a sign-out is kept


def _setting(default: Any, env: str, doc: str, *, secret: bool = False) -> Any:
    return field(default=default, repr=not secret, metadata={"env": env, "doc": doc})


class SettingsError(ValueError):
    """An environment variable holds a value ledger cannot use."""


@dataclass(frozen=True, slots=True)
class Settings:
    bootstrap: str = _setting(
        DEFAULT_BOOTSTRAP, "LEDGER_BOOTSTRAP", "Kafka bootstrap servers, host:port[,host:port...]."
    )
    topic_prefix: str = _setting("ledger", "LEDGER_TOPIC_PREFIX", "Prefix of every topic name.")
    partitions: int | None = _setting(
        None, "LEDGER_PARTITIONS", "Partitions of the task-events topic (the unit of worker parallelism); default: "
        "3 on Kafka, 8 on the embedded broker. A topic that exists keeps its own."
    )
    replication_factor: int | None = _setting(
        None, "LEDGER_REPLICATION_FACTOR", "Replication factor of created topics; default: the brokers' "
        "default.replication.factor (Kafka), else min(3, brokers). Setting it also lets ledger run on an "
        "existing topic with fewer replicas than min.insync.replicas + 1."
    )
    min_insync_replicas: int | None = _setting(
        None,
        "LEDGER_MIN_INSYNC_REPLICAS",
        "min.insync.replicas of created topics; default: 2 when they get 3 or more replicas, else 1.",
    )
    linger_ms: int = _setting(
        0, "LEDGER_LINGER_MS", "Producer linger: how long appends wait to be batched together (appends made "
        "while a produce is in flight are batched anyway)."
    )
    produce_timeout_ms: int = _setting(
        3_000, "LEDGER_PRODUCE_TIMEOUT_MS", "How long one produce request may go unanswered before the producer "
        "sends it again, to the partition's leader as it then stands (a frozen leader is left after this). "
        "Also how long a broker waits for the in-sync replicas before it answers."
    )
    fetch_max_wait_ms: int = _setting(
        2, "LEDGER_FETCH_MAX_WAIT_MS", "Longest a consumer fetch waits for new events while events flow "
        "(the latency of each hop between server and worker)."
    )
    idle_fetch_wait_ms: int = _setting(
        250, "LEDGER_IDLE_FETCH_WAIT_MS", "Longest a consumer fetch waits on a quiet topic: the wait grows by "
        "25 ms per second without events up to this (bounds idle CPU; the first event after a long quiet "
        "spell may take this long to be read)."
    )
    session_timeout_ms: int = _setting(
        10_000, "LEDGER_SESSION_TIMEOUT_MS", "Group session timeout: how soon a dead worker's partitions move."
    )
    kafka_config: str | None = _setting(
        None, "LEDGER_KAFKA_CONFIG", "File of Kafka client properties (security.protocol, sasl.*, ssl.*: the "
        "keys librdkafka and kcat read, listed below); each key can also be set as LEDGER_KAFKA_<KEY>, which "
        "wins over the file. Unset: plaintext, no authentication."
    )
    client_id: str = _setting("ledger", "LEDGER_CLIENT_ID", "Kafka client id prefix.")
    worker_concurrency: int = _setting(
        64, "LEDGER_WORKER_CONCURRENCY", "Tool runs a worker executes at once (waiting tasks do not count)."
    )
    hot_window_ms: int = _setting(
        10_000,
        "LEDGER_HOT_WINDOW_MS",
        "How long a waiting tool stays in memory for an in-place resume before it is parked (0: park at once).",
    )
    max_hot_tasks: int = _setting(
        1_000, "LEDGER_MAX_HOT_TASKS", "Waiting tools a worker keeps in memory; beyond this they park at once."
    )
    poll_interval_ms: int = _setting(
        500, "LEDGER_POLL_INTERVAL_MS", "pollInterval suggested to clients in task responses."
    )
    append_timeout_ms: int | None = _setting(
        None,
        "LEDGER_APPEND_TIMEOUT_MS",
        "Longest an append waits for the log to confirm it: a request then answers with an error, a worker "
        "retries the run (the change may still be recorded once the brokers take writes again). Default: 5 "
        "produce timeouts (15 s), above a broker failover with Kafka's default settings (about 11 s).",
    )
    read_timeout_ms: int = _setting(
        10_000,
        "LEDGER_READ_TIMEOUT_MS",
        "Longest a server waits for its projection to show an event it just appended (read-your-writes), or "
        "to read the log to its end before it says a task is unknown or sets an answer aside.",
    )
    store: str | None = _setting(
        None,
        "LEDGER_STORE",
        "SQLite file a server keeps its projections in (task rows, history, the offsets they reach), to "
        "resume from after a restart; give each server its own. Unset: a temporary file, deleted when the "
        "server stops. :memory: keeps them in memory (which then grows with the history).",
    )
    database_url: str | None = _setting(
        None,
        "LEDGER_DATABASE_URL",
        "PostgreSQL database (postgresql://user:password@host/db) of the shared projection store that "
        "`ledger replay --database` builds.",
    )
    max_input_bytes: int = _setting(
        65_536, "LEDGER_MAX_INPUT_BYTES", "Largest tool arguments, or answer content, a server accepts (bytes of JSON)."
    )
    tokens_file: str | None = _setting(
        None, "LEDGER_TOKENS_FILE", "File of 'TOKEN PRINCIPAL' lines: bearer tokens a server accepts (development)."
    )
    oauth_issuer: str | None = _setting(
        None, "LEDGER_OAUTH_ISSUER", "OAuth 2.1 authorization server (its issuer URL) whose access tokens a server "
        "accepts: it publishes Protected Resource Metadata naming it and checks JWTs against its keys."
    )
    oauth_audience: str | None = _setting(
        None, "LEDGER_OAUTH_AUDIENCE", "The URL clients reach /mcp at, which tokens must be issued for (their "
        "aud); default http://HOST:PORT/mcp as served, required when serving on a wildcard address."
    )
    oauth_scopes: str = _setting(
        "", "LEDGER_OAUTH_SCOPES", "Space-separated scopes every access token must hold (403 insufficient_scope "
        "otherwise); published as the scopes clients ask for."
    )
    oauth_client_id: str | None = _setting(
        None, "LEDGER_OAUTH_CLIENT_ID", "The server's own (confidential) client id at the issuer: people sign "
        "in to the web page there (its redirect URI: ORIGIN/ui/login/callback), and opaque (non-JWT) access "
        "tokens are introspected (RFC 7662); unset, the page takes pasted tokens and only JWTs are accepted."
    )
    oauth_client_secret: str | None = _setting(
        None, "LEDGER_OAUTH_CLIENT_SECRET", "The secret of LEDGER_OAUTH_CLIENT_ID.", secret=True
    )
    allow_unauthenticated: str = _setting(
        "", "LEDGER_ALLOW_UNAUTHENTICATED", "Set to 1 to serve without tokens on a non-loopback address."
    )
    allowed_hosts: str = _setting(
        "", "LEDGER_ALLOWED_HOSTS", "Comma-separated Host header values a server answers besides loopback "
        "(DNS-rebinding protection), e.g. mcp.example.com,server1:8000."
    )
    auditors: str = _setting(
        "", "LEDGER_AUDITORS", "Comma-separated principals who may read every task on the read side (tools, "
        "resources, /ui); everyone else sees their own."
    )
    cached_rows: int = _setting(
        20_000, "LEDGER_CACHED_ROWS", "Task rows a server keeps in memory; the projection store holds them all."
    )
    round_wait_ms: int = _setting(
        10_000,
        "LEDGER_ROUND_WAIT_MS",
        "How long a tools/call without the tasks extension (2026-07-28) waits for the tool to ask or "
        "finish before it answers input_required, to be retried.",
    )
    settle_ms: int = _setting(
        200,
        "LEDGER_SETTLE_MS",
        "How long a request that moves a task on (2026-07-28 tools/call, an answer) waits for the tool to "
        "ask again or finish before it answers, so that the client's next poll finds that step (0: answer at once).",
    )
    request_state_key: str | None = _setting(
        None,
        "LEDGER_REQUEST_STATE_KEY",
        "Secret (32+ characters) sealing the requestState of multi round-trip requests; give every server "
        "the same one. Unset: a key per process, so a round can only be continued on the server that began it.",
        secret=True,
    )
    request_state_ttl_ms: int = _setting(
        600_000, "LEDGER_REQUEST_STATE_TTL_MS", "How long a multi round-trip requestState stays valid."
    )
    task_ttl_ms: int | None = _setting(
        None, "LEDGER_TASK_TTL_MS", "Lifetime of a task that asks for no ttl of its own, from its creation; one "
        "still not ended then is failed by its partition's worker, with one event saying it expired (its history "
        "stays on the log). Unset: tasks never expire, so a wait of days works."
    )
    idempotency_window_ms: int = _setting(
        86_400_000, "LEDGER_IDEMPOTENCY_WINDOW_MS", "How long a tools/call's _meta \"ledger/idempotency-key\" "
        "names the task it created, from that task's creation: a repeat of the call within it returns that task "
        "instead of starting another (any server, after any restart); after it, the key starts a new task."
    )
    max_connections: int | None = _setting(
        None, "LEDGER_MAX_CONNECTIONS", "Connections a server keeps open at once; past it a request is answered "
        "503 at once (the probes /healthz and /readyz keep 64 more). Default: three quarters of the process's "
        "open-file limit."
    )
    header_timeout_ms: int = _setting(
        10_000, "LEDGER_HEADER_TIMEOUT_MS", "How long a connection may take to send a request's head (request "
        "line and headers), from when it opens or its previous response ended; then it is answered 408 and closed."
    )
    max_header_bytes: int = _setting(
        65_536, "LEDGER_MAX_HEADER_BYTES", "Largest request head (request line and headers) a server reads; a "
        "larger one is answered 431 and the connection closed."
    )
    keep_alive_ms: int = _setting(
        5_000, "LEDGER_KEEP_ALIVE_MS", "How long a server keeps an idle keep-alive connection open for its next "
        "request."
    )
    principal_streams: int = _setting(
        1_000, "LEDGER_PRINCIPAL_STREAMS", "Open streams one principal may hold on one server, of each kind: "
        "2025-11-25 sessions, listen streams, /ui event streams; past it a new one is refused while other "
        "principals' are served as before."
    )
    principal_events_per_s: int = _setting(
        2_000, "LEDGER_PRINCIPAL_EVENTS_PER_S",
        "Events one principal's requests may append per second on one server (bursts of twice that); a request "
        "over it is refused, an audit record over it is counted and dropped.",
    )

    @property
    def append_deadline_ms(self) -> int:
        """How long an append may wait for the log: ``LEDGER_APPEND_TIMEOUT_MS``, else 5 produce timeouts."""
        return self.append_timeout_ms if self.append_timeout_ms is not None else 5 * self.produce_timeout_ms

    @property
    def auditor_names(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.auditors.split(",") if name.strip())

    @property
    def events_topic(self) -> str:
        return f"{self.topic_prefix}.task-events"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic_prefix}.dead-letters"

    @property
    def sign_outs_topic(self) -> str:
        return f"{self.topic_prefix}.sign-outs"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None and raw.strip() != "":
                values[f.name] = _parse(f.metadata["env"], f.type, raw.strip())
        settings = cls(**values)
        settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.bootstrap or any(":" not in part for part in self.bootstrap.split(",")):
            raise SettingsError(f"LEDGER_BOOTSTRAP must be host:port[,host:port...], got {self.bootstrap!r}")
        if self.partitions is not None and self.partitions < 1:
            raise SettingsError(f"LEDGER_PARTITIONS must be at least 1, got {self.partitions}")
        for name in ("replication_factor", "min_insync_replicas"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SettingsError(f"{_env_name(name)} must be at least 1, got {getattr(self, name)}")
        rf, mir = self.replication_factor, self.min_insync_replicas
        if rf is not None and mir is not None and mir > rf:
            raise SettingsError(f"LEDGER_MIN_INSYNC_REPLICAS ({mir}) must not exceed LEDGER_REPLICATION_FACTOR ({rf})")
        if self.idle_fetch_wait_ms < self.fetch_max_wait_ms:
            raise SettingsError(f"LEDGER_IDLE_FETCH_WAIT_MS ({self.idle_fetch_wait_ms}) must not be less than "
                                f"LEDGER_FETCH_MAX_WAIT_MS ({self.fetch_max_wait_ms})")
        if self.request_state_key is not None and len(self.request_state_key) < 32:
            raise SettingsError("LEDGER_REQUEST_STATE_KEY must be at least 32 characters long")
        if self.task_ttl_ms is not None and self.task_ttl_ms < MIN_TTL_MS:
            raise SettingsError(f"LEDGER_TASK_TTL_MS must be at least {MIN_TTL_MS} (ms), got {self.task_ttl_ms}")
        if self.append_timeout_ms is not None and self.append_timeout_ms < 1:
            raise SettingsError(f"LEDGER_APPEND_TIMEOUT_MS must be at least 1, got {self.append_timeout_ms}")
        if self.oauth_issuer is not None:
            if self.tokens_file is not None:
                raise SettingsError("LEDGER_OAUTH_ISSUER and LEDGER_TOKENS_FILE are two ways to authenticate: set one")
            for env, url in (("LEDGER_OAUTH_ISSUER", self.oauth_issuer), ("LEDGER_OAUTH_AUDIENCE", self.oauth_audience)):
                if url is not None and not url.startswith(("https://", "http://")):
                    raise SettingsError(f"{env} must be an http(s) URL, got {url!r}")
        if "offline_access" in self.oauth_scopes.split():
            raise SettingsError("LEDGER_OAUTH_SCOPES must not hold offline_access: refresh tokens are the client's "
                                "business, not something a token needs to reach this server")
        if (self.oauth_client_id is None) != (self.oauth_client_secret is None):
            raise SettingsError("LEDGER_OAUTH_CLIENT_ID and LEDGER_OAUTH_CLIENT_SECRET go together: set both or neither")
        if self.max_connections is not None and self.max_connections < 1:
            raise SettingsError(f"LEDGER_MAX_CONNECTIONS must be at least 1, got {self.max_connections}")
        for name in ("worker_concurrency", "produce_timeout_ms", "read_timeout_ms", "request_state_ttl_ms",
                     "max_input_bytes", "cached_rows", "principal_events_per_s", "header_timeout_ms",
                     "max_header_bytes", "keep_alive_ms", "principal_streams", "idempotency_window_ms"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{_env_name(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("linger_ms", "fetch_max_wait_ms", "idle_fetch_wait_ms", "hot_window_ms", "max_hot_tasks",
                     "poll_interval_ms", "round_wait_ms", "settle_ms"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{_env_name(name)} must not be negative, got {getattr(self, name)}")


def _env_name(name: str) -> str:
    return next(f.metadata["env"] for f in fields(Settings) if f.name == name)


def _parse(env: str, annotation: str, raw: str) -> Any:
    if annotation.startswith("int"):
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{env} must be a whole number, got {raw!r}") from None
    return raw


def describe() -> str:
    """The settings as a table for ``--help``."""
    rows = []
    for f in fields(Settings):
        default = "(see text)" if f.default is None else str(f.default)
        rows.append(f"  {f.metadata['env']:<28} {f.metadata['doc']} [default: {default}]")
    return "settings (environment variables):\n" + "\n".join(rows)
