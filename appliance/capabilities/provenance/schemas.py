"""Request and answer shapes of the provenance capability (pydantic only: the SDK imports it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from appliance.schemas import SuspectEndpoint


class GeneratorEndpoint(BaseModel):
    """A generator behind an HTTP URL: ``POST {"labels", "seed", "temperature"}`` answers
    ``{"outputs": [...]}`` with one sample per label."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=8, max_length=2048)
    num_classes: int = Field(ge=2, le=10_000)
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    retries: int = Field(default=2, ge=0, le=10)
    sample_budget: int | None = Field(default=None, ge=1, le=10_000_000)
    max_batch: int = Field(default=256, ge=1, le=4096)


class ProvenanceParams(BaseModel):
    """Parameters of a provenance audit; one generator is the yes/no test, several (registered
    ids) are source attribution."""

    model_config = ConfigDict(extra="forbid")

    generator_model_ids: list[str] | None = Field(default=None, min_length=1, max_length=6)
    generator_endpoint: GeneratorEndpoint | None = None
    suspect_model_id: str | None = Field(default=None, max_length=64)
    suspect_endpoint: SuspectEndpoint | None = None
    suspect_output: Literal["label", "proba"] = "label"
    variant: Literal["accuracy", "entropy", "similarity"] = "accuracy"
    candidate_dataset_ids: list[str] | None = Field(
        default=None, min_length=1, max_length=2,
        description="registered labelled .npz datasets of real data as candidate sources beside the "
        "generators (attribution): half of each class validates, the other half trains its shadows")
    reference_dataset_ids: list[str] | None = Field(
        default=None, min_length=1, max_length=4,
        description="registered labelled .npz datasets of real data (samples of the generator's shape): "
        "references of the contrast test beside the other candidate generators' samples")
    decision: Literal["auto", "error_location_hot", "error_location", "contrast", "model_level", "calibrated",
                      "paper"] = Field(
        default="auto", description="which test decides: auto (the default) takes error_location where it "
        "applies (accuracy variant, shadows >= 3) and calibrated otherwise; error_location asks where the "
        "suspect errs on the generator's samples given how often, against the shadows' lowest-margin "
        "samples at the same error count (labels suffice; on the digits benchmark calibrated on both "
        "source sets and the most accurate); error_location_hot adds the same statistic on hot probes "
        "(n_probe per class drawn from the generator at t_probe, queried too) and tests the sum of the two "
        "standardised statistics once (calibrated on the benchmark, its gain depends on the probe draw); "
        "calibrated pools all shadows' batches (Grubbs); contrast "
        "takes the suspect's accuracy on the generator's samples relative to reference samples against "
        "the shadow models' (needs a reference: another candidate source or a reference dataset); "
        "model_level tests the suspect against the shadow models' values (prediction interval); paper "
        "takes the first shadow's batches (Grubbs, the paper's). The report has all of them and names "
        "the one that decided")
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    grubbs_mode: Literal["table", "exact", "designated"] = Field(
        default="table", description="Grubbs critical value: the published table (alpha/2n, the paper's), "
        "exact most-extreme (alpha/n), or designated-value (alpha, exact level for the suspect)")
    n_shadow: int = Field(default=300, ge=5, le=5000, description="shadow samples per class")
    n_val: int = Field(default=200, ge=4, le=5000, description="validation samples per class")
    batches: int = Field(default=20, ge=2, le=200, description="validation batches (divides n_val)")
    t_shadow: float = Field(default=1.0, gt=0, le=10)
    t_val: float = Field(default=1.2, gt=0, le=10)
    n_probe: int = Field(default=50, ge=2, le=5000, description="hot probes per class (error_location_hot)")
    t_probe: float = Field(default=2.0, gt=0, le=10, description="temperature of the hot probes")
    shadows: int = Field(default=24, ge=1, le=64, description="shadow models: the paper's MLP on the shadow "
                         "set, then varied recipes (small CNN / MLP), each on its own draw from the generator "
                         "(the benchmark's figures are for 24; 12 scored 4-8 points lower on the same suspects)")
    shadow_epochs: int = Field(default=20, ge=1, le=500)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    use_cache: bool = True

    @property
    def has_reference(self) -> bool:
        """Whether the contrast test has reference samples (another generator or real data)."""
        return self.sources > 1 or bool(self.reference_dataset_ids)

    @property
    def sources(self) -> int:
        """How many candidate sources the audit tests (generators and real datasets)."""
        return len(self.generator_model_ids or []) + (self.generator_endpoint is not None) + \
            len(self.candidate_dataset_ids or [])

    @model_validator(mode="after")
    def _check(self) -> ProvenanceParams:
        if (self.generator_model_ids is None) == (self.generator_endpoint is None):
            raise ValueError("give exactly one of generator_model_ids and generator_endpoint")
        if (self.suspect_model_id is None) == (self.suspect_endpoint is None):
            raise ValueError("give exactly one of suspect_model_id and suspect_endpoint")
        if self.n_val % self.batches:
            raise ValueError("n_val must be a multiple of batches")
        if self.variant == "similarity" and self.shadows < 2:
            raise ValueError("the similarity variant needs shadows >= 2")
        if self.decision == "error_location_hot" and self.candidate_dataset_ids:
            raise ValueError("the error_location_hot test draws hot probes from generators; candidate datasets "
                             "have none (use error_location)")
        if self.decision in ("model_level", "contrast", "error_location", "error_location_hot") and self.shadows < 3:
            raise ValueError(f"the {self.decision} test needs shadows >= 3")
        if self.decision == "contrast" and not self.has_reference:
            raise ValueError("the contrast test needs a reference: several generator_model_ids or "
                             "reference_dataset_ids")
        if self.decision in ("contrast", "error_location", "error_location_hot") and self.variant != "accuracy":
            raise ValueError(f"the {self.decision} test uses the accuracy variant")
        datasets = (self.reference_dataset_ids or []) + (self.candidate_dataset_ids or [])
        if len(set(datasets)) != len(datasets):
            raise ValueError("reference_dataset_ids and candidate_dataset_ids must be distinct")
        if self.variant != "accuracy" and self.suspect_output != "proba":
            raise ValueError(f"the {self.variant} variant needs suspect_output 'proba'")
        if self.generator_model_ids and len(set(self.generator_model_ids)) != len(self.generator_model_ids):
            raise ValueError("generator_model_ids must be distinct")
        return self


__all__ = ["GeneratorEndpoint", "ProvenanceParams", "SuspectEndpoint"]
