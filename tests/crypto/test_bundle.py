"""Offline verification bundles: signed report + inclusion proof + signed checkpoint."""

from __future__ import annotations

import hashlib
import random
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crypto.bundle import (
    REPORT_PAYLOAD_TYPE,
    load_bundle,
    make_bundle,
    verify_bundle,
    verify_consistency_between,
)
from crypto.dsse import canonical_json, sign_envelope
from crypto.errors import (
    BundleError,
    CryptoError,
    KeyFormatError,
    LogError,
    ProofError,
    SignatureError,
)
from crypto.keys import public_key_pem
from crypto.merkle import leaf_hash
from crypto.translog import TransparencyLog

ORIGIN = "bundle.test/log"


def _key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bundle%d" % seed).digest())


def _report(n: int) -> dict[str, Any]:
    return {
        "method": "evaluation",
        "version": "1",
        "job": f"job-{n}",
        "statistics": {"accuracy": 0.5 + n / 100, "ece": 0.03},
        "verdict": None,
        "note": "naïve ünïcode ✓",
    }


def _sign(report: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    return sign_envelope(canonical_json(report), REPORT_PAYLOAD_TYPE, key)


class Appliance:
    """A key and a log holding 11 signed reports; report 5 is the one under test."""

    def __init__(self, path: Path, *, seed: int = 1, origin: str = ORIGIN) -> None:
        self.key = _key(seed)
        self.path = path
        self.log = TransparencyLog(db_path=path, origin=origin, signing_key=self.key)
        self.envelopes = [_sign(_report(n), self.key) for n in range(11)]
        for envelope in self.envelopes[:6]:
            self.log.append(canonical_json(envelope))
        self.saved_checkpoint = self.log.checkpoint()  # what an auditor kept at size 6
        for envelope in self.envelopes[6:]:
            self.log.append(canonical_json(envelope))

    def bundle(self, index: int = 5, tree_size: int | None = None) -> dict[str, Any]:
        return make_bundle(self.envelopes[index], self.log, index, self.key.public_key(), tree_size)


@pytest.fixture()
def appliance(tmp_path: Path) -> Appliance:
    return Appliance(tmp_path / "appliance.db")


def test_round_trip(appliance: Appliance) -> None:
    bundle = appliance.bundle()
    assert set(bundle) == {"envelope", "log", "public_key"}
    assert bundle["log"]["tree_size"] == 11
    result = verify_bundle(bundle, trusted_key=appliance.key.public_key(), origin=ORIGIN)
    assert result.report == _report(5)
    assert (result.index, result.tree_size) == (5, 11)
    assert result.root_hash == appliance.log.root()
    assert result.key_pinned is True
    # Serialised and parsed back, as the CLI does.
    reparsed = load_bundle(canonical_json(bundle))
    assert verify_bundle(reparsed, trusted_key=appliance.key.public_key()).report == _report(5)
    unpinned = verify_bundle(reparsed)
    assert unpinned.key_pinned is False
    assert unpinned.report == _report(5)


def _flip_outcomes(data: bytes, trusted: Any, xor_of: Any) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    for position in range(len(data)):
        changed = bytearray(data)
        changed[position] ^= xor_of(position)
        try:
            bundle = load_bundle(bytes(changed))
            verify_bundle(bundle, trusted_key=trusted)
        except CryptoError as exc:
            assert exc.message, "every failure must say what failed"
            outcomes[type(exc).__name__] += 1
            continue
        pytest.fail(f"a flipped byte at {position} ({data[position : position + 1]!r}) verified")
    return outcomes


def test_every_single_byte_flip_fails(appliance: Appliance) -> None:
    bundle = appliance.bundle()
    data = canonical_json(bundle)
    trusted = appliance.key.public_key()
    rng = random.Random(1234)
    outcomes = _flip_outcomes(data, trusted, lambda _: 0x01)
    outcomes += _flip_outcomes(data, trusted, lambda _: rng.randrange(1, 256))
    # Flips landed in every part of the bundle and were caught by the matching check.
    for name in ("BundleError", "SignatureError", "ProofError", "KeyFormatError"):
        assert outcomes[name] > 0, outcomes
    assert sum(outcomes.values()) == 2 * len(data)


def test_flips_in_each_part_fail_with_the_right_error(appliance: Appliance) -> None:
    trusted = appliance.key.public_key()

    def verify(bundle: dict[str, Any]) -> None:
        verify_bundle(bundle, trusted_key=trusted)

    bundle = appliance.bundle()
    proof = bundle["log"]["inclusion_proof"]
    proof[1] = ("1" if proof[1][0] == "0" else "0") + proof[1][1:]
    with pytest.raises(ProofError, match="does not lead to the root"):
        verify(bundle)

    bundle = appliance.bundle()
    bundle["log"]["index"] = 4
    with pytest.raises(ProofError):
        verify(bundle)

    bundle = appliance.bundle()
    bundle["log"]["tree_size"] = 10
    with pytest.raises(ProofError, match="differs from its checkpoint"):
        verify(bundle)

    bundle = appliance.bundle()
    payload = bundle["log"]["checkpoint"]["payload"]
    replacement = "A" if payload[8] != "A" else "B"
    bundle["log"]["checkpoint"]["payload"] = payload[:8] + replacement + payload[9:]
    with pytest.raises(SignatureError):
        verify(bundle)

    bundle = appliance.bundle()
    bundle["envelope"] = appliance.envelopes[4]  # a genuine report, but not the one at 5
    with pytest.raises(ProofError):
        verify(bundle)

    bundle = appliance.bundle()
    bundle["log"]["inclusion_proof"] = [h.upper() for h in bundle["log"]["inclusion_proof"]]
    with pytest.raises(BundleError, match="lowercase hex"):
        verify(bundle)


def test_report_signed_but_never_logged_fails(appliance: Appliance) -> None:
    unlogged = _sign(_report(99), appliance.key)
    bundle = appliance.bundle()
    bundle["envelope"] = unlogged
    with pytest.raises(ProofError):
        verify_bundle(bundle, trusted_key=appliance.key.public_key())
    with pytest.raises(LogError, match="not this envelope"):
        make_bundle(unlogged, appliance.log, 5, appliance.key.public_key())


def test_pinned_key_and_payload_type(appliance: Appliance, tmp_path: Path) -> None:
    attacker = Appliance(tmp_path / "attacker.db", seed=66)
    forged = attacker.bundle()
    # Self-consistent under its own key...
    assert verify_bundle(forged).key_pinned is False
    # ...but not from the appliance whose key was pinned.
    with pytest.raises(SignatureError, match="not by the pinned key"):
        verify_bundle(forged, trusted_key=appliance.key.public_key())
    # Swapping in the genuine public key does not help the forgery.
    forged["public_key"] = public_key_pem(appliance.key.public_key())
    with pytest.raises(SignatureError, match="unknown keyid"):
        verify_bundle(forged, trusted_key=appliance.key.public_key())
    with pytest.raises(SignatureError, match="wrong payload type"):
        verify_bundle(
            appliance.bundle(),
            trusted_key=appliance.key.public_key(),
            report_payload_type="application/vnd.other+json",
        )
    with pytest.raises(SignatureError, match="expected 'elsewhere'"):
        verify_bundle(
            appliance.bundle(), trusted_key=appliance.key.public_key(), origin="elsewhere"
        )


def test_shape_errors() -> None:
    for bad in (b"[]", b'{"envelope": 1}', b'{"a":1,"a":2}', b"{", b'{"x": NaN}'):
        with pytest.raises(BundleError):
            verify_bundle(load_bundle(bad))


def test_bundle_shape_checks(appliance: Appliance) -> None:
    good = appliance.bundle()
    variants = [
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "public_key"},
        {**good, "log": {**good["log"], "index": "5"}},
        {**good, "log": {**good["log"], "index": True}},
        {**good, "log": {**good["log"], "inclusion_proof": "abc"}},
        {**good, "log": {k: v for k, v in good["log"].items() if k != "checkpoint"}},
        {**good, "public_key": 5},
    ]
    for variant in variants:
        with pytest.raises(BundleError):
            verify_bundle(variant)
    with pytest.raises(KeyFormatError):
        verify_bundle({**good, "public_key": good["public_key"].rstrip("\n")})


