"""The client recipes of docs/clients.md, run as written against ``ledger dev``: each one prints the
question and the result, and the log shows the path its answers took.

The JavaScript ones need Node and ``npm install --prefix tests/interop/js`` (``.ci/run`` runs the latter);
without them they skip and say so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.contract.events import ResponseSubmitted
from ledger.settings import Settings
from tests.support.engine import all_events
from tests.support.spawn import LEDGER

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "docs" / "clients.md"
PACKAGES = ROOT / "tests" / "interop" / "js"
README_URL = "http://127.0.0.1:8000/mcp"
TRAIN = "Approve expense of 20.0 for 'train'?"
HOTEL = "Approve expense of 35.0 for 'hotel'?"


def recipes(language: str) -> list[str]:
    """The ``language`` code blocks of docs/clients.md, in order."""
    return re.findall(rf"```{language}\n(.*?)```", RECIPES.read_text(), re.S)


async def answered_paths(settings: Settings, before: set[str]) -> set[str]:
    """The protocols of the answers given to tasks that are not in ``before``."""
    return {e.protocol for e in await all_events(settings)
            if isinstance(e, ResponseSubmitted) and e.task_id not in before}


async def answered_tasks(settings: Settings) -> set[str]:
    return {e.task_id for e in await all_events(settings) if isinstance(e, ResponseSubmitted)}


def run(args: list[str], cwd: Path = ROOT, stdin: str = "", exit_status: int = 0) -> list[str]:
    finished = subprocess.run(args, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120)
    assert finished.returncode == exit_status, f"{args} exited {finished.returncode}:\n{finished.stdout}\n{finished.stderr}"
    return finished.stdout.splitlines()


def node_packages() -> Path:
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the JavaScript recipes need Node 20+")
    if not (PACKAGES / "node_modules" / "@modelcontextprotocol").is_dir():
        pytest.skip("the recipes' packages are not installed: npm install --prefix tests/interop/js")
    return PACKAGES / "node_modules"


@pytest.mark.parametrize("index,printed,paths", [
    (0, [TRAIN, "approved 20"], {"2026-07-28/mrtr"}),
    (1, [TRAIN, "relay: approved 20", HOTEL, "_meta: approved 35"], {"2025-11-25/relay", "2025-11-25/meta"}),
    (2, [TRAIN, "approved 20"], {"2026-07-28/tasks"}),
], ids=["python sdk 2026-07-28", "python sdk 2025-11-25", "fastmcp with fastmcp-tasks"])
async def test_the_python_recipes_run_as_written(dev: tuple[str, Settings], tmp_path: Path, index: int,
                                                 printed: list[str], paths: set[str]) -> None:
    url, settings = dev
    script = tmp_path / "recipe.py"
    script.write_text(recipes("python")[index].replace(README_URL, url))
    before = await answered_tasks(settings)
    assert run([sys.executable, str(script)]) == printed
    assert await answered_paths(settings, before) == paths


async def test_the_typescript_recipe_runs_as_written(dev: tuple[str, Settings], tmp_path: Path) -> None:
    url, settings = dev
    (tmp_path / "node_modules").symlink_to(node_packages())  # where node resolves the recipe's imports
    script = tmp_path / "recipe.mjs"
    script.write_text(recipes("javascript")[0].replace(README_URL, url))
    before = await answered_tasks(settings)
    printed = run(["node", str(script)], cwd=tmp_path)
    assert re.fullmatch(r"task [0-9a-f-]{36}", printed[0]) and printed[1:] == [TRAIN, "approved 20"]
    assert await answered_paths(settings, before) == {"2025-11-25/relay"}


def test_the_recipes_name_the_versions_the_suite_installs() -> None:
    pinned = json.loads((PACKAGES / "package.json").read_text())["dependencies"]
    recipes_text = RECIPES.read_text()
    for package, version in pinned.items():
        assert f"{package}@{version}" in recipes_text, package


def test_every_recipe_is_run() -> None:
    """A recipe added to docs/clients.md needs a test here: the tests above run these, by position."""
    assert (len(recipes("python")), len(recipes("javascript"))) == (3, 1)
    assert sum("inspector" in block for block in recipes("bash")) == 1


async def test_the_inspector_recipe_calls_and_ledger_answer_answers(dev: tuple[str, Settings]) -> None:
    url, settings = dev
    inspector = str(node_packages() / ".bin" / "mcp-inspector")
    *calls, answer = next(block for block in recipes("bash") if "inspector" in block).strip().splitlines()
    outputs = []
    for call, exit_status in zip(calls, (0, 0, 5)):  # the CLI exits 5 on a result with isError
        args = call.replace(README_URL, url).split()
        assert args[:2] == ["npx", "@modelcontextprotocol/inspector@2.12.0"]
        outputs.append("\n".join(run([inspector, *args[2:]], exit_status=exit_status)))
    assert all(f'"name": "{tool}"' in outputs[0] for tool in ("approve_expense", "plan_trip", "count_slowly"))
    assert '"text": "counted 3"' in outputs[1]
    waiting = json.loads(outputs[2])
    assert waiting["isError"] and waiting["_meta"]["io.modelcontextprotocol/pending-elicitations"][0]["message"] \
        == TRAIN
    task_id = waiting["_meta"]["io.modelcontextprotocol/related-task"]["taskId"]

    before = await answered_tasks(settings)
    command = answer.split("#", 1)[0].split()
    assert command == ["ledger", "answer", "TASK_ID"]
    printed = run(LEDGER + ["answer", task_id, "--url", url], stdin="accept\ny\n\n")
    assert printed[-1].endswith("approved 20")
    assert await answered_paths(settings, before) == {"2026-07-28/tasks"}
