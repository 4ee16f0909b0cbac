"""A principal's write budget: requests over it are refused with a clear error and write nothing; audit
records over it are dropped; other principals are not affected."""

from __future__ import annotations

import time

import pytest

from ledger.contract.events import RequestRejected, TaskCreated
from ledger.service.budget import OverBudget, WriteBudget
from ledger.settings import Settings
from tests.support.engine import all_events
from tests.support.raw_http import ModernClient
from tests.support.stack import in_status

APPROVE = {"name": "approve_expense", "arguments": {"amount": 1, "description": "pens"}}


def test_a_bucket_refills_at_its_rate_and_holds_its_burst() -> None:
    budget = WriteBudget(per_second=10, burst=5)
    for _ in range(5):
        budget.charge("alice", 1)
    with pytest.raises(OverBudget, match="alice may write 10 events per second") as refused:
        budget.charge("alice", 1)
    assert 0 < refused.value.retry_after_ms <= 100
    assert budget.allows("bob", 5) and not budget.allows("bob", 1)
    time.sleep(0.25)  # time passing is what is tested: 0.25 s refills 2.5 events
    assert budget.allows("alice", 2)


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, float]:
    return {"principal_events_per_s": 5}


async def test_a_flood_is_refused_and_writes_nothing_beyond_the_budget(stack: tuple[str, Settings]) -> None:
    url, settings = stack
    async with ModernClient(url) as client:
        answers = [await client.call("tools/call", APPROVE) for _ in range(30)]
        limited = [a for a in answers if "error" in a]
        assert limited and all(a["error"]["code"] == -32000 and "Too many changes" in a["error"]["message"]
                               and a["error"]["data"]["retryAfterMs"] > 0 for a in limited)
        created = [a["result"]["taskId"] for a in answers if "result" in a]
        assert len(created) <= 12  # a burst of 10, and what 5 per second refilled meanwhile
        key = next(iter((await in_status(client, created[0], "input_required"))["inputRequests"]))
        for _ in range(50):  # refused answers: each would be an audit record
            await client.call("tasks/update", {"taskId": created[0], "inputResponses": {
                key: {"action": "accept", "content": {"approved": "not a boolean"}}}})
    events = await all_events(settings)
    assert sum(isinstance(e, TaskCreated) for e in events) == len(created)
    assert sum(isinstance(e, RequestRejected) for e in events) < 25
