"""The load side of bench/flow.py: one run of the peer's load generator, as a JSON line.

Runs under the peer's venv (it imports the peer's loadgen.py, which needs aiohttp and httpx;
the ledger venv has neither), so every path is driven by the same code and HTTP library:

    PEER_PY bench/flow_load.py --path tasks --expect peer   --url URL -n 2000 -c 16
    PEER_PY bench/flow_load.py --path tasks --expect ledger --url URL -n 2000 -c 16
    PEER_PY bench/flow_load.py --path meta                  --url URL -n 2000 -c 16

* ``tasks``: ``loadgen.run_flow`` unchanged (2026-07-28 tasks extension). With ``--expect
  ledger`` the only change is the expected question text, which in examples/demo.py is
  ``Approve expense of {amount} for {description!r}?`` rather than the peer's
  ``Approve expense of {amount}: {description}?``; method, schema and result text are
  checked exactly as loadgen checks them.
* ``push``: the tasks path with nothing polled: after ``tools/call``, a ``subscriptions/listen`` on
  the task brings its question and then its result as ``notifications/tasks`` (2026-07-28).
* ``relay``: 2025-11-25 with nothing polled: task-augmented ``tools/call``, then ``tasks/result``,
  whose stream brings the question as ``elicitation/create``; the answer is the response to it.
* ``meta``: the same flow on ledger's 2025-11-25 ``_meta`` pattern: task-augmented
  ``tools/call``, ``tasks/get`` until ``_meta[pending-elicitations]`` shows the question, the
  answer as ``tasks/get _meta[elicitation-response]``, ``tasks/get`` until completed, then
  ``tasks/result`` for the result text. Polling is loadgen's own ``McpHttp.poll_until``.

``--park FILE`` and ``--answer FILE`` run loadgen's ``run_park`` and ``run_answer`` instead (bench/park.py).
``--trace FILE`` appends a line to FILE when each request is sent and when its answer is read, in the
format of ledger's hop trace (ledger/hops.py), so that bench/flow.py can lay the server's and worker's
hops out inside each request.
Prints one JSON object: loadgen's summary plus ``client_cpu_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time

PEER_DIR = os.environ.get("PEER_DIR", os.path.join(os.path.dirname(os.path.realpath(__file__)), "peer"))  # bench/peer
sys.path.insert(0, PEER_DIR)
import loadgen  # noqa: E402  (the peer's load generator, from PEER_DIR)

PENDING = "io.modelcontextprotocol/pending-elicitations"
RESPONSE = "io.modelcontextprotocol/elicitation-response"
LEGACY_VERSION = "2025-11-25"


def ledger_message(amount: float, description: str) -> str:
    return f"Approve expense of {amount} for {description!r}?"


def check_ir_ledger(cur: dict, amount: float, description: str) -> str:
    """loadgen.check_ir with examples/demo.py's question text; everything else checked alike."""
    reqs = cur.get("inputRequests") or {}
    if len(reqs) != 1:
        raise loadgen.ProtocolError(f"expected 1 input request, got {reqs}")
    key, req = next(iter(reqs.items()))
    p = req.get("params", {})
    if req.get("method") != "elicitation/create" or p.get("message") != ledger_message(amount, description) \
            or p.get("requestedSchema") != loadgen.EXPECTED_SCHEMA:
        raise loadgen.ProtocolError(f"unexpected input request {req}")
    return key


def check_pending(cur: dict, amount: float, description: str) -> str:
    """The 2025-11-25 ``_meta`` form of the same check; returns the elicitationId."""
    pending = (cur.get("_meta") or {}).get(PENDING) or []
    if len(pending) != 1:
        raise loadgen.ProtocolError(f"expected 1 pending elicitation, got {pending}")
    p = pending[0]
    if p.get("mode") != "form" or p.get("message") != ledger_message(amount, description) \
            or p.get("requestedSchema") != loadgen.EXPECTED_SCHEMA:
        raise loadgen.ProtocolError(f"unexpected pending elicitation {p}")
    return p["elicitationId"]


