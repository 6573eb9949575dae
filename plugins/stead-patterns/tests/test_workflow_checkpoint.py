"""WORKFLOW_CHECKPOINT: create/next/complete-step/status/resume, across restarts."""

from __future__ import annotations

from typing import Any

import pytest
from patterns_harness import MakePatterns, Patterns, Reply

pytestmark = pytest.mark.anyio

B = "WORKFLOW_CHECKPOINT"
STEPS = [
    {"stepId": "fetch", "input": {"url": "https://example.com"}},
    {"stepId": "parse", "input": None},
    {"stepId": "store"},
]


async def call(patterns: Patterns, path: str, body: Any = None) -> Reply:
    return await patterns.post(B, "wf-1", path, body)


async def status(patterns: Patterns) -> Any:
    return (await patterns.fetch(B, "wf-1", "/status")).json()


async def test_runs_to_completion(patterns: Patterns) -> None:
    assert await status(patterns) is None
    created = await call(patterns, "/create", {"workflowId": "wf-1", "steps": STEPS})
    assert created.json() == {"created": True, "totalSteps": 3}

    first = (await call(patterns, "/next")).json()
    assert first == {
        "stepId": "fetch",
        "stepIndex": 0,
        "totalSteps": 3,
        "input": {"url": "https://example.com"},
    }
    done = await call(patterns, "/complete-step", {"output": {"bytes": 10}})
    assert done.json() == {"status": "running", "completedSteps": 1, "totalSteps": 3}
    assert (await call(patterns, "/next")).json()["input"] is None
    await call(patterns, "/complete-step", {"output": "parsed"})
    last = (await call(patterns, "/next")).json()
    assert last == {"stepId": "store", "stepIndex": 2, "totalSteps": 3}  # no input: left out
    finished = await call(patterns, "/complete-step", {})
    assert finished.json() == {"status": "completed", "completedSteps": 3, "totalSteps": 3}

    state = await status(patterns)
    assert state["workflowId"] == "wf-1" and state["status"] == "completed"
    assert state["currentStep"] == 3 and state["metadata"] == {}
    assert [step["status"] for step in state["steps"]] == ["completed"] * 3
    assert state["steps"][0]["output"] == {"bytes": 10}
    assert "output" not in state["steps"][2]
    assert state["steps"][0]["startedAt"] <= state["steps"][0]["completedAt"]
    no_more = await call(patterns, "/next")
    assert (no_more.status, no_more.json()) == (400, {"error": "No active workflow"})


async def test_failed_step_is_resumed(patterns: Patterns) -> None:
    await call(patterns, "/create", {"workflowId": "wf-1", "steps": STEPS, "metadata": {"a": 1}})
    await call(patterns, "/next")
    await call(patterns, "/complete-step", {"output": 1})
    await call(patterns, "/next")
    failed = await call(patterns, "/complete-step", {"error": "timeout"})
    assert failed.json() == {"status": "failed", "completedSteps": 1, "totalSteps": 3}
    assert (await call(patterns, "/next")).status == 400
    state = await status(patterns)
    assert state["status"] == "failed" and state["metadata"] == {"a": 1}
    assert state["steps"][1]["status"] == "failed" and state["steps"][1]["error"] == "timeout"

    assert (await call(patterns, "/resume")).json() == {"resumed": True, "fromStep": 1}
    step = (await status(patterns))["steps"][1]
    assert step == {"stepId": "parse", "status": "pending", "input": None}
    assert (await call(patterns, "/next")).json()["stepId"] == "parse"


async def test_complete_step_needs_a_running_workflow(patterns: Patterns) -> None:
    await call(patterns, "/create", {"workflowId": "wf-1", "steps": STEPS})
    await call(patterns, "/next")
    await call(patterns, "/complete-step", {"error": "boom"})
    failed = await status(patterns)
    # A worker retrying without /resume: refused, as /next is, and nothing changes.
    late = await call(patterns, "/complete-step", {"output": "late success"})
    assert (late.status, late.json()) == (400, {"error": "No active workflow"})
    assert await status(patterns) == failed
    assert (await call(patterns, "/resume")).json() == {"resumed": True, "fromStep": 0}
    assert (await call(patterns, "/next")).json()["stepId"] == "fetch"
    done = await call(patterns, "/complete-step", {"output": "ok"})
    assert done.json() == {"status": "running", "completedSteps": 1, "totalSteps": 3}
    for _ in STEPS[1:]:
        await call(patterns, "/next")
        await call(patterns, "/complete-step", {"output": "ok"})
    completed = await call(patterns, "/complete-step", {"output": "again"})
    assert (completed.status, completed.json()) == (400, {"error": "No active workflow"})
    assert (await status(patterns))["status"] == "completed"


async def test_resume_of_a_running_workflow_changes_nothing(patterns: Patterns) -> None:
    await call(patterns, "/create", {"workflowId": "wf-1", "steps": STEPS})
    before = await status(patterns)
    assert (await call(patterns, "/resume")).json() == {"resumed": True, "fromStep": 0}
    assert await status(patterns) == before


async def test_a_restarted_worker_gets_the_unfinished_step_again(patterns: Patterns) -> None:
    await call(patterns, "/create", {"workflowId": "wf-1", "steps": STEPS})
    await call(patterns, "/next")
    await call(patterns, "/complete-step", {"output": 1})
    assert (await call(patterns, "/next")).json()["stepId"] == "parse"
    await patterns.restart()  # the process dies while "parse" runs
    assert (await status(patterns))["steps"][1]["status"] == "running"
    assert (await call(patterns, "/next")).json()["stepId"] == "parse"


async def test_a_refused_completion_leaves_the_step_to_do(make_patterns: MakePatterns) -> None:
    patterns = await make_patterns(max_value_bytes=10_000)
    await call(patterns, "/create", {"workflowId": "wf-1", "steps": STEPS})
    await call(patterns, "/next")
    refused = await call(patterns, "/complete-step", {"output": "x" * 20_000})
    assert refused.status == 400  # the output does not fit the value limit
    state = await status(patterns)
    assert (state["currentStep"], state["steps"][0]["status"]) == (0, "running")
    assert "output" not in state["steps"][0]
    # The worker retries the same step and completes it.
    assert (await call(patterns, "/next")).json()["stepId"] == "fetch"
    done = await call(patterns, "/complete-step", {"output": "small"})
    assert done.json() == {"status": "running", "completedSteps": 1, "totalSteps": 3}
    await patterns.restart()
    assert (await call(patterns, "/next")).json()["stepId"] == "parse"


async def test_without_a_workflow(patterns: Patterns) -> None:
    for path in ("/next", "/complete-step", "/resume"):
        reply = await call(patterns, path, {})
        assert reply.status == 400, path
        assert "error" in reply.json()


@pytest.mark.parametrize(
    "body",
    [{}, {"workflowId": "w"}, {"workflowId": "w", "steps": [{"input": 1}]}, {"steps": []}],
)
async def test_bad_create_body_is_400(patterns: Patterns, body: Any) -> None:
    assert (await call(patterns, "/create", body)).status == 400
    assert await status(patterns) is None


async def test_unknown_path_is_404(patterns: Patterns) -> None:
    assert (await patterns.fetch(B, "wf-1", "/nope")).status == 404


async def test_status_by_rpc(patterns: Patterns) -> None:
    assert await patterns.rpc(B, "wf-1", "status") is None
    await call(patterns, "/create", {"workflowId": "wf-1", "steps": STEPS})
    await call(patterns, "/next")
    assert await patterns.rpc(B, "wf-1", "status") == await status(patterns)
