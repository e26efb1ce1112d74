"""The code that runs inside the enclave process: identity, quotes, unwrapping, sealing, and
the refinement sessions; :func:`serve` answers framed requests until the channel closes.

Requests (header ``op``):

===================== ====================================================================
``identity``          measurement, signer, SVN, debug, simulated, enclave X25519 public key
``quote``             ``{"nonce": hex}`` → one part: quote bytes
``seal``              one part: data → sealed blob (``policy``: MRENCLAVE | MRSIGNER)
``unseal_check``      one part: sealed blob → ``{"sha256", "length"}`` (never the plaintext)
``refine.start``      plan + parts [wrapped ckks-secret, model, train-labels, val-labels]
``refine.resume``     one part: sealed checkpoint → status
``refine.*``          frozen_weights, frozen, weights, forward, update, evaluate,
                      evaluate_done, checkpoint, finish, abort (drop the session)
``shutdown``          close the channel
===================== ====================================================================
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from crypto.errors import CryptoError
from crypto.provisioning import sign_quote, unwrap_in_enclave
from crypto.sealing import SealIdentity, SealPolicy, seal, unseal
from enclave.codec import CodecError
from enclave.errors import EnclaveError, ProtocolError, RefinementError
from enclave.measurement import EnclaveConfig, measure_enclave, package_dir, verify_sigstruct
from enclave.platform import load_platform_secrets
from enclave.protocol import read_frame, write_frame
from enclave.refine import RefinementPlan, RefinementSession

__all__ = ["EnclaveRuntime", "serve"]

# Wrapping labels each party uses when provisioning a refinement.
LABEL_CKKS_SECRET = "ckks-secret"
LABEL_MODEL = "model"
LABEL_TRAIN_LABELS = "train-labels"
LABEL_VAL_LABELS = "val-labels"
#: Provisioning must use one of the last this-many quotes of the enclave process.
MAX_ISSUED_QUOTES = 4096


class EnclaveRuntime:
    """Everything the enclave holds; constructed once per enclave process (EINIT)."""

    def __init__(
        self,
        *,
        platform_dir: Path,
        config: EnclaveConfig,
        sigstruct: bytes,
        state_dir: Path | None = None,
        closure: Mapping[str, Path] | None = None,
        digests: Mapping[Path, str] | None = None,
    ) -> None:
        self.config = config
        self.mrenclave = measure_enclave(package_dir(), config, closure=closure, digests=digests)
        verify_sigstruct(self.mrenclave, config, sigstruct)
        secrets = load_platform_secrets(platform_dir)
        self._attestation_key = secrets.attestation_key
        self._root_secret = secrets.root_secret
        self.identity = SealIdentity(
            mrenclave=self.mrenclave,
            mrsigner=config.mrsigner,
            isv_prod_id=config.isv_prod_id,
            isv_svn=config.isv_svn,
            debug=config.debug,
        )
        self.persistent_key = state_dir is not None
        self._key = self._load_or_create_key(Path(state_dir)) if state_dir is not None else X25519PrivateKey.generate()
        self.public_key = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        # quote hashes this process issued (bounded: the oldest are forgotten first)
        self._issued: dict[bytes, None] = {}
        self._sessions: dict[str, RefinementSession] = {}

    def _load_or_create_key(self, state_dir: Path) -> X25519PrivateKey:
        """The enclave's X25519 key, sealed (MRENCLAVE) in ``state_dir`` so that secrets
        wrapped to it stay usable after an enclave restart. Only an enclave with the same
        MRENCLAVE on this platform can unseal it, so every quote carrying this key names
        this MRENCLAVE."""
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = state_dir / f"enclave-key-{self.mrenclave[:32]}.sealed"
        aad = b"enclave-x25519-key"
        if not path.exists():
            key = X25519PrivateKey.generate()
            raw = key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            tmp = state_dir / f".{path.name}.{os.getpid()}"
            tmp.write_bytes(self.seal(raw, policy=SealPolicy.MRENCLAVE, aad=aad))
            try:
                os.link(tmp, path)  # first writer wins; a concurrent starter reads its key
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        raw = self.unseal(path.read_bytes(), aad=aad)
        return X25519PrivateKey.from_private_bytes(raw)

    # -- attestation / provisioning ---------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Public identity of this enclave."""
        return {
            "mrenclave": self.mrenclave,
            "mrsigner": self.identity.mrsigner,
            "isv_prod_id": self.identity.isv_prod_id,
            "isv_svn": self.identity.isv_svn,
            "debug": self.identity.debug,
            "simulated": True,
            "enclave_public_key": self.public_key.hex(),
        }

    def quote(self, nonce: bytes) -> bytes:
        """A quote binding this enclave's key and ``nonce``."""
        if not 16 <= len(nonce) <= 64:
            raise RefinementError("nonce must be 16..64 bytes")
        q = sign_quote(
            mrenclave=self.mrenclave,
            mrsigner=self.identity.mrsigner,
            isv_prod_id=self.identity.isv_prod_id,
            isv_svn=self.identity.isv_svn,
            debug=self.identity.debug,
            enclave_public_key=self.public_key,
            nonce=nonce,
            platform_key=self._attestation_key,
        )
        self._issued[q.quote_hash()] = None
        while len(self._issued) > MAX_ISSUED_QUOTES:
            del self._issued[next(iter(self._issued))]
        return q.to_bytes()

    def unwrap(self, blob: bytes, label: str) -> bytes:
        """Open a secret wrapped to one of this enclave's quotes."""
        return unwrap_in_enclave(
            blob,
            enclave_private_key=self._key,
            accepted_quote_hashes=_ANY_QUOTE if self.persistent_key else self._issued.keys(),
            label=label,
            max_bytes=self.config.max_message_bytes,
        )

    def seal(self, data: bytes, *, policy: SealPolicy, aad: bytes = b"") -> bytes:
        """Seal ``data`` to this enclave's identity."""
        return seal(
            data,
            root_secret=self._root_secret,
            identity=self.identity,
            policy=policy,
            associated_data=aad,
        )

    def unseal(self, blob: bytes, *, aad: bytes = b"") -> bytes:
        """Unseal data sealed to this enclave (or its signer, per the blob's policy)."""
        return unseal(blob, root_secret=self._root_secret, identity=self.identity, associated_data=aad)

    # -- dispatch ----------------------------------------------------------------------
    def _session(self, header: dict[str, Any]) -> RefinementSession:
        job_id = str(header.get("job_id", ""))
        if job_id not in self._sessions:
            raise RefinementError(f"no refinement session {job_id!r} in this enclave")
        return self._sessions[job_id]

    def handle(self, op: str, header: dict[str, Any], parts: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        """Answer one request."""
        if op == "identity":
            return self.describe(), []
        if op == "quote":
            return {}, [self.quote(bytes.fromhex(str(header.get("nonce", ""))))]
        if op == "seal":
            _need(parts, 1)
            return {}, [self.seal(parts[0], policy=SealPolicy(header.get("policy", "MRENCLAVE")))]
        if op == "unseal_check":
            _need(parts, 1)
            data = self.unseal(parts[0])
            return {"sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}, []
        if op == "refine.start":
            _need(parts, 4)
            plan = RefinementPlan.from_dict(header.get("plan", {}))
            if plan.job_id in self._sessions:
                raise RefinementError(f"session {plan.job_id!r} already exists")
            session = RefinementSession(
                plan=plan,
                secret_context=self.unwrap(parts[0], LABEL_CKKS_SECRET),
                model=self.unwrap(parts[1], LABEL_MODEL),
                labels=self.unwrap(parts[2], LABEL_TRAIN_LABELS),
                val_labels=self.unwrap(parts[3], LABEL_VAL_LABELS),
            )
            self._sessions[plan.job_id] = session
            return session.status(), []
        if op == "refine.resume":
            _need(parts, 1)
            job_id = str(header.get("job_id", ""))
            data = self.unseal(parts[0], aad=b"refinement-checkpoint|" + job_id.encode())
            session = RefinementSession.from_checkpoint(data)
            if session.plan.job_id != job_id:
                raise RefinementError("checkpoint belongs to another job")
            self._sessions[job_id] = session
            return session.status(), []
        if not op.startswith("refine."):
            raise ProtocolError(f"unknown operation {op!r}")
        session = self._session(header)
        verb = op.removeprefix("refine.")
        index = int(header.get("index", -1))
        if verb == "frozen_weights":
            return {}, session.frozen_weights()
        if verb == "frozen":
            return {}, [session.frozen(split=str(header.get("split")), index=index, parts=parts)]
        if verb == "weights":
            return session.status(), session.weights()
        if verb == "forward":
            return {}, session.forward(index=index, parts=parts)
        if verb == "update":
            out = session.update(index=index, parts=parts)
            return session.status(), out
        if verb == "evaluate":
            session.evaluate(index=index, parts=parts)
            return {}, []
        if verb == "evaluate_done":
            return {"accuracy": session.evaluate_done(), **session.status()}, []
        if verb == "checkpoint":
            data = session.checkpoint_bytes()
            aad = b"refinement-checkpoint|" + session.plan.job_id.encode()
            return session.status(), [self.seal(data, policy=SealPolicy.MRENCLAVE, aad=aad)]
        if verb == "finish":
            blob, stats = session.finish()
            del self._sessions[session.plan.job_id]
            return stats, [blob]
        if verb == "abort":
            del self._sessions[session.plan.job_id]
            return {}, []
        if verb == "stats":
            return session.public_stats(), []
        raise ProtocolError(f"unknown operation {op!r}")


class _AnyQuote:
    """Accepts every quote hash: with a persistent MRENCLAVE-sealed key, possession of the key
    already proves the quote named this enclave (see ``_load_or_create_key``)."""

    def __contains__(self, item: object) -> bool:
        return isinstance(item, bytes) and len(item) == 32

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[bytes]:
        return iter(())


_ANY_QUOTE = _AnyQuote()


def _need(parts: list[bytes], n: int) -> None:
    if len(parts) != n:
        raise ProtocolError(f"expected {n} message part(s), got {len(parts)}")


def serve(runtime: EnclaveRuntime, instream: IO[bytes], outstream: IO[bytes]) -> None:
    """Answer requests until ``shutdown`` or end of stream. Errors never carry secrets."""
    limit = runtime.config.max_message_bytes
    while True:
        try:
            header, parts, _ = read_frame(instream, max_body=limit)
        except EnclaveError as exc:
            if "end of stream" in exc.message:
                return
            write_frame(
                outstream,
                {"ok": False, "code": type(exc).__name__, "message": exc.message},
                [],
                max_body=limit,
            )
            return
        op = str(header.pop("op", ""))
        if op == "shutdown":
            write_frame(outstream, {"ok": True}, [], max_body=limit)
            return
        start = time.perf_counter()
        try:
            reply, out = runtime.handle(op, header, parts)
            reply = {"ok": True, **reply}
        except (EnclaveError, CryptoError, CodecError, ValueError, KeyError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            reply, out = {"ok": False, "code": type(exc).__name__, "message": message}, []
        except Exception as exc:  # never leak internals or values; type name only
            # where it happened and the type, never the message: messages can carry values
            frames = "".join(traceback.format_tb(exc.__traceback__))
            print(f"enclave: {op!r} failed:\n{frames}{type(exc).__name__}", file=sys.stderr)
            reply, out = {"ok": False, "code": "InternalError", "message": type(exc).__name__}, []
        reply["enclave_s"] = time.perf_counter() - start
        try:
            write_frame(outstream, reply, out, max_body=limit)
        except ProtocolError as exc:
            write_frame(
                outstream,
                {"ok": False, "code": "ProtocolError", "message": exc.message},
                [],
                max_body=limit,
            )
