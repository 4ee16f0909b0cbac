"""Finding the application a server or worker runs: ``module:attribute`` or a file path."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

from ledger.engine.app import App

DEFAULT_ATTRIBUTE = "app"
LEDGER_DIR = str(Path(__file__).parent.parent)  # frames of ledger itself are not where an app went wrong


class AppNotFound(ValueError):
    """APP does not name a loadable ledger application; the message says what was wrong."""


def load_app(spec: str) -> App:
    """``pkg.module:attr``, ``pkg.module`` (attribute ``app``), ``path/file.py[:attr]``."""
    target, _, attribute = spec.partition(":")
    if target.endswith(".py") or "/" in target:
        module = _module_from_file(Path(target))
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name is not None and target.startswith(exc.name):
                raise AppNotFound(f"cannot import {target!r} ({exc}); give APP as module:attribute or a .py file") \
                    from None
            raise AppNotFound(_failed(target, exc)) from None
        except Exception as exc:
            raise AppNotFound(_failed(target, exc)) from None
    attribute = attribute or DEFAULT_ATTRIBUTE
    app = getattr(module, attribute, None)
    if app is None:
        raise AppNotFound(f"{target!r} has no attribute {attribute!r}")
    if not isinstance(app, App):
        raise AppNotFound(f"{spec!r} is a {type(app).__name__}, not a ledger App")
    return app


def default_app_path() -> Path:
    """The demo tools: shipped inside the wheel, or ``examples/`` of a source checkout."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "_examples" / "demo.py", package.parent / "examples" / "demo.py"):
        if candidate.is_file():
            return candidate
    raise AppNotFound("the demo tools (examples/demo.py) are not installed; give APP explicitly")


def _module_from_file(path: Path) -> object:
    if not path.is_file():
        raise AppNotFound(f"no such file: {path}")
    name = f"ledger_app_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AppNotFound(f"cannot load {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # Let the app import modules that sit beside it.
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the app's own code: say where, in one line, instead of a traceback
        raise AppNotFound(_failed(str(path), exc)) from None
    return module


def _failed(app: str, exc: Exception) -> str:
    """One line: where loading the app failed (the innermost line of the app's own code) and why."""
    if isinstance(exc, SyntaxError):
        return f"{exc.filename or app}, line {exc.lineno}: {exc.msg} (loading APP {app})"
    where = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        if not frame.filename.startswith(("<frozen", sys.prefix, sys.base_prefix, LEDGER_DIR)):
            where = f"{frame.filename}, line {frame.lineno}: "
    return f"{where}{type(exc).__name__}: {exc} (loading APP {app})"
