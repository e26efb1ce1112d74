"""``appliance models verify`` offline: a model_signing model.sig needs a pinned key; the
appliance's manifest without ``--key`` says loudly that the check is self-signed."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from signing_support import ms_sign_key, write_ec_key

from appliance.cli import main
from crypto.dsse import canonical_json, sign_envelope
from crypto.keys import load_or_create_ed25519, public_key_pem
from models.manifest import PAYLOAD_TYPE, build_manifest


def _verify(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["models", "verify", *args])
    return result.exit_code, result.stdout, result.stderr


def _model(folder: Path) -> Path:
    model = folder / "model"
    model.mkdir()
    (model / "weights.safetensors").write_bytes(b"\x01" * 4096)
    (model / "config.json").write_text("{}")
    return model


def test_model_signing_bundle_needs_a_pinned_key_and_binds_every_file(tmp_path: Path) -> None:
    model = _model(tmp_path)
    private, public = write_ec_key(tmp_path, "release")
    _, other = write_ec_key(tmp_path, "other")
    signature = str(ms_sign_key(model, private, tmp_path / "model.sig"))

    code, out, _ = _verify(str(model), "--signature", signature, "--key", str(public))
    assert code == 0 and "OK" in out and "matches its signed manifest" in out
    code, _, err = _verify(str(model), "--signature", signature)
    assert code == 1 and "pin the signer's public key" in err
    code, _, err = _verify(str(model), "--signature", signature, "--key", str(other))
    assert code == 1 and "unknown signer" in err
    (model / "extra.txt").write_text("added after signing")
    code, _, err = _verify(str(model), "--signature", signature, "--key", str(public))
    assert code == 1 and "extra files ['extra.txt']" in err


def test_manifest_without_a_pinned_key_is_flagged_self_signed(tmp_path: Path) -> None:
    model = _model(tmp_path)
    key = load_or_create_ed25519(tmp_path / "appliance.key")
    pem = public_key_pem(key.public_key())
    (tmp_path / "appliance.pem").write_text(pem)
    envelope = sign_envelope(canonical_json(build_manifest(model, model_name="m")),
                             PAYLOAD_TYPE, key)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"envelope": envelope, "public_key": pem}))

    code, out, err = _verify(str(model), "--manifest", str(manifest))
    assert code == 0 and "SELF-SIGNED" in err and "key in the manifest file" in out
    code, out, err = _verify(str(model), "--manifest", str(manifest),
                             "--key", str(tmp_path / "appliance.pem"))
    assert code == 0 and "SELF-SIGNED" not in err and "pinned key" in out
    # a manifest re-signed by someone else, carrying their key, passes only the self-signed check
    forger = load_or_create_ed25519(tmp_path / "forger.key")
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({
        "envelope": sign_envelope(canonical_json(build_manifest(model, model_name="m")),
                                  PAYLOAD_TYPE, forger),
        "public_key": public_key_pem(forger.public_key())}))
    code, _, err = _verify(str(model), "--manifest", str(forged))
    assert code == 0 and "SELF-SIGNED" in err
    code, _, err = _verify(str(model), "--manifest", str(forged),
                           "--key", str(tmp_path / "appliance.pem"))
    assert code == 1 and "VERIFICATION FAILED" in err
