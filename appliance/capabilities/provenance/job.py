"""The ``provenance`` job kind: TrainProVe against one registered or remote generator, or
source attribution over several registered generators; the suspect is a registered
classifier or a remote endpoint."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pydantic import BaseModel

from appliance._internal.auth import Principal
from appliance._internal.jobs.kinds import JobKind, JobOutcome, register_job_kind
from appliance._internal.jobs.runner import JobContext
from appliance._internal.store import Store
from appliance.audits.egress import EgressGuard, check_endpoint_url
from appliance.audits.errors import AuditError
from appliance.audits.provenance.trainprove import ProvenanceInputs, ReferenceSet, TrainProVe
from appliance.audits.suspects import RemoteEndpoint
from appliance.capabilities.catalog.jobs import load_job_model, model_digests
from appliance.capabilities.catalog.schemas import DatasetInput, ModelInput
from appliance.capabilities.catalog.service import dataset_input, model_input, read_dataset
from appliance.capabilities.provenance.plots import register_plots
from appliance.capabilities.provenance.schemas import ProvenanceParams
from appliance.capabilities.provenance.service import (
    BuiltEvidence,
    RemoteGenerator,
    build_dataset_evidence,
    build_evidence,
)
from appliance.errors import JobFailed, UnprocessableInput
from models.errors import ModelError
from models.generators import registered_generator

VERSION = "1.0.0"


class ProvenanceInputsJob(BaseModel):
    """What a provenance job runs on: the registered generators, reference and candidate
    datasets, and the registered suspect (absent for a remote one)."""

    generators: list[ModelInput] = []
    references: list[DatasetInput] = []
    candidates: list[DatasetInput] = []
    suspect: ModelInput | None = None


def _resolve(store: Store, principal: Principal, params: ProvenanceParams) -> ProvenanceInputsJob:
    tenant = principal.tenant_id
    inputs = ProvenanceInputsJob()
    for generator_id in params.generator_model_ids or []:
        row = store.get_owned("models", tenant, generator_id, "model")
        if row["kind"] != "generator":
            raise UnprocessableInput(f"model {generator_id} is a {row['kind']}, not a generator",
                                     hint="register generators with kind 'generator'")
        inputs.generators.append(ModelInput.model_validate(model_input(row)))
    if params.generator_endpoint is not None:
        check_endpoint_url(params.generator_endpoint.url)
    for role, ids in ((inputs.references, params.reference_dataset_ids),
                      (inputs.candidates, params.candidate_dataset_ids)):
        for dataset_id in ids or []:
            dataset = DatasetInput.model_validate(dataset_input(store.get_owned("datasets", tenant, dataset_id,
                                                                                "dataset")))
            if dataset.format != "npz" or not dataset.has_labels:
                raise UnprocessableInput(f"dataset {dataset_id} must be a labelled .npz dataset (x, y)",
                                         hint="register real samples of the generator's shape with integer labels")
            role.append(dataset)
    if params.suspect_model_id:
        row = store.get_owned("models", tenant, params.suspect_model_id, "model")
        if row["kind"] != "classifier":
            raise UnprocessableInput(f"the suspect must be a classifier; model {row['id']} is a {row['kind']}")
        inputs.suspect = ModelInput.model_validate(model_input(row))
    else:
        assert params.suspect_endpoint is not None
        check_endpoint_url(params.suspect_endpoint.url)
    return inputs


def _suspect(ctx: JobContext, params: ProvenanceParams, inputs: ProvenanceInputsJob) -> tuple[Any, Any, dict[str, Any]]:
    if params.suspect_endpoint is not None:
        ep = params.suspect_endpoint
        endpoint = RemoteEndpoint(ep.url, kind=params.suspect_output, timeout_s=ep.timeout_s,
                                  retries=ep.retries, query_budget=ep.query_budget, max_batch=ep.max_batch,
                                  guard=EgressGuard.from_environment())
        return endpoint, endpoint.close, {"endpoint": ep.url}
    assert inputs.suspect is not None  # the parameters name a registered or a remote suspect
    model = load_job_model(ctx, inputs.suspect, "cpu")
    if params.suspect_output == "proba":
        return (lambda x: model.predict(x)), None, model_digests(inputs.suspect)
    return (lambda x: np.argmax(model.predict(x), axis=1)), None, model_digests(inputs.suspect)


def _real_data(ctx: JobContext, d: DatasetInput, shape: tuple[int, ...],
               num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A registered real dataset's ``(x, y)``; a failed job with the reason when its sample shape
    is not the generator's, a label lies outside its classes or a sample is not finite."""
    data = read_dataset(ctx.settings, ctx.blob_path(d.sha256), require_labels=True)
    x = np.asarray(data.x, dtype=np.float32)
    y = np.asarray(data.y)
    if tuple(x.shape[1:]) != shape:
        raise JobFailed(f"dataset {d.id} holds samples of shape {tuple(x.shape[1:])}; the generator's are {shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
        raise JobFailed(f"dataset {d.id}: labels must be integers in [0, {num_classes})")
    if not np.isfinite(x).all():
        raise JobFailed(f"dataset {d.id} contains NaN or infinite samples")
    return x, y.astype(np.int64)


def _references(ctx: JobContext, datasets: list[DatasetInput], built: list[Any]) -> list[Any]:
    """The reference datasets as :class:`ReferenceSet` (checked by :func:`_real_data`)."""
    shape = tuple(built[0].evidence.val_x.shape[1:])
    num_classes = int(built[0].evidence.val_y.max()) + 1
    return [ReferenceSet(f"dataset:{d.id}", *_real_data(ctx, d, shape, num_classes)) for d in datasets]


def _run(ctx: JobContext, params: ProvenanceParams, inputs: ProvenanceInputsJob) -> JobOutcome:
    started = time.perf_counter()
    timings = {"sampling_seconds": 0.0, "shadow_training_seconds": 0.0}
    # per tenant: "reused" must not tell one tenant that another audited the same generator
    cache_root = ctx.cache_dir(f"provenance-shadows/{ctx.tenant_id}")
    built: list[BuiltEvidence] = []
    closers: list[Any] = []
    generator_digests: list[dict[str, Any]] = []
    # 0 -> 0.8 over the sources, moving as each source's shadows train (most of an audit's time)
    sources = len(inputs.generators) + (params.generator_endpoint is not None) + len(inputs.candidates)

    def progress(done: int, total: int) -> None:
        ctx.progress(0.8 * (len(built) + done / max(1, total)) / max(1, sources))

    try:
        try:
            for gen in inputs.generators:
                config = gen.config or {}
                loaded = registered_generator(ctx.blob_path(gen.blob), gen.format, gen.architecture, config)
                name = gen.name if params.sources > 1 else "generator"
                built.append(build_evidence(name, loaded, gen.blob,
                                            num_classes=int(config["num_classes"]), params=params,
                                            cache_root=cache_root, log=ctx.log, progress=progress))
                generator_digests.append({**model_digests(gen), "class_names": config.get("class_names")})
                progress(0, 1)
            if params.generator_endpoint is not None:
                remote = RemoteGenerator(params.generator_endpoint)
                closers.append(remote.close)
                fingerprint = remote.fingerprint()
                ctx.log(f"generator endpoint fingerprint {fingerprint[:12]} ({remote.samples} samples)")
                digest = f"endpoint:{params.generator_endpoint.url}#{fingerprint}"
                built.append(build_evidence("generator", remote, digest,
                                            num_classes=params.generator_endpoint.num_classes, params=params,
                                            cache_root=cache_root, log=ctx.log, progress=progress))
                generator_digests.append({"endpoint": params.generator_endpoint.url, "fingerprint": fingerprint,
                                          "samples_drawn": remote.samples})
                progress(0, 1)
            shape, num_classes = tuple(built[0].evidence.val_x.shape[1:]), int(built[0].evidence.val_y.max()) + 1
            for d in inputs.candidates:
                x, y = _real_data(ctx, d, shape, num_classes)
                built.append(build_dataset_evidence(f"dataset:{d.id}", x, y, d.sha256, num_classes=num_classes,
                                                    params=params, cache_root=cache_root, log=ctx.log,
                                                    progress=progress))
                generator_digests.append({"dataset": d.id, "sha256": d.sha256, "n": d.n})
                progress(0, 1)
            references = _references(ctx, inputs.references, built)
            for b in built:
                for key, value in b.timings.items():
                    timings[key] += value
            suspect, closer, suspect_digest = _suspect(ctx, params, inputs)
            if closer is not None:
                closers.append(closer)
            budget = params.suspect_endpoint.query_budget if params.suspect_endpoint else None
            try:
                result = TrainProVe().run(
                    ProvenanceInputs([b.evidence for b in built], suspect, suspect_kind=params.suspect_output,
                                     query_budget=budget, references=references),
                    params={"alpha": params.alpha, "variant": params.variant, "decision": params.decision,
                            "grubbs_mode": params.grubbs_mode},
                    seed=params.seed, log=ctx.log)
            except AuditError as exc:
                shape = tuple(built[0].evidence.val_x.shape[1:])
                raise JobFailed(f"querying the suspect on generator samples of shape {shape} failed: {exc}") from None
        except (ModelError, AuditError) as exc:
            raise JobFailed(str(exc)) from None
    finally:
        for close in closers:
            close()
    timings["suspect_queries_seconds"] = float(result.timings.get("suspect_queries_seconds", 0.0))
    timings["audit_seconds"] = time.perf_counter() - started
    statistics = dict(result.statistics)
    statistics["queries"] = result.queries
    statistics["shadow_provenance"] = [b.provenance for b in built]
    ctx.progress(1.0)
    return JobOutcome(
        method="provenance/trainprove", version=f"{VERSION}+{result.version}",
        parameters={**params.model_dump(mode="json"), "effective": result.parameters},
        inputs={"generators": generator_digests, "suspect": suspect_digest,
                "reference_datasets": [{"id": d.id, "sha256": d.sha256, "n": d.n}
                                       for d in inputs.references]},
        statistics=statistics, p_value=float(result.p_value), verdict=result.verdict,
        alpha=float(result.alpha), seed=params.seed, device="cpu", timings=timings,
    )


def register() -> None:
    """Register the ``provenance`` job kind and its report plots."""
    register_job_kind(JobKind(
        name="provenance", params_model=ProvenanceParams, resolve=_resolve, run=_run,
        inputs_model=ProvenanceInputsJob,
        description="Training-data provenance (TrainProVe): was the suspect trained on samples of this "
                    "generator? Several generators: which one explains the suspect best."))
    register_plots()
