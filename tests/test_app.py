"""The tool API: schemas from signatures, task support, argument validation, results."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from ledger import App, Context
from ledger.engine.app import InvalidArguments, UnknownTool, error_result, tool_result


def build() -> App:
    app = App("t")

    @app.tool(task_support="required")
    async def book(city: str, nights: int = 1, ctx: Context | None = None) -> str:
        """Book a hotel."""
        return city

    @app.tool
    def add(a: int, b: int) -> int:
        return a + b

    return app


def test_signature_becomes_input_schema_and_context_is_left_out() -> None:
    tool = build().get("book")
    assert tool.input_schema["properties"].keys() == {"city", "nights"}
    assert tool.input_schema["required"] == ["city"]
    assert tool.definition()["execution"] == {"taskSupport": "required"}
    assert tool.definition()["description"] == "Book a hotel."
    assert build().get("add").definition()["execution"] == {"taskSupport": "optional"}


def test_context_parameter_is_found_by_annotation() -> None:
    app = App("t")

    @app.tool
    async def uses(ctx: Context, x: int) -> int:
        return x

    assert app.get("uses").context_parameter == "ctx"
    assert list(app.get("uses").input_schema["properties"]) == ["x"]


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({}, "city: Field required"),
        ({"city": "Oslo", "nights": "many"}, "nights: Input should be a valid integer"),
        ({"city": "Oslo", "extra": 1}, "extra: Extra inputs are not permitted"),
    ],
)
def test_bad_arguments_are_named(arguments: dict, problem: str) -> None:
    with pytest.raises(InvalidArguments, match=problem):
        build().get("book").parse_arguments(arguments)


def test_unknown_tool_and_bad_registrations() -> None:
    app = build()
    with pytest.raises(UnknownTool, match="'nope'"):
        app.get("nope")
    with pytest.raises(ValueError, match="task_support"):
        app.tool(task_support="sometimes")
    with pytest.raises(ValueError, match="registered twice"):
        app.tool(name="add")(lambda: None)


async def test_sync_tools_run_off_the_event_loop() -> None:
    assert await build().get("add").call({"a": 2, "b": 3}, ctx=None) == 5


class Booking(BaseModel):
    city: str
    nights: int


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hi", {"content": [{"type": "text", "text": "hi"}], "isError": False}),
        (5, {"content": [{"type": "text", "text": "5"}], "isError": False}),
        ({"a": 1}, {"content": [{"type": "text", "text": '{"a":1}'}], "isError": False, "structuredContent": {"a": 1}}),
        (Booking(city="Oslo", nights=2), {"content": [{"type": "text", "text": '{"city":"Oslo","nights":2}'}],
                                          "isError": False, "structuredContent": {"city": "Oslo", "nights": 2}}),
        (error_result("no"), {"content": [{"type": "text", "text": "no"}], "isError": True}),
    ],
)
def test_return_values_become_call_tool_results(value: object, expected: dict) -> None:
    assert tool_result(value) == expected
