"""Registry of interchangeable audit methods (Opacus-accountant style).

    method = create_method("dov4cl")
    result = method.run(inputs, params={"rounds": 50}, seed=0)
    result.verdict, result.p_value

Methods register themselves with :func:`register_method`; :func:`create_method` builds one
by name and raises ``ValueError`` listing the known names for an unknown one.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from appliance.audits.errors import AuditInputError, AuditParameterError

ProgressFn = Callable[[float], None]
LogFn = Callable[[str], None]

VERDICT_POSITIVE = "trained_on_dataset"
VERDICT_NEGATIVE = "not_detected"


@dataclass
class AuditResult:
    """Outcome of one audit: the test's statistics, p-value and verdict at ``alpha``.

    ``queries`` counts inputs sent to the suspect; ``parameters`` are the effective
    parameters (defaults filled in, seed included); ``timings`` are seconds per phase.
    """

    method: str
    version: str
    statistics: dict[str, Any]
    p_value: float
    verdict: str
    alpha: float
    queries: int
    parameters: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (floats and ints only, no arrays)."""
        return asdict(self)


def _ignore(*_: Any) -> None:
    return None


class AuditMethod(ABC):
    """An audit algorithm: ``run`` takes inputs, parameters and a seed and returns a result.

    Subclasses set ``name``, ``version`` and ``inputs_type`` and implement :meth:`defaults`
    and :meth:`execute`; :meth:`run` is the template every method shares: it merges and checks
    the parameters, checks the inputs' type and the seed, times the whole run, and fills the
    result's effective parameters. Methods are stateless between runs unless they override
    ``state_dict``.
    """

    name: str = ""
    version: str = "0"
    inputs_type: type | None = None

    @classmethod
    @abstractmethod
    def defaults(cls) -> dict[str, Any]:
        """The method's parameters and their default values."""

    def resolve_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Merge ``params`` over :meth:`defaults`; unknown keys raise ``AuditParameterError``."""
        merged = self.defaults()
        for key, value in (params or {}).items():
            if key not in merged:
                raise AuditParameterError(
                    f"unknown parameter {key!r} for method {self.name!r}; accepted: {sorted(merged)}"
                )
            merged[key] = value
        return merged

    def check_params(self, params: dict[str, Any]) -> None:
        """Refuse parameter values out of range (``AuditParameterError``); the base checks a
        significance level ``alpha`` where the method has one."""
        if "alpha" in params:
            alpha = params["alpha"]
            if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
                raise AuditParameterError(f"alpha must be a number in (0, 1), got {alpha!r}")

    def run(
        self,
        inputs: Any,
        *,
        params: Mapping[str, Any] | None = None,
        seed: int,
        progress: ProgressFn | None = None,
        log: LogFn | None = None,
    ) -> AuditResult:
        """Run the audit; deterministic for ``seed``. Raises ``AuditError`` subclasses."""
        started = time.perf_counter()
        merged = self.resolve_params(params)
        self.check_params(merged)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise AuditParameterError(f"seed must be an integer, got {seed!r}")
        if self.inputs_type is not None and not isinstance(inputs, self.inputs_type):
            raise AuditInputError(
                f"{self.name} expects a {self.inputs_type.__name__}, got {type(inputs).__name__}")
        report = progress or _ignore
        result = self.execute(inputs, merged, seed=seed, progress=report, log=log or _ignore)
        result.parameters = {**merged, **result.parameters, "seed": seed}
        result.timings.setdefault("total_s", time.perf_counter() - started)
        report(1.0)
        return result

    @abstractmethod
    def execute(self, inputs: Any, params: dict[str, Any], *, seed: int, progress: ProgressFn,
                log: LogFn) -> AuditResult:
        """The method itself, on checked inputs and complete parameters."""

    def state_dict(self) -> dict[str, Any]:
        """Serializable state (empty for stateless methods)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (no-op for stateless methods)."""
        if state:
            raise ValueError(f"method {self.name!r} is stateless; got state keys {sorted(state)}")


_METHODS: dict[str, type[AuditMethod]] = {}
_LOCK = threading.Lock()


def register_method(name: str, cls: type[AuditMethod]) -> None:
    """Register ``cls`` under ``name``; re-registering another class raises ``ValueError``."""
    if not isinstance(name, str) or not name:
        raise ValueError("method name must be a non-empty string")
    if not (isinstance(cls, type) and issubclass(cls, AuditMethod)):
        raise TypeError("cls must be an AuditMethod subclass")
    with _LOCK:
        existing = _METHODS.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"audit method {name!r} is already registered")
        _METHODS[name] = cls


def _load_builtins() -> None:
    """Import the built-in methods (each registers itself); a broken one is an ImportError
    here, never a method that silently goes missing."""
    import appliance.audits.ownership.dov4cl
    import appliance.audits.ownership.watermark
    import appliance.audits.provenance.trainprove
    import appliance.audits.unlearning  # noqa: F401


def list_methods() -> list[str]:
    """Names of all registered methods."""
    _load_builtins()
    with _LOCK:
        return sorted(_METHODS)


def create_method(name: str, **kwargs: Any) -> AuditMethod:
    """Instantiate the method registered as ``name``; unknown names raise ``ValueError``."""
    _load_builtins()
    with _LOCK:
        cls = _METHODS.get(name) if isinstance(name, str) else None
        known = sorted(_METHODS)
    if cls is None:
        raise ValueError(f"unknown audit method {name!r}; known methods: {', '.join(known)}")
    return cls(**kwargs)


__all__ = [
    "VERDICT_NEGATIVE",
    "VERDICT_POSITIVE",
    "AuditMethod",
    "AuditResult",
    "LogFn",
    "ProgressFn",
    "create_method",
    "list_methods",
    "register_method",
]
