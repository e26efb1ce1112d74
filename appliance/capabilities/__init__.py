"""The one list of capabilities and what each one contributes to the appliance.

A capability is one folder here (``schemas.py`` pydantic-only, ``routes.py``, ``service.py``,
``job.py`` as needed) whose ``__init__.py`` defines ``CAPABILITY``; adding one is that folder
plus one line in :data:`BUILTIN`. The API factory registers ``routes``, the job registry calls
``jobs`` and the command line adds ``cli()``. A capability that fails to import fails start-up:
nothing is skipped silently.

>>> from appliance.capabilities import BUILTIN
>>> [c.name for c in BUILTIN]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the package itself stays light: the SDK and CLI import it without Flask
    import click
    from flask import Flask
    from flask_limiter import Limiter

    from appliance._internal.web.http import Api


@dataclass(frozen=True, kw_only=True)
class Capability:
    """What a capability adds; each hook imports its own modules when it is called, so that a
    light install (SDK + CLI) never imports the server side."""

    name: str
    routes: Callable[[Flask, Api, Limiter], None] | None = None
    jobs: Callable[[], None] | None = None
    # a command group, or several top-level commands
    cli: Callable[[], click.Command | list[click.Command]] | None = None
    # (version, sql) pairs; each capability owns a range of versions: provenance 100-199,
    # unlearning 200-299, console 300-399, model signing 400-499 (the core keeps 1-99)
    migrations: tuple[tuple[int, str], ...] = ()
    extra: dict[str, Any] | None = None


# each capability's package imports Capability from here, so it is imported after the class
from appliance.capabilities.catalog import CAPABILITY as CATALOG  # noqa: E402
from appliance.capabilities.console import CAPABILITY as CONSOLE  # noqa: E402
from appliance.capabilities.evaluation import CAPABILITY as EVALUATION  # noqa: E402
from appliance.capabilities.inference import CAPABILITY as INFERENCE  # noqa: E402
from appliance.capabilities.ownership import CAPABILITY as OWNERSHIP  # noqa: E402
from appliance.capabilities.provenance import CAPABILITY as PROVENANCE  # noqa: E402
from appliance.capabilities.refinement import CAPABILITY as REFINEMENT  # noqa: E402
from appliance.capabilities.signatures import CAPABILITY as SIGNATURES  # noqa: E402
from appliance.capabilities.unlearning import CAPABILITY as UNLEARNING  # noqa: E402

BUILTIN: tuple[Capability, ...] = (CATALOG, EVALUATION, OWNERSHIP, INFERENCE, REFINEMENT,
                                   PROVENANCE, UNLEARNING, SIGNATURES, CONSOLE)


def model_signature_verifier() -> Callable[..., dict[str, Any]] | None:
    """The hook that checks a model.sig uploaded with a model (``extra`` of a capability),
    or None when no capability verifies model signatures."""
    for capability in BUILTIN:
        hook = (capability.extra or {}).get("verify_model_signature")
        if hook is not None:
            return hook  # type: ignore[no-any-return]
    return None


def migrations() -> list[tuple[int, str]]:
    """Every capability's store migrations (the store applies them after its own)."""
    return [migration for capability in BUILTIN for migration in capability.migrations]


def register_routes(app: Flask, api: Api, limiter: Limiter) -> None:
    """Register every capability's routes on the app (called by the app factory)."""
    for capability in BUILTIN:
        if capability.routes is not None:
            capability.routes(app, api, limiter)


def register_jobs() -> None:
    """Register every capability's job kinds (called once by the job registry)."""
    for capability in BUILTIN:
        if capability.jobs is not None:
            capability.jobs()


def cli_groups() -> list[click.Command]:
    """Every capability's commands, for the ``appliance`` command line."""
    commands: list[click.Command] = []
    for capability in BUILTIN:
        if capability.cli is not None:
            made = capability.cli()
            commands.extend(made if isinstance(made, list) else [made])
    return commands