class LegacyHttp(loadgen.McpHttp):
    """loadgen's HTTP client speaking 2025-11-25: one initialized session, no routing headers."""

    session_id: str | None = None
    capabilities: dict = {}

    async def start(self) -> None:
        self._open()
        body = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": LEGACY_VERSION, "capabilities": self.capabilities,
            "clientInfo": {"name": "flow-meta-loader", "version": "0.1"}}}
        async with self.client.post(self.url, json=body, headers=self._headers()) as r:
            self.session_id = r.headers["mcp-session-id"]
            await r.read()
        await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"}, self._headers())

    def _headers(self) -> dict:
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        if self.session_id:
            headers.update({"mcp-session-id": self.session_id, "mcp-protocol-version": LEGACY_VERSION})
        return headers

    async def rpc(self, method: str, params: dict, name: str | None = None) -> dict:
        self._id += 1
        request_id = self._id
        status, ctype, text = await self._post(
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}, self._headers())
        if status != 200:
            raise loadgen.ProtocolError(f"{method}: HTTP {status} {text[:200]}")
        if ctype.startswith("text/event-stream"):
            msgs = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and line[5:].strip()]
            msg = next((m for m in msgs if m.get("id") == request_id), None)
        else:
            msg = json.loads(text)
        if msg is None or "error" in msg:
            raise loadgen.ProtocolError(f"{method}: {msg and msg.get('error')}")
        return msg["result"]

    async def get(self, task_id: str, meta: dict | None = None) -> dict:
        params = {"taskId": task_id, **({"_meta": meta} if meta else {})}
        task = await self.rpc("tasks/get", params)
        # poll_until caps its backoff at pollIntervalMs; 2025-11-25 names it pollInterval (ms).
        return {**task, "pollIntervalMs": task.get("pollInterval")}


def record(st, times: tuple[float, ...], polls: int) -> None:
    """One completed flow's legs, as loadgen.one_flow records them: created, asked, answered, done."""
    t0, t1, t2, t3, t4 = times
    st.create.append(t1 - t0)
    st.to_ir.append(t2 - t1)
    st.answer_to_done.append(t4 - t3)
    st.polls.append(polls)
    st.ok += 1


async def create_legacy(m, i: int) -> tuple[float, str, dict, float, float]:
    """Flow ``i``'s task-augmented tools/call on 2025-11-25: amount, description, the CreateTaskResult,
    and when the call was sent and answered."""
    amount = float(100 + i % 900) + 0.5
    desc = f"expense {i}"
    t0 = time.perf_counter()
    created = await m.rpc("tools/call", {"name": "approve_expense", "task": {},
                                         "arguments": {"amount": amount, "description": desc}})
    t1 = time.perf_counter()
    if "task" not in created:
        raise loadgen.ProtocolError(f"tools/call did not create a task: {created}")
    return amount, desc, created, t0, t1


async def meta_flow(m, i: int, st, deadline: float) -> None:
    """loadgen.one_flow, step for step, on the 2025-11-25 ``_meta`` pattern."""
    amount, desc, created, t0, t1 = await create_legacy(m, i)
    task_id = created["task"]["taskId"]
    st.advertised_poll_ms.add(created["task"].get("pollInterval"))
    cur, n1 = await m.poll_until(task_id, {"input_required"}, deadline)
    t2 = time.perf_counter()
    elicitation_id = check_pending(cur, amount, desc)
    t3 = time.perf_counter()
    cur = await m.get(task_id, {RESPONSE: {"elicitationId": elicitation_id, **loadgen.ANSWER}})
    n2 = 0
    if cur.get("status") != "completed":
        cur, n2 = await m.poll_until(task_id, {"completed"}, deadline)
    t4 = time.perf_counter()
    loadgen.check_done({"result": await m.rpc("tasks/result", {"taskId": task_id})}, amount)
    record(st, (t0, t1, t2, t3, t4), polls=n1 + n2)


