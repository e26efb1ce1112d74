"""The SDK's model-signature sub-client (``client.signatures``): httpx and schemas only.

    client.signatures.add_signer("release-key", Path("signer.pub").read_text())
    client.upload_model("model.onnx", name="m", signature="model.sig")   # verified at upload
    client.signatures.save_model_signature(model.id, "model.sig")        # appliance-signed
    Path("appliance.pub").write_text(client.signatures.public_key())
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.capabilities.signatures.schemas import SignerKeyList, SignerKeyOut, SigningPublicKey

if TYPE_CHECKING:
    from appliance.client import Client


class SignaturesClient:
    """Signer keys of this tenant, model.sig downloads, and the appliance's signing key."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def add_signer(self, name: str, public_key_pem: str) -> SignerKeyOut:
        """Register an ECDSA P-256/P-384 public key whose model.sig uploads are trusted."""
        body = self._client._json("POST", "/v1/signers",
                                  json={"name": name, "public_key": public_key_pem})
        return SignerKeyOut.model_validate(body)

    def list_signers(self) -> list[SignerKeyOut]:
        return SignerKeyList.model_validate(self._client._json("GET", "/v1/signers")).items

    def get_signer(self, signer_id: str) -> SignerKeyOut:
        return SignerKeyOut.model_validate(self._client._json("GET", f"/v1/signers/{signer_id}"))

    def remove_signer(self, signer_id: str) -> None:
        self._client.request("DELETE", f"/v1/signers/{signer_id}")

    def model_signature(self, model_id: str) -> dict[str, Any]:
        """The model's manifest as a Sigstore bundle signed by the appliance."""
        return dict(self._client._json("GET", f"/v1/models/{model_id}/signature"))

    def save_model_signature(self, model_id: str, out: str | Path) -> Path:
        """Write the bundle to ``out`` (model.sig) for ``model_signing verify key``."""
        path = Path(out)
        path.write_text(json.dumps(self.model_signature(model_id), indent=2))
        return path

    def public_key(self) -> str:
        """The appliance's model-signing public key (PEM, ECDSA P-256)."""
        body = SigningPublicKey.model_validate(
            self._client._json("GET", "/v1/signing/public-key"))
        return body.public_key
