"""The application object: the tools a ledger server lists and its workers run.

```python
app = App("expenses")

@app.tool()
async def approve_expense(amount: float, description: str, ctx: Context) -> str:
    answer = await ctx.elicit(f"Approve {amount}?", Approval)
    ...
```

Typed parameters become the tool's ``inputSchema``; a parameter annotated ``Context`` receives
the task context and is not part of the schema.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from ledger.contract.values import problem_in
from ledger.engine.context import Context
from ledger.engine.retry import Retry

TaskSupport = Literal["optional", "required", "forbidden"]
TASK_SUPPORT: tuple[str, ...] = ("optional", "required", "forbidden")


class UnknownTool(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown tool {name!r}")
        self.name = name


class InvalidArguments(ValueError):
    """Tool arguments that do not match the tool's input schema; the message says which."""


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    fn: Callable[..., Any]
    description: str | None
    task_support: TaskSupport
    arguments_model: type[BaseModel]
    context_parameter: str | None
    # Runs of this tool a worker executes at once (None: as many as it has slots), so that a flood
    # of long runs of one tool cannot hold every slot while other tasks wait.
    max_concurrency: int | None = None
    retry: Retry | None = None  # None: an exception fails the task
    input_schema: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        schema = self.arguments_model.model_json_schema()
        schema.pop("title", None)
        object.__setattr__(self, "input_schema", schema)

    def definition(self) -> dict[str, Any]:
        """The tool as ``tools/list`` shows it."""
        listed: dict[str, Any] = {
            "name": self.name,
            "inputSchema": self.input_schema,
            "execution": {"taskSupport": self.task_support},
        }
        if self.description:
            listed["description"] = self.description
        return listed

    def parse_arguments(self, arguments: dict[str, Any] | None, *, strict: bool = False) -> dict[str, Any]:
        """The tool's keyword arguments. ``strict`` (a new call, from outside) takes JSON Schema's types
        as they are: no "3" for an integer, no ``true`` for a number, no NaN or infinity. A run parses
        what was accepted then, leniently, so a task created before a stricter release still runs."""
        try:
            if strict:
                if (problem := problem_in(arguments or {}, "arguments")) is not None:
                    raise InvalidArguments(f"invalid arguments for tool {self.name!r}: {problem}")
                parsed = self.arguments_model.model_validate_json(json.dumps(arguments or {}), strict=True)
            else:
                parsed = self.arguments_model.model_validate(arguments or {})
        except ValidationError as exc:
            raise InvalidArguments(f"invalid arguments for tool {self.name!r}: {_summarise(exc)}") from None
        return {name: getattr(parsed, name) for name in type(parsed).model_fields}

    async def call(self, arguments: dict[str, Any], ctx: Context) -> Any:
        kwargs = self.parse_arguments(arguments)
        if self.context_parameter is not None:
            kwargs[self.context_parameter] = ctx
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(**kwargs)
        return await asyncio.to_thread(self.fn, **kwargs)


def _summarise(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "arguments"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


class App:
    """A named set of tools. Servers list and validate them; workers run them."""

    def __init__(self, name: str, *, version: str = "0.1.0", instructions: str | None = None) -> None:
        self.name = name
        self.version = version
        self.instructions = instructions
        self.tools: dict[str, Tool] = {}

    def tool(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        task_support: TaskSupport = "optional",
        max_concurrency: int | None = None,
        retry: Retry | None = None,
    ) -> Any:
        """Register a tool; usable as ``@app.tool`` or ``@app.tool(task_support="required")``.

        ``max_concurrency`` caps the runs of this tool one worker executes at once; the others wait
        in its queue while other tools' tasks go ahead. ``retry`` re-runs a tool that raised (``Retry``).
        Bound arguments in the signature with ``Annotated[int, Field(ge=1, le=1000)]``: the bounds are in
        the input schema and enforced.
        """
        if task_support not in TASK_SUPPORT:
            raise ValueError(f"task_support must be one of {', '.join(TASK_SUPPORT)}, got {task_support!r}")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency!r}")
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"retry takes a ledger.Retry, got {retry!r}")

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            tool = _build_tool(fn, name or fn.__name__, description or inspect.getdoc(fn), task_support,
                               max_concurrency, retry)
            if tool.name in self.tools:
                raise ValueError(f"tool {tool.name!r} is registered twice")
            self.tools[tool.name] = tool
            return fn

        return register(fn) if fn is not None else register

    def get(self, name: str) -> Tool:
        try:
            return self.tools[name]
        except KeyError:
            raise UnknownTool(name) from None


def _build_tool(fn: Callable[..., Any], name: str, description: str | None, task_support: TaskSupport,
                max_concurrency: int | None, retry: Retry | None) -> Tool:
    hints = get_type_hints(fn, include_extras=True)  # keeps Annotated[..., Field(...)] bounds
    fields: dict[str, Any] = {}
    context_parameter = None
    for parameter in inspect.signature(fn).parameters.values():
        annotation = hints.get(parameter.name, Any)
        if _is_context(annotation):
            context_parameter = parameter.name
            continue
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(f"tool {name!r}: *args and **kwargs cannot be described as an input schema")
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (annotation, default)
    model = create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    return Tool(name, fn, description, task_support, model, context_parameter, max_concurrency, retry)


def _is_context(annotation: Any) -> bool:
    return annotation is Context or (get_origin(annotation) in (Union, UnionType) and Context in get_args(annotation))


def tool_result(value: Any) -> dict[str, Any]:
    """A tool's return value as a ``CallToolResult`` (JSON), the form the log keeps it in."""
    if isinstance(value, dict) and "content" in value and isinstance(value["content"], list):
        return value
    if isinstance(value, str):
        return {"content": [{"type": "text", "text": value}], "isError": False}
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    text = json.dumps(value, separators=(",", ":"), default=str)
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": False}
    if isinstance(value, dict):
        result["structuredContent"] = value
    return result


def error_result(message: str) -> dict[str, Any]:
    """The ``CallToolResult`` a failed tool call answers with."""
    return {"content": [{"type": "text", "text": message}], "isError": True}

