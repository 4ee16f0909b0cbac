"""An APP that does not load is one sentence naming its file, line and error, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.spawn import LEDGER

HEADER = "from ledger import App\napp = App('broken')\n"
BROKEN = {
    "syntax": (HEADER + "@app.tool\ndef f(:\n    pass\n", "line 4: invalid syntax"),
    "import": (HEADER + "import no_such_module_anywhere\n", "line 3: ModuleNotFoundError: No module named "
                                                            "'no_such_module_anywhere'"),
    "raise": (HEADER + "raise RuntimeError('boom while loading')\n", "line 3: RuntimeError: boom while loading"),
    "twice": (HEADER + "@app.tool\ndef f() -> str:\n    return ''\n@app.tool(name='f')\ndef g() -> str:\n"
                       "    return ''\n", "ValueError: tool 'f' is registered twice"),
}


@pytest.mark.parametrize("kind", BROKEN)
@pytest.mark.parametrize("role", ["worker", "server"])
def test_an_app_that_does_not_load_is_one_sentence(tmp_path: Path, kind: str, role: str) -> None:
    source, said = BROKEN[kind]
    app = tmp_path / "tools.py"
    app.write_text(source)
    run = subprocess.run(LEDGER + [role, str(app)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.startswith(f"ledger: {app}, ") and said in run.stderr, run.stderr


def test_a_module_that_is_not_there_says_how_to_name_an_app() -> None:
    run = subprocess.run(LEDGER + ["worker", "no.such.module"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "give APP as module:attribute or a .py file" in run.stderr, run.stderr