# --- against a checkpoint the verifier holds ----------------------------------------------


def test_against_a_saved_checkpoint(appliance: Appliance) -> None:
    trusted = appliance.key.public_key()
    saved = appliance.saved_checkpoint  # size 6
    with pytest.raises(ProofError) as info:
        verify_bundle(appliance.bundle(), trusted_key=trusted, checkpoint=saved)
    assert "tree size 11" in info.value.message and "tree size 6" in info.value.message
    assert "Fetch an inclusion proof for index 5 at tree size 6" in info.value.diagnostics()
    # With a proof fetched at the saved size it verifies against the saved root.
    result = verify_bundle(appliance.bundle(tree_size=6), trusted_key=trusted, checkpoint=saved)
    assert result.tree_size == 6
    assert result.root_hash == appliance.log.root(6)
    # An entry newer than the saved checkpoint cannot be proven against it.
    with pytest.raises(ProofError) as info:
        verify_bundle(appliance.bundle(index=8), trusted_key=trusted, checkpoint=saved)
    assert "predates log entry 8" in info.value.diagnostics()


def test_a_rewritten_log_is_caught_by_the_saved_checkpoint(
    appliance: Appliance, tmp_path: Path
) -> None:
    trusted = appliance.key.public_key()
    saved = appliance.saved_checkpoint
    # The operator rewrites history: report 2 is replaced, and every hash recomputed by
    # rebuilding the log, then a fresh (validly signed) bundle is issued.
    rebuilt = TransparencyLog(
        db_path=tmp_path / "rewritten.db", origin=ORIGIN, signing_key=appliance.key
    )
    rewritten = list(appliance.envelopes)
    rewritten[2] = _sign({**_report(2), "verdict": "altered"}, appliance.key)
    for envelope in rewritten:
        rebuilt.append(canonical_json(envelope))
    fresh = make_bundle(rewritten[5], rebuilt, 5, trusted, tree_size=6)
    # On its own the fresh bundle is valid...
    verify_bundle(fresh, trusted_key=trusted)
    # ...but it contradicts the checkpoint the auditor saved earlier.
    with pytest.raises(ProofError, match="two different histories"):
        verify_bundle(fresh, trusted_key=trusted, checkpoint=saved)
    # And no consistency proof links the saved checkpoint to the rewritten log.
    proof = [h.hex() for h in rebuilt.consistency_proof(6)]
    with pytest.raises(ProofError):
        verify_consistency_between(saved, rebuilt.checkpoint(), proof, trusted)