async def stream(m, headers: dict, body: dict):
    """The messages of one request answered as an event stream, as they arrive (loadgen's aiohttp client)."""
    async with m.client.post(m.url, data=json.dumps(body), headers=headers) as response:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            yield json.loads(await response.text())
            return
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data:") and line[5:].strip():
                yield json.loads(line[5:])


async def push_flow(m, i: int, st, deadline: float) -> None:
    """loadgen.one_flow with the status pushed (2026-07-28 ``subscriptions/listen``): no tasks/get."""
    amount = float(100 + i % 900) + 0.5
    desc = f"expense {i}"
    t0 = time.perf_counter()
    created = await m.create(amount, desc)
    t1 = time.perf_counter()
    task_id = created["taskId"]
    m._id += 1
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
               "mcp-protocol-version": loadgen.PROTO, "mcp-method": "subscriptions/listen"}
    body = {"jsonrpc": "2.0", "id": m._id, "method": "subscriptions/listen",
            "params": {"notifications": {"taskIds": [task_id]}, "_meta": loadgen.META}}
    t2 = t3 = t4 = None
    async with asyncio.timeout(deadline - time.monotonic()):  # loadgen's deadline, for a stream that stalls
        async for message in stream(m, headers, body):
            if "error" in message:
                raise loadgen.ProtocolError(f"subscriptions/listen: {message['error']}")
            task = message.get("params") if message.get("method") == "notifications/tasks" else None
            if task is None:
                continue
            if task["status"] == "input_required" and t2 is None:
                t2 = time.perf_counter()
                key = loadgen.check_ir(task, amount, desc)
                t3 = time.perf_counter()
                await m.update(task_id, {key: loadgen.ANSWER})
            elif task["status"] == "completed":
                t4 = time.perf_counter()
                loadgen.check_done(task, amount)
                break
    if t2 is None or t4 is None:
        raise loadgen.ProtocolError(f"task {task_id}: the stream ended before the task did")
    record(st, (t0, t1, t2, t3, t4), polls=0)


async def relay_flow(m, i: int, st, deadline: float) -> None:
    """The 2025-11-25 relay: task-augmented tools/call, then ``tasks/result``, on whose stream the question
    arrives as ``elicitation/create``; the answer is the client's response to it. No tasks/get."""
    amount, desc, created, t0, t1 = await create_legacy(m, i)
    task_id = created["task"]["taskId"]
    m._id += 1
    body = {"jsonrpc": "2.0", "id": m._id, "method": "tasks/result", "params": {"taskId": task_id}}
    t2 = t3 = t4 = None
    async with asyncio.timeout(deadline - time.monotonic()):
        async for message in stream(m, m._headers(), body):
            if message.get("method") == "elicitation/create":
                t2 = time.perf_counter()
                if message["params"].get("message") != ledger_message(amount, desc):
                    raise loadgen.ProtocolError(f"unexpected question {message['params']}")
                t3 = time.perf_counter()
                await m._post({"jsonrpc": "2.0", "id": message["id"], "result": loadgen.ANSWER}, m._headers())
            elif message.get("id") == body["id"]:
                if "error" in message:
                    raise loadgen.ProtocolError(f"tasks/result: {message['error']}")
                t4 = time.perf_counter()
                loadgen.check_done({"result": message["result"]}, amount)
    if t2 is None or t4 is None:
        raise loadgen.ProtocolError(f"task {task_id}: tasks/result ended without the question or the result")
    record(st, (t0, t1, t2, t3, t4), polls=0)


async def run_legacy(url: str, n: int, conc: int, poll: str, max_s: float, flow=meta_flow) -> dict:
    """loadgen.run_flow on a 2025-11-25 session: same workers, same summary."""
    m = LegacyHttp(url, 2 * conc, poll)  # a relay holds tasks/result open while it answers
    if flow is relay_flow:
        m.capabilities = {"elicitation": {"form": {}}}
    await m.start()
    return await run_flows(m, flow, n, conc, poll, max_s)


