"""The unlearning capability's logic (no Flask): resolve a job's inputs, run the audit battery
or an unlearning algorithm, and shape the signed report.

Refusals a caller can fix are raised before a job is queued (422): a model that is not a causal
LM or whose folder lacks a fast tokenizer or asks for remote code, datasets that are not JSONL,
forget and holdout sets that overlap. What needs the model loaded (items past its context) fails
the job with the reason.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from appliance._internal.auth import Principal
from appliance._internal.jobs.kinds import JobOutcome
from appliance._internal.jobs.runner import JobContext
from appliance._internal.store import Store
from appliance.audits.errors import AuditError
from appliance.audits.unlearning import CORRECTION, UnlearningInputs, run_battery
from appliance.capabilities.catalog.jobs import job_model_path, model_digests
from appliance.capabilities.catalog.schemas import DatasetInput, ModelInput
from appliance.capabilities.catalog.service import dataset_input, model_input, transformers_dir
from appliance.capabilities.unlearning.schemas import UnlearningAuditParams, UnlearnParams
from appliance.errors import JobFailed, UnprocessableInput
from models.errors import ModelError
from models.formats import tar_folder
from models.lm import CausalLM, check_causal_lm_dir
from models.textdata import parse_jsonl
from models.unlearning.algorithms import unlearn
from models.unlearning.corpus import QAItem

VERSION = "1.0.0"
AUDIT_METHOD = "unlearning/audit"
UNLEARN_METHOD = "unlearning/unlearn"


class AuditInputs(BaseModel):
    """What an unlearning audit runs on: the audited model (and the reference and original
    where given) and the text datasets, as registered."""

    model_config = ConfigDict(protected_namespaces=())

    model: ModelInput
    reference: ModelInput | None = None
    original: ModelInput | None = None
    forget: DatasetInput
    holdout: DatasetInput
    retain: DatasetInput | None = None


class UnlearnInputs(BaseModel):
    """What an unlearning run starts from: the source model, the forget and retain sets."""

    model_config = ConfigDict(protected_namespaces=())

    model: ModelInput
    forget: DatasetInput
    retain: DatasetInput


# -- resolving inputs (API node) -------------------------------------------------------------------
def _causal_lm(store: Store, principal: Principal, model_id: str, role: str) -> ModelInput:
    row = store.get_owned("models", principal.tenant_id, model_id, "model")
    if row["format"] != "transformers" or row["kind"] != "causal_lm":
        raise UnprocessableInput(
            f"the {role} model {model_id} is not a causal language model (it is a "
            f"{row['format']} {row['kind']})",
            hint="upload a transformers folder of a *ForCausalLM / *LMHeadModel as a tar")
    model = ModelInput.model_validate(model_input(row))
    try:
        check_causal_lm_dir(transformers_dir(store, model.blob))
    except ModelError as exc:
        raise UnprocessableInput(f"the {role} model {model_id} is refused: {exc}",
                                 hint=exc.hint) from None
    return model


def _text_dataset(store: Store, principal: Principal, dataset_id: str,
                  role: str) -> tuple[DatasetInput, list[Any]]:
    row = store.get_owned("datasets", principal.tenant_id, dataset_id, "dataset")
    dataset = DatasetInput.model_validate(dataset_input(row))
    if dataset.format != "jsonl":
        raise UnprocessableInput(f"the {role} dataset {dataset_id} is not a JSONL text dataset",
                                 hint="upload a .jsonl file with question/answer items")
    return dataset, parse_jsonl(store.blobs.path(row["digest"]).read_bytes())


def resolve_audit(store: Store, principal: Principal,
                  params: UnlearningAuditParams) -> AuditInputs:
    """The job inputs of an audit; refuses bad models, datasets and overlapping sets."""
    inputs: dict[str, Any] = {"model": _causal_lm(store, principal, params.model_id, "audited")}
    for role, model_id in (("reference", params.reference_model_id),
                           ("original", params.original_model_id)):
        if model_id is not None:
            inputs[role] = _causal_lm(store, principal, model_id, role)
    records = {}
    for role, dataset_id in (("forget", params.forget_dataset_id),
                             ("holdout", params.holdout_dataset_id),
                             ("retain", params.retain_dataset_id)):
        if dataset_id is not None:
            inputs[role], records[role] = _text_dataset(store, principal, dataset_id, role)
    overlap = {r.key() for r in records["forget"]} & {r.key() for r in records["holdout"]}
    if overlap:
        raise UnprocessableInput(
            f"the forget and holdout datasets overlap in {len(overlap)} item(s), e.g. "
            f"{sorted(overlap)[0][:80]!r}",
            hint="the holdout set must hold items of the same kind that the model never saw")
    for role in ("forget", "holdout"):
        if len(records[role]) < 5:
            raise UnprocessableInput(f"the {role} dataset needs at least 5 items")
    if params.audits and "patching_depth" in params.audits and (
            params.original_model_id is None or params.reference_model_id is None):
        raise UnprocessableInput("the patching_depth audit needs original_model_id and "
                                 "reference_model_id")
    return AuditInputs.model_validate(inputs)


def resolve_unlearn(store: Store, principal: Principal, params: UnlearnParams) -> UnlearnInputs:
    """The job inputs of an unlearning run."""
    return UnlearnInputs(
        model=_causal_lm(store, principal, params.model_id, "source"),
        forget=_text_dataset(store, principal, params.forget_dataset_id, "forget")[0],
        retain=_text_dataset(store, principal, params.retain_dataset_id, "retain")[0])


# -- running (worker) ----------------------------------------------------------------------------
def _records(ctx: JobContext, dataset: DatasetInput, limit: int | None = None) -> list[Any]:
    records = parse_jsonl(ctx.blob_path(dataset.sha256).read_bytes())
    return records[:limit] if limit is not None else records


def _load(ctx: JobContext, model: ModelInput, device: str) -> Any:
    return CausalLM.from_dir(job_model_path(ctx, model),
                             device=None if device == "auto" else device)


def _dataset_digest(dataset: DatasetInput, used: int) -> dict[str, Any]:
    return {"id": dataset.id, "name": dataset.name, "sha256": dataset.sha256, "n": dataset.n,
            "items_used": used}


def run_audit(ctx: JobContext, params: UnlearningAuditParams, inputs: AuditInputs) -> JobOutcome:
    """Run the battery; a :class:`JobOutcome` with every audit's statistics and verdicts."""
    started = time.perf_counter()
    given_models = {role: getattr(inputs, role) for role in ("model", "reference", "original")
                    if getattr(inputs, role) is not None}
    given_sets = {role: getattr(inputs, role) for role in ("forget", "holdout", "retain")
                  if getattr(inputs, role) is not None}
    models = {role: _load(ctx, model, params.device) for role, model in given_models.items()}
    ctx.progress(0.05)
    sets = {role: _records(ctx, dataset, params.max_items) for role, dataset in given_sets.items()}
    loaded = time.perf_counter()
    ctx.log(f"loaded {len(models)} model(s) on {models['model'].device}; "
            f"{len(sets['forget'])} forget, {len(sets['holdout'])} holdout items")
    audit_inputs = UnlearningInputs(
        model=models["model"], forget=sets["forget"], holdout=sets["holdout"],
        retain=sets.get("retain", []), reference=models.get("reference"),
        original=models.get("original"), template=params.template)
    try:
        battery = run_battery(audit_inputs, audits=params.audits, params=params.audit_params,
                              seed=params.seed, alpha=params.alpha,
                              progress=lambda f: ctx.progress(0.05 + 0.95 * f), log=ctx.log)
    except (AuditError, ModelError) as exc:
        raise JobFailed(str(exc), hint=exc.hint) from None
    digests: dict[str, Any] = {role: model_digests(model) for role, model in given_models.items()}
    for role, records in sets.items():
        digests[f"{role}_dataset"] = _dataset_digest(given_sets[role], len(records))
    statistics = battery.to_dict()
    ctx.log(f"overall: {battery.verdict} (by {battery.knowledge_audits or 'none'}); "
            f"detectably unlearned by {battery.unlearned_audits or 'none'}")
    return JobOutcome(
        method=AUDIT_METHOD, version=VERSION,
        parameters={**params.model_dump(mode="json"), "correction": CORRECTION,
                    "effective": {k: v.parameters for k, v in battery.results.items()}},
        inputs=digests, statistics=statistics, p_value=battery.min_adjusted_p(),
        verdict=battery.verdict, alpha=params.alpha, seed=params.seed,
        device=str(models["model"].device),
        timings={"load_seconds": loaded - started,
                 **{f"{k}_seconds": v.timings["seconds"] for k, v in battery.results.items()},
                 "audit_seconds": time.perf_counter() - started})