def test_saved_checkpoint_must_be_trusted(appliance: Appliance, tmp_path: Path) -> None:
    other = Appliance(tmp_path / "other.db", seed=2)
    with pytest.raises(SignatureError):
        verify_bundle(
            appliance.bundle(tree_size=6),
            trusted_key=appliance.key.public_key(),
            checkpoint=other.saved_checkpoint,
        )
    foreign = Appliance(tmp_path / "foreign.db", seed=1, origin="foreign/log")
    with pytest.raises(SignatureError, match="expected 'bundle.test/log'"):
        verify_bundle(
            appliance.bundle(tree_size=6),
            trusted_key=appliance.key.public_key(),
            checkpoint=foreign.saved_checkpoint,
        )


# --- consistency between two checkpoints ------------------------------------------------


def test_consistency_between_checkpoints(appliance: Appliance, tmp_path: Path) -> None:
    trusted = appliance.key.public_key()
    log = appliance.log
    old, new = appliance.saved_checkpoint, log.checkpoint()
    proof = [h.hex() for h in log.consistency_proof(6, 11)]
    verify_consistency_between(old, new, proof, trusted)
    verify_consistency_between(new, new, [], trusted)

    with pytest.raises(ProofError, match="smaller"):
        verify_consistency_between(new, old, proof, trusted)
    for position in range(len(proof)):
        tampered = list(proof)
        tampered[position] = ("f" if tampered[position][5] != "f" else "e").join(
            (tampered[position][:5], tampered[position][6:])
        )
        with pytest.raises(ProofError):
            verify_consistency_between(old, new, tampered, trusted)
    with pytest.raises(ProofError):
        verify_consistency_between(old, new, proof[:-1], trusted)
    with pytest.raises(ProofError):
        verify_consistency_between(old, new, [*proof, proof[0]], trusted)
    with pytest.raises(ProofError, match="lowercase hex"):
        verify_consistency_between(old, new, [p.upper() for p in proof], trusted)
    with pytest.raises(SignatureError):
        verify_consistency_between(old, new, proof, _key(9).public_key())

    # A log that reorders its first six entries is not an extension of the old one.
    reordered = TransparencyLog(
        db_path=tmp_path / "reordered.db", origin=ORIGIN, signing_key=appliance.key
    )
    order = [1, 0, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    for i in order:
        reordered.append(canonical_json(appliance.envelopes[i]))
    assert reordered.root() != log.root()
    with pytest.raises(ProofError):
        verify_consistency_between(
            old, reordered.checkpoint(), [h.hex() for h in reordered.consistency_proof(6)], trusted
        )


def test_log_tampering_on_disk_breaks_fresh_bundles(appliance: Appliance) -> None:
    trusted = appliance.key.public_key()
    good = appliance.bundle()
    db = sqlite3.connect(appliance.path)  # the test plays an operator editing the database
    forged = canonical_json(_sign({**_report(3), "verdict": "forged"}, appliance.key))
    db.execute(
        "UPDATE translog_leaves SET entry = ?, leaf_hash = ? WHERE idx = 3",
        (forged, leaf_hash(forged)),
    )
    db.commit()
    db.close()
    # The stored interior hashes still commit to the old leaf, so a proof for entry 3
    # (now the forged report) cannot reach any root the appliance signs.
    fresh = make_bundle(load_bundle(forged), appliance.log, 3, trusted)
    with pytest.raises(ProofError):
        verify_bundle(fresh, trusted_key=trusted, checkpoint=good["log"]["checkpoint"])
    with pytest.raises(ProofError):
        verify_bundle(fresh, trusted_key=trusted)
