"""``WORKFLOW_CHECKPOINT``: checkpoint and resume for long-running multi-step processes.

Routes: ``/create`` (body ``{"workflowId", "steps": [{"stepId", "input"}],
"metadata"?}``), ``/next`` (mark the current step running and hand it out),
``/complete-step`` (body ``{"output"?, "error"?}``; only while the workflow
is running), ``/status``, ``/resume`` (reset a failed step to pending). The
worker that runs the steps can die at any point: the object remembers which
step is next.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

import stead
from stead import Request, Response
from stead_patterns._http import decode_body, error, json_safe, now_ms, route

__all__ = ["Checkpoint", "WorkflowCheckpoint", "WorkflowState", "stead_bindings"]

StepStatus = Literal["pending", "running", "completed", "failed"]
WorkflowStatus = Literal["running", "completed", "failed", "paused"]


class Checkpoint(msgspec.Struct, rename="camel"):
    """One step; unset fields are left out of the JSON, as JavaScript leaves out ``undefined``."""

    step_id: str
    status: StepStatus
    input: Any = UNSET
    output: Any = UNSET
    error: str | UnsetType = UNSET
    started_at: int | UnsetType = UNSET
    completed_at: int | UnsetType = UNSET


class WorkflowState(msgspec.Struct, rename="camel"):
    """The stored workflow (and the JSON ``/status`` answers)."""

    workflow_id: str
    status: WorkflowStatus
    steps: list[Checkpoint]
    current_step: int
    created_at: int
    updated_at: int
    metadata: dict[str, Any]


class _StepInput(msgspec.Struct, rename="camel"):
    step_id: str
    input: Any = UNSET


class _CreateBody(msgspec.Struct, rename="camel"):
    workflow_id: str
    steps: list[_StepInput]
    metadata: dict[str, Any] | None = None


class _CompleteBody(msgspec.Struct):
    output: Any = UNSET
    error: str | None = None


class WorkflowCheckpoint(stead.DurableObject):
    """One workflow per object (e.g. named after the workflow id)."""

    workflow: WorkflowState | None = None

    async def on_start(self) -> None:
        self._load()

    def _load(self) -> None:
        self.workflow = self.ctx.storage.get("workflow", type=WorkflowState)

    async def fetch(self, request: Request) -> Response:
        routes = {
            "/create": self._create,
            "/next": self._next,
            "/complete-step": self._complete_step,
            "/status": self._status,
            "/resume": self._resume,
        }
        return await route(request, routes, self.ctx.storage, reload=self._load)

    async def _create(self, request: Request) -> Response:
        body = decode_body(request, _CreateBody)
        now = now_ms()
        steps = [Checkpoint(step.step_id, "pending", step.input) for step in body.steps]
        self.workflow = WorkflowState(
            body.workflow_id, "running", steps, 0, now, now, body.metadata or {}
        )
        self._save()
        return Response.json({"created": True, "totalSteps": len(steps)})

    async def _next(self, request: Request) -> Response:
        workflow = self.workflow
        if workflow is None or workflow.status != "running":
            return error("No active workflow", 400)
        if workflow.current_step >= len(workflow.steps):
            return Response.json({"done": True})
        step = workflow.steps[workflow.current_step]
        step.status = "running"
        step.started_at = now_ms()
        self._save()
        return Response.json(
            json_safe(
                {
                    "stepId": step.step_id,
                    "stepIndex": workflow.current_step,
                    "totalSteps": len(workflow.steps),
                    "input": step.input,
                }
            )
        )

    async def _complete_step(self, request: Request) -> Response:
        workflow = self.workflow
        if workflow is None:
            return error("No workflow", 400)
        if workflow.status != "running":
            # As /next: a failed step is retried through /resume, not completed over its
            # failure (that left it "completed" with its error and the workflow "failed").
            return error("No active workflow", 400)
        body = decode_body(request, _CompleteBody)
        if workflow.current_step >= len(workflow.steps):
            return error("No step to complete", 400)
        _finish_step(workflow, body)
        self._save()
        return Response.json(
            {
                "status": workflow.status,
                "completedSteps": workflow.current_step,
                "totalSteps": len(workflow.steps),
            }
        )

    async def _status(self, request: Request) -> Response:
        return Response.json(self.workflow)

    def status(self) -> WorkflowState | None:
        """The workflow as ``/status`` answers (also callable by RPC)."""
        return self.workflow

    async def _resume(self, request: Request) -> Response:
        workflow = self.workflow
        if workflow is None:
            return error("No workflow", 400)
        if workflow.status == "failed":
            failed = workflow.steps[workflow.current_step]
            failed.status = "pending"
            failed.error = failed.started_at = failed.completed_at = UNSET
            workflow.status = "running"
            self._save()
        return Response.json({"resumed": True, "fromStep": workflow.current_step})

    def _save(self) -> None:
        if self.workflow is not None:
            self.ctx.storage.put("workflow", self.workflow)


def _finish_step(workflow: WorkflowState, body: _CompleteBody) -> None:
    now = now_ms()
    step = workflow.steps[workflow.current_step]
    step.completed_at = now
    workflow.updated_at = now
    if body.error:
        step.status = "failed"
        step.error = body.error
        workflow.status = "failed"
        return
    step.status = "completed"
    step.output = body.output
    workflow.current_step += 1
    if workflow.current_step >= len(workflow.steps):
        workflow.status = "completed"


@stead.hookimpl
def stead_bindings() -> dict[str, type[stead.DurableObject]]:
    return {"WORKFLOW_CHECKPOINT": WorkflowCheckpoint}