def run_unlearn(ctx: JobContext, params: UnlearnParams, inputs: UnlearnInputs) -> JobOutcome:
    """Unlearn the forget set, save the model as an artifact, report what was done."""
    import tempfile

    def items(records: list[Any]) -> list[Any]:
        if any(r.text for r in records):
            raise JobFailed("unlearning needs question/answer items, not text passages")
        return [QAItem(question=r.question, answer=r.answer,
                       paraphrased_question=r.paraphrased_question or r.question,
                       paraphrased_answer=r.paraphrased_answer or r.answer,
                       perturbed_answers=r.perturbed_answers, group=r.group) for r in records]

    started = time.perf_counter()
    source: CausalLM = _load(ctx, inputs.model, params.device)
    network: Any = source.model
    forget, retain = items(_records(ctx, inputs.forget)), items(_records(ctx, inputs.retain))
    ctx.log(f"unlearning {len(forget)} items with {params.algorithm} ({params.steps} steps, "
            f"lr {params.lr}) on {source.device}")
    ctx.progress(0.05)
    try:
        model, report = unlearn(network, source.tokenizer, forget, retain,
                                algorithm=params.algorithm, steps=params.steps, lr=params.lr,
                                seed=params.seed, template=params.template,
                                progress=lambda f: ctx.progress(0.05 + 0.85 * f),
                                **params.options)
    except (TypeError, ValueError) as exc:
        raise JobFailed(f"unlearning refused: {exc}") from None
    ctx.progress(0.9)
    with tempfile.TemporaryDirectory(dir=ctx.settings.tmp_dir) as tmp:
        folder = Path(tmp) / "model"
        model.save_pretrained(folder, safe_serialization=True)
        source.tokenizer.save_pretrained(folder)
        digest = ctx.save_artifact(tar_folder(folder))
    name = params.name or f"unlearned-{params.algorithm}-{inputs.model.name}"[:128]
    return JobOutcome(
        method=UNLEARN_METHOD, version=VERSION, parameters=params.model_dump(mode="json"),
        inputs={"model": model_digests(inputs.model),
                "forget_dataset": _dataset_digest(inputs.forget, len(forget)),
                "retain_dataset": _dataset_digest(inputs.retain, len(retain))},
        statistics={"algorithm": params.algorithm, **_json_ready(report)},
        seed=params.seed, device=str(source.device),
        timings={"unlearn_seconds": time.perf_counter() - started},
        extra={"artifacts": {"model.tar": digest}, "model_name": name})


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
