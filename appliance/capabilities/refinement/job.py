"""The ``refinement`` job kind (registered on import): host HE and enclave steps, by phase.

A job loads the provisioned blobs (:func:`_load_inputs`), opens a session in the enclave
(:func:`_open_enclave`), runs the refinement, starting over once if a sealed checkpoint no
longer opens (:func:`_refine`), and reports the outcome (:func:`_outcome`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance._internal.auth import Principal
from appliance._internal.jobs.kinds import JobKind, JobOutcome, register_job_kind
from appliance._internal.jobs.runner import JobContext
from appliance._internal.jobs.service import TERMINAL
from appliance._internal.store import Store, dumps, loads, utcnow
from appliance.capabilities.refinement.schemas import (
    MAX_DATASET_BYTES,
    RefinementJobInputs,
    RefinementJobParams,
    RefinementTerms,
)
from appliance.capabilities.refinement.service import JOB_KIND, METHOD, ROLES, VERSION, latest_job
from appliance.errors import Conflict, JobFailed

if TYPE_CHECKING:  # the HE stack (tenseal) loads when a job runs, not when the kind registers
    from appliance.confidential import EncryptedDataset, RefinementProgress, RefinementResult
    from enclave.host import EnclaveClient


def _resolve(store: Store, principal: Principal, params: RefinementJobParams) -> RefinementJobInputs:
    row = store.get_owned("refinements", principal.tenant_id, params.refinement_id, "refinement")
    if row["provisioned_at"] is None:
        raise Conflict(f"refinement {row['id']} is waiting for the data owner's part")
    job = latest_job(store, row["id"])
    if job is not None and job["state"] not in TERMINAL:
        raise Conflict(f"refinement {row['id']} already has job {job['id']} {job['state']}")
    if job is not None and job["state"] == "succeeded":
        raise Conflict(f"refinement {row['id']} already succeeded (job {job['id']})")
    checkpoint = row["checkpoint_digest"] if params.resume else None
    return RefinementJobInputs(
        refinement_id=row["id"], terms=RefinementTerms.model_validate(loads(row["terms"])),
        model=row["model_digest"], train=row["train_digest"], val=row["val_digest"],
        context=row["context_digest"], secret=row["secret_digest"],
        checkpoint=checkpoint, checkpoint_meta=loads(row["checkpoint_meta"]))


def _record_checkpoint(ctx: JobContext, refinement_id: str, digest: str, epoch: int,
                       step: int) -> None:
    """Remember the latest sealed checkpoint blob on the refinement (embedded mode writes
    the store; a cluster worker only logs it)."""
    meta = {"epoch": epoch, "step": step, "saved_at": utcnow()}
    if ctx.settings.cluster:
        ctx.log(f"sealed checkpoint (epoch {epoch}, step {step}) saved as blob {digest}")
        return
    store = Store.open(ctx.settings)
    try:
        store.conn.execute(
            "UPDATE refinements SET checkpoint_digest=?, checkpoint_meta=? WHERE id=?",
            (digest, dumps(meta), refinement_id))
    finally:
        store.close()


def _short_reason(message: str) -> str:
    """An enclave failure reason without the enclave's stderr tail."""
    return message.split("; stderr:", 1)[0][:500]


@dataclass(frozen=True, kw_only=True)
class _Loaded:
    """The provisioned blobs of one job, read from the store."""

    train: EncryptedDataset
    validation: EncryptedDataset
    public_context: bytes
    model_blob: bytes
    secret_blob: bytes
    checkpoint: bytes | None
    seconds: float


def _load_inputs(ctx: JobContext, inputs: RefinementJobInputs) -> _Loaded:
    """Read (and frame-check) the wrapped model, encrypted data, contexts and checkpoint."""
    from appliance.confidential import EncryptedDataset

    t0 = time.perf_counter()

    def read(digest: str) -> bytes:
        return ctx.blob_path(digest).read_bytes()

    train = EncryptedDataset.from_bytes(read(inputs.train), max_bytes=MAX_DATASET_BYTES)
    val = EncryptedDataset.from_bytes(read(inputs.val), max_bytes=MAX_DATASET_BYTES)
    public_ctx = read(inputs.context)
    model_blob, secret_blob = read(inputs.model), read(inputs.secret)
    checkpoint = read(inputs.checkpoint) if inputs.checkpoint else None
    return _Loaded(train=train, validation=val, public_context=public_ctx, model_blob=model_blob,
                   secret_blob=secret_blob, checkpoint=checkpoint, seconds=time.perf_counter() - t0)


def _abort_session(client: EnclaveClient, rid: str) -> None:
    """Drop a session an earlier attempt left in the enclave (it would block a new start)."""
    from enclave.errors import EnclaveError

    try:
        client.call("refine.abort", {"job_id": rid})
    except EnclaveError:
        pass


def _open_enclave(ctx: JobContext, rid: str) -> tuple[EnclaveClient, dict[str, Any]]:
    """The home's enclave, free of stale sessions for this refinement, and its identity."""
    from appliance.capabilities.refinement.enclave import enclave_service

    client = enclave_service(ctx.settings).client()
    identity = dict(client.identity)
    _abort_session(client, rid)
    return client, identity


