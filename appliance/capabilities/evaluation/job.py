"""The ``evaluation`` job: accuracy, loss, confusion matrix and calibration (ECE) of a
classifier on a labelled dataset, or embedding export for an encoder."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from appliance._internal.auth import Principal
from appliance._internal.jobs.kinds import JobKind, JobOutcome, register_job_kind
from appliance._internal.jobs.runner import JobContext
from appliance._internal.store import Store
from appliance.capabilities.catalog.jobs import load_job_model, model_digests
from appliance.capabilities.catalog.schemas import DatasetInput, ModelInput
from appliance.capabilities.catalog.service import dataset_input, model_input, read_dataset
from appliance.errors import JobFailed
from models.evaluation import evaluate_classifier, export_embeddings

VERSION = "1.1.0"
# Above this many classes the C x C confusion matrix leaves the signed report: its cells grow
# quadratically (2000 classes made a 22.7 MB report), so the report binds the matrix's digest
# as an artifact and keeps a bounded summary.
DENSE_CONFUSION_MAX_CLASSES = 64
TOP_CONFUSIONS = 20
CONFUSION_ARTIFACT = "confusion_matrix.npz"


class EvaluationParams(BaseModel):
    """Evaluate a registered model on a registered dataset."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(min_length=1, max_length=64)
    dataset_id: str = Field(min_length=1, max_length=64)
    batch_size: int = Field(default=256, ge=1, le=8192)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    n_bins: int = Field(default=15, ge=2, le=100)


class EvaluationInputs(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: ModelInput
    dataset: DatasetInput


def _resolve(store: Store, principal: Principal, params: EvaluationParams) -> EvaluationInputs:
    model = store.get_owned("models", principal.tenant_id, params.model_id, "model")
    dataset = store.get_owned("datasets", principal.tenant_id, params.dataset_id, "dataset")
    return EvaluationInputs(model=ModelInput.model_validate(model_input(model)),
                            dataset=DatasetInput.model_validate(dataset_input(dataset)))


def _run(ctx: JobContext, params: EvaluationParams, inputs: EvaluationInputs) -> JobOutcome:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = load_job_model(ctx, inputs.model, params.device)
    data = read_dataset(ctx.settings, ctx.blob_path(inputs.dataset.sha256))
    timings["load_seconds"] = time.perf_counter() - t0
    ctx.log(f"loaded {inputs.model.name} on {model.device}; {len(data.x)} samples")
    ctx.progress(0.02)

    def progress(fraction: float) -> None:
        ctx.progress(0.02 + 0.96 * fraction)

    kind = inputs.model.kind
    t1 = time.perf_counter()
    extra: dict[str, Any] | None = None
    if kind == "encoder":
        embeddings = export_embeddings(model, data.x, batch_size=params.batch_size,
                                       progress=progress)
        buf = io.BytesIO()
        np.save(buf, embeddings.astype(np.float32), allow_pickle=False)
        digest = ctx.save_artifact(buf.getvalue())
        norms = np.linalg.norm(embeddings, axis=1)
        statistics: dict[str, Any] = {
            "n": int(embeddings.shape[0]), "dim": int(embeddings.shape[1]),
            "mean_norm": float(norms.mean()), "std_norm": float(norms.std()),
        }
        extra = {"artifacts": {"embeddings.npy": digest}}
    elif kind == "classifier":
        if data.y is None:
            raise JobFailed("evaluating a classifier needs a dataset with labels ('y')")
        statistics = evaluate_classifier(model, data, batch_size=params.batch_size,
                                         n_bins=params.n_bins, progress=progress)
        artifact = bound_confusion_matrix(statistics, ctx.save_artifact)
        if artifact is not None:
            extra = {"artifacts": {CONFUSION_ARTIFACT: artifact}}
    else:
        raise JobFailed(f"evaluation does not support models of kind {kind!r}")
    timings["evaluate_seconds"] = time.perf_counter() - t1
    ctx.progress(1.0)
    return JobOutcome(
        method="evaluation",
        version=VERSION,
        parameters=params.model_dump(mode="json"),
        inputs={"model": model_digests(inputs.model),
                "dataset": {"id": inputs.dataset.id, "sha256": inputs.dataset.sha256,
                            "n": inputs.dataset.n}},
        statistics=statistics,
        device=model.device,
        timings=timings,
        extra=extra,
    )


def bound_confusion_matrix(statistics: dict[str, Any],
                           save_artifact: Callable[[bytes], str]) -> str | None:
    """Keep ``statistics`` bounded in the class count: a confusion matrix of more than
    :data:`DENSE_CONFUSION_MAX_CLASSES` classes is saved as a compressed ``.npz`` artifact
    (key ``confusion_matrix``: int64, rows true, columns predicted) and replaced by its digest,
    shape and a summary (nonzero cells, the largest confusions). Returns the artifact's
    digest, or ``None`` when the matrix stayed inline."""
    matrix = np.asarray(statistics["confusion_matrix"], dtype=np.int64)
    classes = matrix.shape[0]
    if classes <= DENSE_CONFUSION_MAX_CLASSES:
        return None
    buf = io.BytesIO()
    # mostly zeros: compressed, 2000 classes take ~0.1 MB instead of 32 MB
    np.savez_compressed(buf, confusion_matrix=matrix)
    digest = save_artifact(buf.getvalue())
    off_diagonal = matrix.copy()
    np.fill_diagonal(off_diagonal, 0)
    flat = off_diagonal.ravel()
    count = min(TOP_CONFUSIONS, int(np.count_nonzero(flat)))
    top = np.argpartition(flat, -count)[-count:] if count else np.array([], dtype=np.int64)
    top = top[np.lexsort((top, -flat[top]))]  # by count, then by cell: deterministic
    del statistics["confusion_matrix"]
    statistics["confusion_matrix_artifact"] = {
        "name": CONFUSION_ARTIFACT, "sha256": digest, "shape": [classes, classes],
        "dtype": "int64", "nonzero_cells": int(np.count_nonzero(matrix)),
        "correct": int(np.trace(matrix)),
        "top_confusions": [
            {"true": int(i // classes), "predicted": int(i % classes), "count": int(flat[i])}
            for i in top],
        "note": f"{classes} classes exceed the {DENSE_CONFUSION_MAX_CLASSES} whose confusion "
                "matrix is signed inline; this report signs the matrix's sha256 instead (rows "
                "true, columns predicted)",
    }
    return digest


register_job_kind(
    JobKind(
        name="evaluation",
        params_model=EvaluationParams,
        resolve=_resolve,
        run=_run,
        inputs_model=EvaluationInputs,
        description="Accuracy, loss, confusion matrix and ECE of a classifier; embeddings of "
        "an encoder.",
    )
)
