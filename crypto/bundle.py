"""Offline verification bundles for signed reports.

A bundle is the JSON object::

    {"envelope": <DSSE report envelope>,
     "log": {"index": int, "tree_size": int, "inclusion_proof": [hex, ...],
             "checkpoint": <DSSE checkpoint envelope>},
     "public_key": <PEM>}

and the log leaf of a report is ``canonical_json(envelope)``. Typical use::

    bundle = make_bundle(envelope, log, index, key.public_key())
    result = verify_bundle(load_bundle(Path("report.bundle.json").read_bytes()),
                           trusted_key=pinned_key)
    print(result.report["verdict"])
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from crypto.dsse import canonical_json, parse_json_strict, verify_envelope
from crypto.errors import BundleError, KeyFormatError, LogError, ProofError, SignatureError
from crypto.keys import key_id, load_public_key_pem, public_key_pem
from crypto.merkle import leaf_hash, verify_consistency, verify_inclusion
from crypto.translog import Checkpoint, TransparencyLog, verify_checkpoint

__all__ = [
    "REPORT_PAYLOAD_TYPE",
    "VerifiedReport",
    "load_bundle",
    "make_bundle",
    "verify_bundle",
    "verify_consistency_between",
]

REPORT_PAYLOAD_TYPE = "application/vnd.audit-appliance.report+json"

_BUNDLE_KEYS = frozenset({"envelope", "log", "public_key"})
_LOG_KEYS = frozenset({"index", "tree_size", "inclusion_proof", "checkpoint"})
_HEX_HASH = re.compile(r"[0-9a-f]{64}")
_MAX_PROOF_ELEMENTS = 64


@dataclass(frozen=True)
class VerifiedReport:
    """The result of :func:`verify_bundle`: a report proven signed and logged.

    ``key_pinned`` is False when no trusted key was given and the bundle's own key was
    used: then the bundle is only self-consistent, not proven to come from your appliance.
    """

    report: dict[str, Any]
    index: int
    tree_size: int
    root_hash: bytes
    key_pinned: bool
    key_id: str
    checkpoint: Checkpoint


def make_bundle(
    envelope: dict[str, Any],
    log: TransparencyLog,
    index: int,
    public_key: Ed25519PublicKey,
    tree_size: int | None = None,
) -> dict[str, Any]:
    """Build the verification bundle of the report ``envelope`` logged at ``index``.

    The inclusion proof and the freshly signed checkpoint are for ``tree_size`` (default:
    the current log size).

    Raises:
        LogError: the log entry at ``index`` is not ``canonical_json(envelope)``.
    """
    leaf = canonical_json(envelope)
    if log.entry(index) != leaf:
        raise LogError(
            f"log entry {index} is not this envelope",
            hint="Pass the index that append() returned for canonical_json(envelope).",
        )
    size = log.size() if tree_size is None else tree_size
    proof = log.inclusion_proof(index, size)
    checkpoint = log.checkpoint(size)
    return {
        "envelope": envelope,
        "log": {
            "index": index,
            "tree_size": size,
            "inclusion_proof": [element.hex() for element in proof],
            "checkpoint": checkpoint,
        },
        "public_key": public_key_pem(public_key),
    }


def load_bundle(data: bytes | str) -> dict[str, Any]:
    """Parse bundle JSON strictly (no duplicate keys, no NaN); raise :class:`BundleError`."""
    try:
        bundle = parse_json_strict(data)
    except ValueError as exc:
        raise BundleError(f"bundle is not valid JSON: {exc}") from None
    if not isinstance(bundle, dict):
        raise BundleError("bundle must be a JSON object")
    return bundle


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_hex_hashes(values: object, what: str) -> list[bytes]:
    if not isinstance(values, list):
        raise BundleError(f"{what} must be a list of hex strings")
    if len(values) > _MAX_PROOF_ELEMENTS:
        raise BundleError(f"{what} has more than {_MAX_PROOF_ELEMENTS} elements")
    hashes = []
    for position, value in enumerate(values):
        if not isinstance(value, str) or not _HEX_HASH.fullmatch(value):
            raise BundleError(f"{what}[{position}] is not 64 lowercase hex digits")
        hashes.append(bytes.fromhex(value))
    return hashes


def _check_shape(bundle: object) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(bundle, dict):
        raise BundleError("bundle must be a JSON object")
    if set(bundle) != _BUNDLE_KEYS:
        raise BundleError(
            f"bundle must have exactly the keys {sorted(_BUNDLE_KEYS)}, "
            f"has {sorted(map(str, bundle))}"
        )
    log = bundle["log"]
    if not isinstance(log, dict) or set(log) != _LOG_KEYS:
        raise BundleError(
            f"bundle 'log' must be an object with exactly the keys {sorted(_LOG_KEYS)}"
        )
    if not _is_int(log["index"]) or not _is_int(log["tree_size"]):
        raise BundleError("bundle log index and tree_size must be integers")
    if not isinstance(bundle["envelope"], dict) or not isinstance(log["checkpoint"], dict):
        raise BundleError("bundle envelope and checkpoint must be JSON objects")
    return bundle, log


def _bundle_key(pem: object, trusted_key: Ed25519PublicKey | None) -> Ed25519PublicKey:
    if not isinstance(pem, str):
        raise BundleError("bundle public_key must be a PEM string")
    try:
        key = load_public_key_pem(pem)
    except KeyFormatError as exc:
        raise KeyFormatError(f"bundle public_key: {exc.message}") from None
    if public_key_pem(key) != pem:
        raise KeyFormatError("bundle public_key is not in the canonical PEM form")
    if trusted_key is not None and key_id(key) != key_id(trusted_key):
        raise SignatureError(
            f"bundle is signed by key {key_id(key)}, not by the pinned key {key_id(trusted_key)}",
            hint="The report comes from another appliance, or the bundle's key was replaced.",
        )
    return key


def _parse_report(payload: bytes) -> dict[str, Any]:
    try:
        report = parse_json_strict(payload)
    except ValueError as exc:
        raise SignatureError(f"signed report payload is not valid JSON: {exc}") from None
    if not isinstance(report, dict):
        raise SignatureError("signed report payload must be a JSON object")
    return report


def verify_bundle(
    bundle: dict[str, Any],
    *,
    trusted_key: Ed25519PublicKey | None = None,
    checkpoint: dict[str, Any] | None = None,
    report_payload_type: str = REPORT_PAYLOAD_TYPE,
    origin: str | None = None,
) -> VerifiedReport:
    """Verify a bundle offline: report signature, checkpoint signature, log inclusion.

    Args:
        bundle: the parsed bundle (see :func:`load_bundle`).
        trusted_key: the appliance key you pinned. Without it the bundle's own key is
            used and the result has ``key_pinned=False``.
        checkpoint: a signed checkpoint you saved or obtained independently. The proof
            must then be for exactly its tree size and lead to its root, so a log that
            showed you a different history cannot pass.
        report_payload_type: the DSSE payload type the report must carry.
        origin: if given, the log origin every checkpoint must name.

    Raises:
        BundleError, KeyFormatError, SignatureError, ProofError: naming the failed check.
    """
    bundle, log = _check_shape(bundle)
    key = _bundle_key(bundle["public_key"], trusted_key)

    envelope = bundle["envelope"]
    report = _parse_report(verify_envelope(envelope, key, payload_type=report_payload_type))

    logged = verify_checkpoint(log["checkpoint"], key, origin=origin)
    index, tree_size = log["index"], log["tree_size"]
    proof = _parse_hex_hashes(log["inclusion_proof"], "inclusion_proof")
    if tree_size != logged.tree_size:
        raise ProofError(
            f"bundle tree_size {tree_size} differs from its checkpoint's tree size "
            f"{logged.tree_size}"
        )
    if not 0 <= index < tree_size:
        raise ProofError(f"log index {index} is outside the checkpoint's tree of size {tree_size}")

    anchor = logged
    if checkpoint is not None:
        anchor = verify_checkpoint(checkpoint, key, origin=origin or logged.origin)
        if anchor.tree_size != tree_size:
            hint = (
                f"Fetch an inclusion proof for index {index} at tree size {anchor.tree_size} "
                f"(the size of your checkpoint) and verify again."
                if index < anchor.tree_size
                else f"Your checkpoint (size {anchor.tree_size}) predates log entry {index}; "
                "obtain a newer checkpoint that covers it."
            )
            raise ProofError(
                f"the bundle's proof is for tree size {tree_size}, but the trusted checkpoint "
                f"is for tree size {anchor.tree_size}",
                hint=hint,
            )
        if anchor.root_hash != logged.root_hash:
            raise ProofError(
                f"the bundle's checkpoint and the trusted checkpoint disagree on the root of "
                f"tree size {tree_size}: the log presented two different histories",
                hint="Keep both checkpoints: together they are signed evidence of a split view.",
            )

    verify_inclusion(leaf_hash(canonical_json(envelope)), index, tree_size, proof, anchor.root_hash)
    return VerifiedReport(
        report=report,
        index=index,
        tree_size=tree_size,
        root_hash=anchor.root_hash,
        key_pinned=trusted_key is not None,
        key_id=key_id(key),
        checkpoint=anchor,
    )


def verify_consistency_between(
    old_checkpoint: dict[str, Any],
    new_checkpoint: dict[str, Any],
    proof: list[str],
    trusted_key: Ed25519PublicKey,
) -> None:
    """Check that ``new_checkpoint``'s log extends ``old_checkpoint``'s (append-only).

    ``proof`` is the hex consistency proof between the two tree sizes.

    Raises:
        SignatureError: a checkpoint is not validly signed, or the origins differ.
        ProofError: the proof does not show the old tree is a prefix of the new one.
    """
    old = verify_checkpoint(old_checkpoint, trusted_key)
    new = verify_checkpoint(new_checkpoint, trusted_key, origin=old.origin)
    if new.tree_size < old.tree_size:
        raise ProofError(
            f"the new checkpoint (size {new.tree_size}) is smaller than the old one "
            f"(size {old.tree_size})",
            hint="Pass the older checkpoint first; a log that shrinks is not append-only.",
        )
    try:
        hashes = _parse_hex_hashes(proof, "consistency proof")
    except BundleError as exc:
        raise ProofError(exc.message) from None
    verify_consistency(old.tree_size, new.tree_size, old.root_hash, new.root_hash, hashes)