class _Tracker:
    """Job progress and sealed checkpoints as the refinement reports them; ``moved`` is true
    once the refinement got anywhere (then a refused checkpoint is not retried from scratch)."""

    def __init__(self, ctx: JobContext, rid: str) -> None:
        self.ctx, self.rid = ctx, rid
        self.epoch, self.step, self.moved = 0, 0, False

    def progress(self, event: RefinementProgress) -> None:
        self.epoch, self.step, self.moved = event.epoch, event.step, True
        if event.step == 0:
            self.ctx.log(f"epoch {event.epoch}/{event.epochs} trained")
        self.ctx.progress(0.02 + 0.97 * event.fraction)

    def checkpoint(self, sealed: bytes) -> None:
        self.moved = True
        digest = self.ctx.save_artifact(sealed)
        _record_checkpoint(self.ctx, self.rid, digest, self.epoch, self.step)


def _refine(ctx: JobContext, client: EnclaveClient, rid: str, terms: RefinementTerms, loaded: _Loaded,
            identity: dict[str, Any]) -> tuple[RefinementResult, str | None]:
    """Run the refinement (from the sealed checkpoint if any); returns the result and, if the
    checkpoint was refused and the refinement started over, the reason. An enclave failure
    becomes a JobFailed that says whether a retry resumes or starts over."""
    from appliance.confidential import RefinementInterrupted, run_refinement

    tracker = _Tracker(ctx, rid)

    def attempt(from_checkpoint: bytes | None) -> RefinementResult:
        return run_refinement(
            enclave=client, job_id=rid, public_context=loaded.public_context, train=loaded.train,
            validation=loaded.validation, model_blob=loaded.model_blob,
            ckks_secret_blob=loaded.secret_blob, epochs=terms.epochs, lr=terms.lr, seed=terms.seed,
            reduction=terms.reduction, checkpoint=from_checkpoint, on_checkpoint=tracker.checkpoint,
            progress=tracker.progress)

    ctx.log(("resuming from the sealed checkpoint" if loaded.checkpoint else "starting") +
            f" in enclave {identity.get('mrenclave', '?')[:16]}…")
    resumed_refused: str | None = None
    try:
        try:
            result = attempt(loaded.checkpoint)
        except RefinementInterrupted as exc:
            if loaded.checkpoint is None or tracker.moved or not client.is_alive():
                raise
            # the sealed state does not open here (enclave build changed, or altered): start
            # over cleanly from the provisioned secrets instead
            resumed_refused = _short_reason(exc.reason)
            ctx.log(f"sealed checkpoint refused ({resumed_refused}); starting over", "warning")
            _abort_session(client, rid)
            result = attempt(None)
    except RefinementInterrupted as exc:
        reason = _short_reason(exc.reason)
        kept = exc.checkpoint is not None
        raise JobFailed(
            f"the enclave stopped the refinement at epoch {exc.epoch} step {exc.step}: {reason}. "
            + ("Its last sealed checkpoint is kept; POST /v1/refinements/"
               f"{rid}/retry resumes from it." if kept else
               f"Nothing was kept; POST /v1/refinements/{rid}/retry starts over.")
        ) from None
    return result, resumed_refused


def _outcome(ctx: JobContext, inputs: RefinementJobInputs, terms: RefinementTerms, identity: dict[str, Any],
             result: RefinementResult, resumed_refused: str | None, load_seconds: float) -> JobOutcome:
    """Store the encrypted refined model and describe the run for the signed report."""
    rid = inputs.refinement_id
    digest = ctx.save_artifact(result.refined_model)
    report = result.report()
    timings = {k: float(v) for k, v in result.timings.items()}
    timings["load_seconds"] = load_seconds
    return JobOutcome(
        method=METHOD,
        version=VERSION,
        parameters={"refinement_id": rid, **terms.model_dump(mode="json")},
        inputs={
            "model_wrapped_sha256": inputs.model,
            "train_encrypted_sha256": inputs.train,
            "validation_encrypted_sha256": inputs.val,
            "public_context_sha256": inputs.context,
            "ckks_secret_wrapped_sha256": inputs.secret,
            "resumed_from_checkpoint_sha256": inputs.checkpoint if not resumed_refused
            else None,
            "enclave": {k: identity.get(k) for k in ("mrenclave", "mrsigner", "isv_prod_id",
                                                     "isv_svn", "debug", "simulated")},
        },
        statistics={**report, "refined_model_sha256": digest,
                    "checkpoint_refused": resumed_refused},
        seed=terms.seed,
        device="cpu (CKKS host) + simulated enclave",
        timings=timings,
        extra={"artifacts": {"refined_model": digest}},
    )


def _run(ctx: JobContext, params: RefinementJobParams, inputs: RefinementJobInputs) -> JobOutcome:
    rid = inputs.refinement_id
    terms = inputs.terms
    loaded = _load_inputs(ctx, inputs)
    ctx.progress(0.01)
    client, identity = _open_enclave(ctx, rid)
    result, resumed_refused = _refine(ctx, client, rid, terms, loaded, identity)
    ctx.progress(0.995)
    return _outcome(ctx, inputs, terms, identity, result, resumed_refused, loaded.seconds)


register_job_kind(
    JobKind(
        name=JOB_KIND,
        params_model=RefinementJobParams,
        resolve=_resolve,
        run=_run,
        inputs_model=RefinementJobInputs,
        roles=ROLES,
        description="Confidential refinement: HE on the host, softmax/update in the attested "
        "enclave (started by POST /v1/refinements/{id}/data; retried with .../retry).",
    )
)

