"""``ledger check`` before a deploy: every open task's journal re-run against an app's code, with no side
effect. Exit 0 when the code follows every journal, 1 with each task's first difference otherwise."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from examples.demo import app as demo
from ledger.contract.events import ElicitationRequested, PartitionClaimed, StepRecorded, TaskCreated, TaskStarted
from ledger.engine.check import open_journals
from ledger.kafka.topics import ensure_topics
from ledger.settings import Settings
from tests.support.engine import running_engine
from tests.support.factories import sample, written
from tests.support.spawn import DEMO, LEDGER, role_environment

DEMO_SOURCE = Path(DEMO).read_text()


def ledger_check(settings: Settings, app: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(LEDGER + ["check", app], capture_output=True, text=True, timeout=120,
                          env=role_environment(settings))


async def test_check_names_each_task_the_changed_code_would_fail_and_passes_the_unchanged(
        settings: Settings, tmp_path: Path) -> None:
    await ensure_topics(settings)
    async with running_engine(demo, settings) as engine:
        trip = await engine.service.create("plan_trip", {"destination": "Lisbon"}, principal=None, ttl_ms=None,
                                           protocol="test")
        row = await engine.settled(trip.task_id, "input_required")
        await engine.service.answer(trip.task_id, None, row.pending[0].elicitation_id, "accept",
                                    {"start_date": "2027-01-04", "nights": 3}, protocol="test")
        await engine.service.wait(trip.task_id, None, lambda r: r.pending and r.pending[0].message.startswith(
            "Book 3 nights"), 30)
        expense = await engine.service.create("approve_expense", {"amount": 9, "description": "tea"}, principal=None,
                                              ttl_ms=None, protocol="test")
        await engine.settled(expense.task_id, "input_required")
        done = await engine.service.create("approve_expense", {"amount": 1, "description": "pen"}, principal=None,
                                           ttl_ms=None, protocol="test")
        row = await engine.settled(done.task_id, "input_required")
        await engine.service.answer(done.task_id, None, row.pending[0].elicitation_id, "decline", None,
                                    protocol="test")
        await engine.settled(done.task_id, "completed")
    engine_ended_ms = time.time_ns() // 1_000_000

    unchanged = ledger_check(settings, DEMO)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert "2 open tasks checked against examples/demo.py: none differ" in unchanged.stdout, unchanged.stdout

    reworded = tmp_path / "reworded.py"  # the trip's first question changed: its open task would fail
    reworded.write_text(DEMO_SOURCE.replace('f"When do you want to go to {destination}?"',
                                            'f"Which dates for {destination}?"'))
    changed = ledger_check(settings, str(reworded))
    assert changed.returncode == 1, changed.stdout + changed.stderr
    assert trip.task_id in changed.stdout and expense.task_id not in changed.stdout, changed.stdout
    assert f"elicitation #0 of task {trip.task_id} differs" in changed.stdout, changed.stdout
    assert "replay asked 'Which dates for Lisbon?'" in changed.stdout and "1 differs" in changed.stdout, changed.stdout

    kept = tmp_path / "kept.py"  # the README's recipe: tasks created before the deploy keep the old question
    kept.write_text(DEMO_SOURCE.replace(
        '    dates = await ctx.elicit(f"When do you want to go to {destination}?", DATES)',
        f'    old = ctx.now().timestamp() * 1000 < {engine_ended_ms}\n'
        '    dates = await ctx.elicit(f"When do you want to go to {destination}?" if old else '
        'f"Which dates for {destination}?", DATES)', 1))
    assert ledger_check(settings, str(kept)).returncode == 0, "the old path kept for the open tasks"

    reasked = tmp_path / "reasked.py"  # the approval asks for other fields: the open approval would fail
    reasked.write_text(DEMO_SOURCE.replace(
        'answer = await ctx.elicit(f"Approve expense of {amount} for {description!r}?", APPROVAL)',
        'answer = await ctx.step("look up the budget", lambda: 1 / 0) and await ctx.elicit('
        'f"Approve expense of {amount} for {description!r}?", CONFIRMATION)', 1))
    changed = ledger_check(settings, str(reasked))
    assert changed.returncode == 0, "a step past the journal ends the check there, before the question"
    assert "ZeroDivisionError" not in changed.stdout + changed.stderr, "a step past the journal never runs"
    reasked.write_text(DEMO_SOURCE.replace(
        'answer = await ctx.elicit(f"Approve expense of {amount} for {description!r}?", APPROVAL)',
        'answer = await ctx.elicit(f"Approve expense of {amount} for {description!r}?", CONFIRMATION)', 1))
    changed = ledger_check(settings, str(reasked))
    assert changed.returncode == 1 and expense.task_id in changed.stdout, changed.stdout + changed.stderr
    assert trip.task_id not in changed.stdout and "1 differs" in changed.stdout, changed.stdout


async def test_the_journals_checked_are_the_workers_own_a_fenced_write_left_out() -> None:
    claimed, taken_over = PartitionClaimed.of(0, "worker:w1"), PartitionClaimed.of(0, "worker:w2")
    records = [written(0, offset, event) for offset, event in enumerate([
        claimed, sample(TaskCreated, "t", actor="server:s1"), sample(TaskStarted, "t", actor="worker:w1"),
        sample(StepRecorded, "t", actor="worker:w1", sequence=0), taken_over,
        sample(StepRecorded, "t", actor="worker:w1", sequence=1, name="written after losing the partition"),
        sample(ElicitationRequested, "t", actor="worker:w2", sequence=0)])]

    async def batches():
        yield records

    [journal] = await open_journals(batches())
    assert journal.step(0) is not None and journal.step(1) is None, "w1's write after w2's claim is fenced off"
    assert journal.elicitation(0) is not None
