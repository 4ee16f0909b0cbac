"""The README's tool example runs as written: approved once, filed once, even when the answer
re-runs it from the top."""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from pathlib import Path

from ledger.cli.loading import load_app
from ledger.settings import Settings
from tests.support.engine import running_engine

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    section = (ROOT / "README.md").read_text().split("## Writing tools", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


async def test_the_readme_tool_example_runs_as_written(settings: Settings, topics: dict, tmp_path: Path) -> None:
    source = tmp_path / "expenses.py"
    source.write_text(readme_example())
    app = load_app(str(source))
    settings = replace(settings, hot_window_ms=0)  # park at once: the answer re-runs the tool from the top
    async with running_engine(app, settings) as engine:
        row = await engine.service.create("approve_expense", {"amount": 12.5, "description": "lunch"},
                                          principal=None, ttl_ms=None, protocol="test")
        row = await engine.settled(row.task_id, "input_required")
        assert row.pending[0].message == "Approve 12.5 for lunch?"
        await engine.service.answer(row.task_id, None, row.pending[0].elicitation_id, "accept", {"approved": True},
                                    protocol="test")
        row = await engine.settled(row.task_id, "completed")
    assert '"approved 12.5: receipt 1"' in row.result_json
    assert sys.modules[f"ledger_app_{source.stem}"].filed == [12.5]  # the step ran once