async def run_push(url: str, n: int, conc: int, poll: str, max_s: float) -> dict:
    return await run_flows(loadgen.McpHttp(url, 2 * conc, poll), push_flow, n, conc, poll, max_s)


async def run_flows(m, flow, n: int, conc: int, poll: str, max_s: float) -> dict:
    st = loadgen.Stats()
    deadline = time.monotonic() + max_s
    q = iter(range(n))

    async def worker():
        for i in q:
            if time.monotonic() > deadline:
                return
            try:
                await flow(m, i, st, deadline)
            except Exception as e:  # noqa: BLE001 - counted and reported, as in loadgen
                st.err(e)

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    wall = time.perf_counter() - t
    await m.close()
    return {
        "n": n, "concurrency": conc, "poll": poll, "ok": st.ok, "errors": st.errors,
        "error_samples": st.error_samples, "wall_s": round(wall, 3),
        "throughput_tps": round(st.ok / wall, 2),
        "create_ms": loadgen.summarize(st.create), "to_input_required_ms": loadgen.summarize(st.to_ir),
        "answer_to_completed_ms": loadgen.summarize(st.answer_to_done),
        "mean_polls_per_task": round(statistics.mean(st.polls), 2) if st.polls else None,
        "advertised_poll_ms": sorted(x for x in st.advertised_poll_ms if x is not None),
    }


def trace_requests(path: str) -> None:
    """Mark every request of loadgen's client in ``path`` (the hop trace's format) as it is sent and answered."""
    fd, pid, rpc = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644), os.getpid(), loadgen.McpHttp.rpc

    def mark(hop: str) -> None:
        os.write(fd, f"{time.monotonic_ns()} {pid} {hop} -\n".encode())

    async def traced(self, method: str, params: dict, name: str | None = None) -> dict:
        mark(f"client.sent:{method}")
        try:
            return await rpc(self, method, params, name)
        finally:
            mark(f"client.received:{method}")

    loadgen.McpHttp.rpc = traced


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", choices=["tasks", "meta", "push", "relay"], required=True)
    ap.add_argument("--expect", choices=["peer", "ledger"], default="ledger",
                    help="whose question text to expect on the tasks path")
    ap.add_argument("--url", required=True)
    ap.add_argument("-n", type=int, required=True)
    ap.add_argument("-c", type=int, required=True)
    ap.add_argument("--max-s", type=float, default=900)
    ap.add_argument("--park", metavar="FILE", help="tasks path: loadgen.run_park, create -n tasks and leave them "
                    "input_required, their ids written to FILE")
    ap.add_argument("--answer", metavar="FILE", help="tasks path: loadgen.run_answer, answer the tasks FILE holds")
    ap.add_argument("--trace", metavar="FILE", help="mark each request's sending and answer in FILE (ledger's hop "
                    "trace format)")
    a = ap.parse_args()
    if a.trace:
        trace_requests(a.trace)
    if a.path == "tasks" and a.expect == "ledger":
        loadgen.check_ir = check_ir_ledger
    cpu0 = cpu_seconds()
    if a.park:
        res = asyncio.run(loadgen.run_park(a.url, a.n, a.c, "fastmcp", a.max_s, a.park))
    elif a.answer:
        res = asyncio.run(loadgen.run_answer(a.url, a.answer, a.c, "fastmcp", a.max_s))
    else:
        runs = {"tasks": loadgen.run_flow, "meta": run_legacy, "push": run_push,
                "relay": lambda *args: run_legacy(*args, flow=relay_flow)}
        res = asyncio.run(runs[a.path](a.url, a.n, a.c, "fastmcp", a.max_s))
    res["client_cpu_s"] = round(cpu_seconds() - cpu0, 2)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
