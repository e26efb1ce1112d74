"""Confidential refinement: host-side orchestration (HE on the host, non-linear steps in the
attested enclave) and the helpers the data owner and model owner run on their side.

Flow (appliance side in ``[ ]``, party side otherwise)::

    [create_platform(instance / "platform")]                        # once
    [enclave = EnclaveClient.launch(platform_dir=..., state_dir=...)]  # long-lived
    [quote = enclave.get_quote(nonce)]              # GET /v1/enclave/attestation?nonce=
    vq = verify_quote(quote, platform_key=pinned, allowed_measurements={...}, nonce=nonce,
                      allow_simulated=True)
    data owner:  ctx = create_ckks_context(); public_context(ctx);
                 encrypt_dataset(ctx, vq, X, y, ..., split="train"|"val"); wrap_ckks_secret
    model owner: wrap_model(vq, pack_softmax_model(W, b, result_key=k))   (or pack_mlp_model)
    [result = run_refinement(enclave=enclave, job_id=..., ...)]     # POST /v1/refinements job
    model owner: open_refined_model(result.refined_model, result_key=k, job_id=...)
"""

from __future__ import annotations

from appliance.confidential.errors import ConfidentialError, RefinementInterrupted
from appliance.confidential.parties import (
    CKKS_PRESET,
    EncryptedDataset,
    create_ckks_context,
    encrypt_dataset,
    model_arrays,
    open_refined_model,
    pack_mlp_model,
    pack_softmax_model,
    public_context,
    wrap_ckks_secret,
    wrap_model,
)
from appliance.confidential.refinement import (
    PlaintextResult,
    RefinementProgress,
    RefinementResult,
    plaintext_refinement,
    run_refinement,
)

__all__ = [
    "CKKS_PRESET",
    "ConfidentialError",
    "EncryptedDataset",
    "PlaintextResult",
    "RefinementInterrupted",
    "RefinementProgress",
    "RefinementResult",
    "create_ckks_context",
    "encrypt_dataset",
    "model_arrays",
    "open_refined_model",
    "pack_mlp_model",
    "pack_softmax_model",
    "plaintext_refinement",
    "public_context",
    "run_refinement",
    "wrap_ckks_secret",
    "wrap_model",
]
