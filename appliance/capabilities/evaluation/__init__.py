"""Evaluation: accuracy, confusion matrix and calibration of a registered model on a dataset
(job kind ``evaluation``)."""

from __future__ import annotations

from appliance.capabilities import Capability


def _jobs() -> None:
    from appliance.capabilities.evaluation import job  # noqa: F401  (registers the job kind)


CAPABILITY = Capability(name="evaluation", jobs=_jobs)
