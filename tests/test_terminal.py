"""``ledger call`` and ``ledger answer`` as a person uses them: separate processes against a running
server, questions answered by typing at the prompt."""

from __future__ import annotations

import asyncio
import signal
import subprocess

import pytest

from ledger.settings import Settings
from tests.support.raw_http import ModernClient
from tests.support.spawn import LEDGER
from tests.support.stack import in_status


@pytest.fixture(scope="module")
def stack_tokens() -> dict[str, str]:
    return {"ada-secret": "ada"}


async def ledger(*args: str, typed: str = "", token: str | None = "ada-secret") -> subprocess.CompletedProcess[str]:
    options = ["--token", token] if token else []
    return await asyncio.to_thread(subprocess.run, LEDGER + list(args) + options, input=typed, capture_output=True,
                                   text=True, timeout=120)


async def test_call_asks_each_question_at_the_prompt_and_prints_the_result(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    run = await ledger("call", "approve_expense", "amount=20", "description=train", "--url", url, typed="a\ny\n\n")
    assert run.returncode == 0, run.stderr
    assert "? Approve expense of 20.0 for 'train'?" in run.stdout and run.stdout.rstrip().endswith("approved 20")


async def test_call_checks_each_field_and_asks_again(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    typed = "a\n1 March\n2027-03-01\nfour\n4\na\ny\n"  # fields in the schema's order: start_date, nights
    run = await ledger("call", "plan_trip", "destination=Rome", "--url", url, typed=typed)
    assert run.returncode == 0, run.stderr
    assert "a date as YYYY-MM-DD is needed" in run.stdout and "an integer is needed" in run.stdout
    assert run.stdout.rstrip().endswith("booked Rome for 4 nights from 2027-03-01"), run.stdout


async def test_answer_lists_what_waits_and_answers_the_chosen_task(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with ModernClient(url, token="ada-secret") as client:
        task_id = (await client.result("tools/call", {"name": "approve_expense", "arguments": {
            "amount": 7, "description": "ink"}}))["taskId"]
        await in_status(client, task_id, "input_required")
        listed = await ledger("answer", "--url", url, typed="\n")  # Enter: nothing chosen yet, ends at EOF
        assert task_id in listed.stdout and "Approve expense of 7.0 for 'ink'?" in listed.stdout, listed
        run = await ledger("answer", task_id, "--url", url, typed="a\nn\nnot this month\n")
        assert run.returncode == 0, run.stderr
        assert run.stdout.rstrip().endswith("rejected 7")
        assert (await in_status(client, task_id, "completed"))["result"]["content"][0]["text"] == "rejected 7"


async def test_mistakes_are_one_line(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    no_token = await ledger("call", "approve_expense", "amount=1", "description=x", "--url", url, token=None)
    assert no_token.returncode == 2 and "wants a bearer token: pass --token or set LEDGER_TOKEN" in no_token.stderr
    unknown = await ledger("call", "no_such_tool", "--url", url)
    assert unknown.returncode == 2 and "no_such_tool" in unknown.stderr and "Traceback" not in unknown.stderr
    bad = await ledger("call", "approve_expense", "amount", "--url", url)
    assert bad.returncode == 2 and "arguments are key=value, got 'amount'" in bad.stderr
    cut_short = await ledger("call", "approve_expense", "amount=2", "description=y", "--url", url, typed="a\n")
    assert cut_short.returncode == 2 and "the input ended before every question was answered" in cut_short.stderr
    for run in (no_token, unknown, bad, cut_short):
        assert run.stderr.count("\n") == 1, run.stderr


async def test_one_ctrl_c_at_the_prompt_stops(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    call = await asyncio.create_subprocess_exec(*LEDGER, "call", "approve_expense", "amount=9", "description=pens",
                                                "--url", url, "--token", "ada-secret", stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert call.stdout is not None and call.stderr is not None
    while not (await asyncio.wait_for(call.stdout.readline(), 60)).startswith(b"? Approve expense"):
        pass
    await asyncio.sleep(0.5)  # at the prompt, in input()
    call.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(call.wait(), 10) == 2  # the first Ctrl-C, with no Enter typed
    assert "stopped; the task goes on" in (await call.stderr.read()).decode()


async def test_the_prompt_says_until_when_a_question_waits_and_that_it_timed_out_before_the_answer(
        stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with ModernClient(url, token="ada-secret") as client:
        task_id = (await client.result("tools/call", {"name": "approve_or_escalate", "arguments": {
            "amount": 12, "description": "paper", "answer_within_minutes": 0.05}}))["taskId"]
        await in_status(client, task_id, "input_required")
    prompt = await asyncio.create_subprocess_exec(
        *LEDGER, "answer", task_id, "--url", url, "--token", "ada-secret", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert prompt.stdout is not None
    while not (await asyncio.wait_for(prompt.stdout.readline(), 60)).startswith(b"? Approve expense"):
        pass
    told = (await asyncio.wait_for(prompt.stdout.readline(), 10)).decode()
    assert told.startswith("  answer by 20") and told.rstrip().endswith(
        "UTC, or the task goes on without an answer"), told
    await asyncio.sleep(4)  # the person is away past the 3 s deadline, then approves the first question, and the next
    out, err = await asyncio.wait_for(prompt.communicate(b"a\ny\n\n" + b"a\ny\n\n"), 60)
    said = out.decode()
    assert "your answer was not sent: the question timed out at " in said, (said, err)
    assert "? Escalated to you: nobody answered within 0.05 min." in said, said
    assert said.rstrip().endswith("approved 12"), said


async def test_a_question_answered_elsewhere_meanwhile_is_said_and_the_prompts_answer_not_sent(
        stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with ModernClient(url, token="ada-secret") as inbox:
        task_id = (await inbox.result("tools/call", {"name": "approve_expense", "arguments": {
            "amount": 11, "description": "ink"}}))["taskId"]
        asked = await in_status(inbox, task_id, "input_required")
        prompt = await asyncio.create_subprocess_exec(
            *LEDGER, "answer", task_id, "--url", url, "--token", "ada-secret", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert prompt.stdout is not None
        while not (await asyncio.wait_for(prompt.stdout.readline(), 60)).startswith(b"? Approve expense"):
            pass
        await inbox.result("tasks/update", {"taskId": task_id, "inputResponses": {
            next(iter(asked["inputRequests"])): {"action": "accept", "content": {"approved": False}}}})
        out, err = await asyncio.wait_for(prompt.communicate(b"a\ny\n\n"), 60)  # the person approves, too late
    said = out.decode()
    assert "your answer was not sent: the question was answered elsewhere meanwhile, by ada" in said, (said, err)
    assert 'accept {"approved":false}' in said and said.rstrip().endswith("rejected 11")
