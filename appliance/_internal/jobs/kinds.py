"""Job kinds: what a job of each kind takes (a pydantic parameters model), resolves at
submission and runs; every capability registers its kinds through the composition root."""


from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from appliance._internal.auth import Principal
from appliance._internal.store import Store
from appliance.capabilities import register_jobs
from appliance.errors import (
    ValidationFailed,
)

if TYPE_CHECKING:
    from appliance._internal.jobs.runner import JobContext

logger = logging.getLogger("appliance.jobs")


# -- job kinds ---------------------------------------------------------------------------------
@dataclass
class JobOutcome:
    """What a job concludes; the API node turns it into a signed report."""

    method: str
    version: str
    parameters: dict[str, Any]
    inputs: dict[str, Any]
    statistics: dict[str, Any]
    p_value: float | None = None
    verdict: str | None = None
    alpha: float | None = None
    seed: int | None = None
    device: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] | None = None


ResolveFn = Callable[[Store, Principal, Any], Any]
RunFn = Callable[["JobContext", Any, Any], JobOutcome]
SucceededFn = Callable[[Store, dict[str, Any], JobOutcome], None]


@dataclass(frozen=True)
class JobKind:
    """A kind of job. ``params_model`` validates what the caller sends; ``resolve`` turns the
    parameters into the inputs the job runs on (the caller's registered objects, checked for
    ownership at submission), an ``inputs_model`` instance; ``run`` gets both, typed."""

    name: str
    params_model: type[BaseModel]
    inputs_model: type[BaseModel]
    resolve: ResolveFn
    run: RunFn
    roles: tuple[str, ...] = ("admin", "auditor")
    description: str = ""
    # run on the API node when the job's report is signed, before the job shows as succeeded
    # (the models a job trained are registered here: the node that owns the store, whichever
    # worker ran the job)
    on_succeeded: SucceededFn | None = None

    def dump_inputs(self, inputs: BaseModel) -> dict[str, Any]:
        """The JSON a job message carries."""
        if not isinstance(inputs, self.inputs_model):
            raise TypeError(f"job kind {self.name!r} resolved {type(inputs).__name__}, "
                            f"not {self.inputs_model.__name__}")
        return inputs.model_dump(mode="json")

    def load_inputs(self, raw: Any) -> BaseModel:
        """The typed inputs of a job message (validated again: the message crossed a queue)."""
        return self.inputs_model.model_validate(raw)


_KINDS: dict[str, JobKind] = {}


def register_job_kind(kind: JobKind) -> None:
    """Register a job kind (audit method, evaluation, refinement) by name."""
    if _KINDS.get(kind.name) == kind:  # the same kind again (a capability's hook re-run)
        return
    if kind.name in _KINDS:
        raise ValueError(f"job kind {kind.name!r} registered twice")
    _KINDS[kind.name] = kind


def get_job_kind(name: str) -> JobKind:
    load_builtin_kinds()
    try:
        return _KINDS[name]
    except KeyError:
        raise ValidationFailed(
            f"unknown job kind {name!r}; known kinds: {', '.join(sorted(_KINDS))}"
        ) from None


def job_kinds() -> dict[str, JobKind]:
    load_builtin_kinds()
    return dict(_KINDS)


_builtin_lock = threading.Lock()
_loaded_for: str | None = None  # the APPLIANCE_CAPABILITIES whose kinds are registered


def load_builtin_kinds() -> None:
    """Register every installed capability's job kinds (once per set of capabilities,
    thread-safe: worker threads may ask for a kind at the same moment)."""
    global _loaded_for
    wanted = os.environ.get("APPLIANCE_CAPABILITIES", "")
    if _loaded_for == wanted:
        return
    with _builtin_lock:
        if _loaded_for == wanted:
            return
        register_jobs()
        _loaded_for = wanted
