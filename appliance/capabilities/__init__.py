"""The one list of capabilities and what each one contributes to the appliance.

A capability is one folder here (``schemas.py`` pydantic-only, ``routes.py``, ``service.py``,
``job.py`` as needed) whose ``__init__.py`` defines ``CAPABILITY``; adding one is that folder
plus one line in :data:`BUILTIN`. The API factory registers ``routes``, the job registry calls
``jobs`` and the command line adds ``cli()``. A capability that fails to import fails start-up:
nothing is skipped silently.

An operator (or a test) adds capabilities from outside the package with
``APPLIANCE_CAPABILITIES="package.module[:ATTRIBUTE],..."`` (``CAPABILITY`` by default); a name
that does not import, or that names no :class:`Capability`, stops start-up with
:class:`CapabilityLoadError`.

>>> from appliance.capabilities import BUILTIN
>>> [c.name for c in BUILTIN]  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.errors import ApplianceError

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


class CapabilityLoadError(ApplianceError):
    """A capability named in ``APPLIANCE_CAPABILITIES`` cannot be loaded."""

    slug = "capability-load-failed"
    title = "Capability cannot be loaded"
    hint = ("check the spelling of each entry of APPLIANCE_CAPABILITIES "
            "('package.module' or 'package.module:ATTRIBUTE') and that the module is installed")


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


def _load_extra(entry: str) -> Capability:
    module_name, _, attribute = entry.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CapabilityLoadError(
            f"capability {entry!r} (APPLIANCE_CAPABILITIES) could not be imported: {exc}") from exc
    found = getattr(module, attribute or "CAPABILITY", None)
    if not isinstance(found, Capability):
        raise CapabilityLoadError(
            f"capability {entry!r} (APPLIANCE_CAPABILITIES) names no Capability: "
            f"{module_name}.{attribute or 'CAPABILITY'} is {type(found).__name__}")
    return found


def installed() -> tuple[Capability, ...]:
    """:data:`BUILTIN` plus the operator's ``APPLIANCE_CAPABILITIES`` (loaded now, so a
    misspelt entry fails whatever is starting: the API, a worker or the command line)."""
    entries = [e.strip() for e in os.environ.get("APPLIANCE_CAPABILITIES", "").split(",") if e.strip()]
    found = BUILTIN + tuple(_load_extra(entry) for entry in entries)
    names = [capability.name for capability in found]
    if len(set(names)) != len(names):
        raise CapabilityLoadError(f"capability names must be unique, got {names}")
    return found


def model_signature_verifier() -> Callable[..., dict[str, Any]] | None:
    """The hook that checks a model.sig uploaded with a model (``extra`` of a capability),
    or None when no capability verifies model signatures."""
    for capability in installed():
        hook = (capability.extra or {}).get("verify_model_signature")
        if hook is not None:
            return hook  # type: ignore[no-any-return]
    return None


def migrations() -> list[tuple[int, str]]:
    """Every capability's store migrations (the store applies them after its own)."""
    return [migration for capability in installed() for migration in capability.migrations]


def register_routes(app: Flask, api: Api, limiter: Limiter) -> None:
    """Register every capability's routes on the app (called by the app factory)."""
    for capability in installed():
        if capability.routes is not None:
            capability.routes(app, api, limiter)


def register_jobs() -> None:
    """Register every capability's job kinds (called once by the job registry)."""
    for capability in installed():
        if capability.jobs is not None:
            capability.jobs()


def cli_groups() -> list[click.Command]:
    """Every capability's commands, for the ``appliance`` command line."""
    commands: list[click.Command] = []
    for capability in installed():
        if capability.cli is not None:
            made = capability.cli()
            commands.extend(made if isinstance(made, list) else [made])
    return commands
