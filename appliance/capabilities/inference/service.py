"""Private ensemble inference in the service: ensembles, sessions, encrypted queries.

Server side (no Flask here; :mod:`appliance.capabilities.inference.routes` maps it to HTTP)::

    row = register_ensemble(store, principal, json_bytes=..., tensors_bytes=..., name="topics")
    sess = open_session(store, cache, principal, ensemble_id=row["id"], keys=eval_keys,
                        ttl_seconds=600)
    reply = predict(store, cache, principal, ensemble_id=row["id"], session_id=sess["id"],
                    body=ciphertext, batch=False)

The owner's artifact (``ensemble.json`` + ``ensemble.safetensors``) is stored as two
content-addressed blobs; only :func:`ensemble_spec` (templates, classes, encoder, preset,
norm bound, slot layout; never weights) is shown to callers. A session's evaluation keys (public
keys only; a secret-bearing context is refused *before* anything is written) are a blob too,
so every gunicorn process can lazily build the session's evaluator; :class:`EvaluatorCache`
keeps the most recently used ones per process (by default in a child process of each server
process, :mod:`appliance.capabilities.inference.host`, so that their memory goes back to the
system when the sessions close). Ciphertexts and keys are never logged, and
plaintext never reaches the server: clients embed and encrypt locally.

The client side (sessions holding the secret key, embedding, decryption) lives in the SDK:
:mod:`appliance.client.inference`.
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from appliance._internal.store import BlobStore, Store, dumps, loads, new_id, utcnow
from appliance.errors import Conflict, Gone, NotFound, PayloadTooLarge, UnprocessableInput, ValidationFailed

if TYPE_CHECKING:  # pragma: no cover - typing only
    from appliance._internal.auth import Principal
    from crypto.ensemble import EnsembleArtifact
    from crypto.private_inference.server import EnsembleEvaluator

#: Largest ``ensemble.json`` accepted (the public part of the artifact).
MAX_SPEC_BYTES = 1 << 20
#: Largest evaluation-key upload (a session's public context); ~11 MB at n8192-d3.
MAX_CONTEXT_BYTES = 64 << 20
#: The same for presets of ring degree 16384 (one-hot output: ~39 MB at n16384-d7, ~52 MB at
#: n16384-d8 for K=8 x 384-d, 10 classes; other shapes may need every rotation key, ~76-104 MB).
#: n32768-d18 keys (~0.9 GB) exceed it: such sessions are refused (413).
MAX_DEEP_CONTEXT_BYTES = 192 << 20
#: Largest single query ciphertext (~0.23 MB at n8192-d3 and n8192-d5: seeded, secret-key encrypted).
MAX_QUERY_BYTES = 4 << 20
#: Most ciphertexts in one batch request, and the batch body limit.
MAX_BATCH_ITEMS = 32
MAX_BATCH_BYTES = 64 << 20
#: Largest wide-layout body (one ciphertext per feature block; ~19.5 MB at K=8 x 384-d).
MAX_WIDE_BYTES = 64 << 20
#: Longest session a client may ask for (the configured TTL is the default).
MAX_SESSION_TTL_SECONDS = 7 * 24 * 3600
#: Evaluators (one per session) kept per process; each holds its session's keys (~25 MB).
DEFAULT_CACHE_SIZE = 8
#: Bound on the plaintext-encoded weights an evaluator holds (rows x N x primes x 8 bytes).
MAX_ENCODED_WEIGHT_BYTES = 256 << 20
#: The same for presets of ring degree 16384 (288 MiB at n16384-d8 for K=8 x 384-d, 10 classes).
MAX_DEEP_ENCODED_WEIGHT_BYTES = 512 << 20
OWNER_ROLES = ("admin", "auditor")


# -- response models (shared by the API, the OpenAPI document and the SDK) ---------------------
class EnsembleOut(BaseModel):
    """A registered ensemble (public facts only)."""

    id: str
    name: str
    members: int
    dim: int
    classes: list[str]
    encoder: str
    preset: str
    output: Literal["scores", "onehot", "label"] = "scores"
    size: int
    created_at: str


class EnsembleList(BaseModel):
    items: list[EnsembleOut]


class EnsembleLayoutOut(BaseModel):
    """Slot layout of the packed circuit (what the client packs and the server rotates)."""

    slots: int
    block: int
    n: int
    lane: int
    pad_classes: int
    class_stride: int = Field(
        default=0, description="row i * class_stride + j compares classes i and j (pair layouts: see "
                               "pairs); class i's result is in slot i * class_stride (rows for pair "
                               "layouts, classes for other linear win counts, else pad_classes; 0 "
                               "from servers that predate it means pad_classes)")
    rows: int
    chunk: int = Field(
        default=0, description="K of the chunked lane (slot p holds input (p // rows) * K + p % K; "
                               "0: the query twice per lane); absent from servers that predate it")
    pairs: bool = Field(
        default=False, description="rows hold each class pair i < j once, row pair_rows(C)[i, j]; class "
                                   "i's win count is in slot i * class_stride (class_stride = rows); "
                                   "false from servers that predate it")
    baby: int
    giant: int
    queries_per_ciphertext: int
    galois_steps: list[int]
    hidden: int = Field(default=0, description="hidden units per member (0: linear heads)")
    hidden_rows: int = Field(default=0, description="stage-1 rows m1 (K * hidden, power of two)")
    hidden_baby: int = 0
    hidden_giant: int = 0


class EnsembleWideLayoutOut(BaseModel):
    """Wide batch layout (slots index queries): ``chunks`` ciphertexts carry up to
    ``capacity`` queries, ``block`` features of each per ciphertext."""

    block: int
    chunks: int
    capacity: int
    galois_steps: list[int]
    max_regions: int = Field(
        default=1, description="partial batches may be replicated into up to this many regions (PEW2 "
                               "bodies); 1 from servers that predate regions")
    spread_regions: bool = Field(
        default=False, description="partial batches may be spread over the regions instead (PEW3 bodies, "
                                   "R times fewer ciphertexts); false from servers that predate it")
    single_keys: bool = Field(
        default=False, description="the wide layout needs no keys beyond the single layout's (beyond "
                                   "N=8192: galois_steps is empty, the server makes its rotations "
                                   "from the single layout's keys, bodies stay in one region); false "
                                   "from servers that predate it")


class EnsembleSpec(BaseModel):
    """What a client needs to embed, encrypt and decrypt: never the heads' weights."""

    id: str
    format: str
    templates: list[str]
    classes: list[str]
    members: int
    dim: int
    norm_bound: float
    encoder: str
    preset: str
    head: Literal["linear", "quadratic_mlp"] = Field(
        default="linear", description="'quadratic_mlp': one hidden layer, degree-2 activation")
    hidden: int | None = Field(default=None, description="hidden units per member (hidden heads)")
    output: Literal["scores", "onehot", "label"] = Field(
        default="scores",
        description="'scores': per-class win counts; 'label': the label alone, an exact one-hot vector, in "
                    "two rounds (the reply to a query is PEL1: a ticket and permuted, masked pair values; "
                    "the client posts the PES1 selection it builds from them and gets the label); "
                    "'onehot': products of comparisons in [0, 1] "
                    "(the label's near 1), no win counts")
    comparison_scale: float | None = Field(
        default=None, description="the owner's calibrated divisor of the pairwise logit differences "
                                  "(absent: the worst-case bound over all clipped embeddings); a query "
                                  "whose logit differences exceed it may get a wrong label")
    layout: EnsembleLayoutOut
    wide_layout: EnsembleWideLayoutOut | None = Field(
        default=None, description="absent where the server does not serve the wide layout for this "
                                  "ensemble (hidden-layer heads; encoded wide weights above the limit)")
    layouts: list[Literal["single", "wide"]] = Field(
        default_factory=lambda: list[Literal["single", "wide"]](["single"]),
        description="the request layouts this server serves for the ensemble; a client never "
                    "encrypts in a layout missing here (the server would refuse it with 422)")
    wide_refusal: str | None = Field(
        default=None, description="why the wide layout is not served (absent when it is)")


class EnsembleUpload(BaseModel):
    """multipart/form-data fields of an ensemble registration (the owner's artifact files)."""

    ensemble_json: bytes = Field(json_schema_extra={"format": "binary"},
                                 description="ensemble.json (EnsembleArtifact.dumps())")
    ensemble_safetensors: bytes = Field(json_schema_extra={"format": "binary"},
                                        description="ensemble.safetensors (weights, biases)")
    name: str | None = Field(default=None, min_length=1, max_length=128)


class SessionCreateQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ensemble_id: str = Field(min_length=1, max_length=64)
    ttl_seconds: int | None = Field(default=None, ge=1, le=MAX_SESSION_TTL_SECONDS)
    layout: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$",
                               description="digest of the client's single slot layout (SDKs send it)")


class SessionOut(BaseModel):
    id: str
    ensemble_id: str
    keys_size: int
    created_at: str
    expires_at: str


class PredictQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session: str = Field(min_length=1, max_length=64)
    batch: bool = Field(default=False, description="body framed with encode_blobs (PEB1)")
    layout: Literal["single", "wide"] = Field(
        default="single",
        description="'wide': body from PrivateClient.encrypt_wide_batch (PEW1, slots index queries)")


# -- ensembles ---------------------------------------------------------------------------------
def _load_artifact(files: dict[str, bytes]) -> EnsembleArtifact:
    from crypto.ensemble import ArtifactError, EnsembleArtifact

    try:
        return EnsembleArtifact.loads(files)
    except ArtifactError as exc:
        raise UnprocessableInput(f"ensemble artifact refused: {exc}",
                                 hint=ArtifactError.hint) from None


def _layout_info(spec: dict[str, Any]) -> dict[str, Any]:
    from crypto.private_inference.spec import single_layout

    layout = single_layout(spec)
    return {
        "slots": layout.slots, "block": layout.block, "n": layout.n, "lane": layout.lane,
        "pad_classes": layout.pad_classes, "class_stride": layout.stride, "rows": layout.rows,
        "chunk": layout.chunk, "pairs": layout.pairs,
        "baby": layout.baby,
        "giant": layout.giant, "queries_per_ciphertext": layout.queries_per_ciphertext,
        "galois_steps": list(layout.galois_steps), "hidden": layout.hidden,
        "hidden_rows": layout.hidden_rows, "hidden_baby": layout.hidden_baby,
        "hidden_giant": layout.hidden_giant,
    }


def wide_refusal(spec: dict[str, Any]) -> str | None:
    """Why this server does not serve the wide layout for ``spec`` (``None``: it does)."""
    from crypto import packing
    from crypto.ckks import get_preset
    from crypto.private_inference import spec as specs

    if spec.get("head", "linear") != "linear":
        return f"the wide layout serves linear heads only; this ensemble has {spec.get('head')} heads"
    label = specs.label_wide_refusal(spec)
    if label is not None:
        return label
    if not specs.wide_kept(spec):
        return None  # its weights are encoded as each batch goes, none are kept
    preset = get_preset(str(spec["preset"]))
    wide = specs.wide_layout(spec)
    # One plaintext per class and chunk, plus the region-tiled ones of partial batches spread
    # over R regions (per group of R classes: R moves of ceil(chunks / R) pieces) for each
    # region count R the layout uses. Replicated bodies of older clients add about as many.
    classes = len(spec["classes"])
    counts = {packing.wide_regions(wide, q) for q in range(1, wide.capacity + 1)}
    plaintexts = classes * wide.chunks + sum(-(-classes // r) * r * packing.spread_rows(wide, r)
                                             for r in counts if r > 1)
    encoded = plaintexts * preset.poly_modulus_degree * (len(preset.coeff_mod_bit_sizes) - 1) * 8
    if encoded > _weight_limit(preset.name):
        return (f"the wide layout of this ensemble needs {encoded >> 20} MiB of encoded weights; "
                f"the limit is {_weight_limit(preset.name) >> 20} MiB")
    return None


def _wide_layout_info(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The wide layout's geometry, or ``None`` where the server does not serve it
    (:func:`wide_refusal` says why)."""
    from crypto import packing
    from crypto.private_inference import spec as specs

    if wide_refusal(spec) is not None:
        return None
    wide = specs.wide_layout(spec)
    kept = specs.wide_kept(spec)  # else: rotations from the single layout's keys, one region
    return {"block": wide.block, "chunks": wide.chunks, "capacity": wide.capacity,
            "galois_steps": list(wide.galois_steps) if kept else [],
            "max_regions": packing.WIDE_MAX_REGIONS if kept else 1, "spread_regions": kept,
            "single_keys": not kept}


def register_ensemble(store: Store, principal: Principal, *, json_bytes: bytes,
                      tensors_bytes: bytes, name: str | None = None) -> dict[str, Any]:
    """Validate an owner's artifact files, store them as blobs and record the ensemble.

    Raises :class:`~appliance.errors.UnprocessableInput` for a malformed or inconsistent
    artifact (including one whose shape does not fit its preset's slots).
    """
    principal.require(*OWNER_ROLES)
    if len(json_bytes) > MAX_SPEC_BYTES:
        raise PayloadTooLarge(f"ensemble.json is limited to {MAX_SPEC_BYTES} bytes")
    from crypto.ensemble import JSON_NAME, TENSORS_NAME
    from crypto.errors import CryptoError

    art = _load_artifact({JSON_NAME: json_bytes, TENSORS_NAME: tensors_bytes})
    from crypto.ckks import get_preset

    if get_preset(art.preset).poly_modulus_degree > 16384:
        # Its evaluation keys could never be uploaded (see MAX_DEEP_CONTEXT_BYTES).
        raise UnprocessableInput(f"preset {art.preset!r} cannot be served: its evaluation keys "
                                 f"exceed the {MAX_DEEP_CONTEXT_BYTES >> 20} MiB session limit",
                                 hint=KEYS_HINT)
    spec = art.public_spec()
    try:
        _layout_info(spec)
    except CryptoError as exc:
        raise UnprocessableInput(f"the ensemble does not fit preset {art.preset!r}: {exc}") from None
    from crypto.private_inference.spec import encoded_weight_bytes

    encoded, limit = encoded_weight_bytes(spec), _weight_limit(art.preset)
    if encoded > limit:
        raise UnprocessableInput(
            f"{len(art.classes)} classes ({art.head} heads) need {encoded >> 20} MiB of encoded "
            f"weights per process at preset {art.preset!r}; the limit is {limit >> 20} MiB",
            hint="use fewer classes or hidden units, or a smaller preset")
    label = (name or art.metadata.get("name") or "ensemble").strip()[:128] or "ensemble"
    json_digest, json_size = store.blobs.put_bytes(json_bytes)
    tensors_digest, tensors_size = store.blobs.put_bytes(tensors_bytes)
    row = {
        "id": new_id("ens"), "tenant_id": principal.tenant_id, "name": label, "spec": dumps(spec),
        "json_digest": json_digest, "tensors_digest": tensors_digest,
        "size": json_size + tensors_size, "created_at": utcnow(),
    }
    with store.transaction():
        store.record_blob(json_digest, json_size)
        store.record_blob(tensors_digest, tensors_size)
        store.conn.execute(
            "INSERT INTO ensembles (id, tenant_id, name, spec, json_digest, tensors_digest, size, "
            "created_at) VALUES (:id, :tenant_id, :name, :spec, :json_digest, :tensors_digest, "
            ":size, :created_at)", row)
    return row


def ensemble_view(row: dict[str, Any]) -> dict[str, Any]:
    """Public listing entry of an ensemble row."""
    spec = loads(row["spec"])
    return {"id": row["id"], "name": row["name"], "members": spec["members"], "dim": spec["dim"],
            "classes": spec["classes"], "encoder": spec["encoder"], "preset": spec["preset"],
            "output": spec.get("output", "scores"), "size": row["size"],
            "created_at": row["created_at"]}


def ensemble_spec(row: dict[str, Any]) -> dict[str, Any]:
    """The client-facing public spec of an ensemble row, with its slot layout; no weights."""
    spec = loads(row["spec"])
    refusal = wide_refusal(spec)
    return {"id": row["id"], "output": "scores", **spec, "layout": _layout_info(spec),
            "wide_layout": _wide_layout_info(spec),
            "layouts": ["single"] if refusal else ["single", "wide"], "wide_refusal": refusal}


KEYS_HINT = ("n32768-d18 keys (~0.9 GB) are too large for a session; register the ensemble with "
             "preset n16384-d7 (one-hot output up to 16 classes with linear heads) or "
             "n16384-d8 (hidden heads)")


def _deep(preset: str) -> bool:
    from crypto.ckks import get_preset

    return get_preset(preset).poly_modulus_degree > 8192


def context_limit(preset: str) -> int:
    """Largest evaluation-key upload for an ensemble of ``preset``."""
    return MAX_DEEP_CONTEXT_BYTES if _deep(preset) else MAX_CONTEXT_BYTES


def _weight_limit(preset: str) -> int:
    return MAX_DEEP_ENCODED_WEIGHT_BYTES if _deep(preset) else MAX_ENCODED_WEIGHT_BYTES


def get_ensemble(store: Store, principal: Principal, ensemble_id: str) -> dict[str, Any]:
    """The caller's tenant's ensemble row, or 404 (also for other tenants' ensembles)."""
    return store.get_owned("ensembles", principal.tenant_id, ensemble_id, "ensemble")


# -- evaluators ----------------------------------------------------------------------------------
class Evaluators(Protocol):
    """Where sessions' evaluators live: :class:`EvaluatorCache` (in this process) or
    :class:`~appliance.capabilities.inference.host.HostedEvaluators` (in a child process that
    exits when the last session closes, so its memory goes back to the system)."""

    def open(self, blobs: BlobStore, ensemble: dict[str, Any], session_id: str, keys: bytes,
             layout: str) -> None:
        """Validate ``keys`` against the ensemble by building the session's evaluator in the
        single layout of ``layout`` (the key :func:`check_client_layout` gave), and keep it."""

    def evaluate(self, blobs: BlobStore, ensemble: dict[str, Any], session: dict[str, Any],
                 queries: list[bytes]) -> list[bytes]:
        """One reply per single-layout query ciphertext."""

    def evaluate_wide(self, blobs: BlobStore, ensemble: dict[str, Any], session: dict[str, Any],
                      body: bytes) -> bytes:
        """The reply to a wide-layout body."""

    def drop(self, ensemble_id: str, session_id: str) -> None:
        """Forget a session's evaluator."""

    def clear(self) -> None:
        """Forget every evaluator."""


# -- evaluator cache (per process) ---------------------------------------------------------------
@dataclass
class _Entry:
    evaluator: EnsembleEvaluator
    lock: threading.Lock = field(default_factory=threading.Lock)


def release_memory() -> bool:
    """Collect unreachable evaluators now and return freed heap pages to the OS where glibc
    allows (``malloc_trim``); ``True`` if it trimmed.

    SEAL keeps what its objects free (keys, encoded weights, temporaries) in its global memory
    pool, which TenSEAL does not expose: that part is reused by the next session, so resident
    memory is bounded by the busiest moment rather than by session churn, but is not returned.
    """
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False


class EvaluatorCache:
    """LRU of session evaluators in this process, keyed by (ensemble id, session id).

    Sessions of the same ensemble share the plaintext-encoded weights (``with_session``). A
    session opened in another process is rebuilt from its stored key blob on first use.
    """

    def __init__(self, *, capacity: int = DEFAULT_CACHE_SIZE) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._artifacts: OrderedDict[str, EnsembleArtifact] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[tuple[str, str], threading.Lock] = {}
        self.builds = 0  # evaluators built in this process (observability, tests)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def clear(self) -> None:
        """Drop every cached evaluator and artifact (as a fresh worker process would have)."""
        with self._lock:
            self._entries.clear()
            self._artifacts.clear()
        release_memory()

    def drop(self, ensemble_id: str, session_id: str) -> None:
        """Forget a session's evaluator and hand the freed memory back (:func:`release_memory`)."""
        with self._lock:
            entry = self._entries.pop((ensemble_id, session_id), None)
        if entry is not None:
            del entry
            release_memory()

    def artifact(self, blobs: BlobStore, row: dict[str, Any]) -> EnsembleArtifact:
        """The ensemble's artifact, read from its blobs once per process."""
        with self._lock:
            art = self._artifacts.get(row["id"])
            if art is not None:
                self._artifacts.move_to_end(row["id"])
                return art
        from crypto.ensemble import JSON_NAME, TENSORS_NAME

        files = {}
        for name, digest in ((JSON_NAME, row["json_digest"]), (TENSORS_NAME, row["tensors_digest"])):
            path = blobs.path(digest)
            if not path.is_file():
                raise Gone(f"the artifact of ensemble {row['id']!r} is no longer stored")
            files[name] = path.read_bytes()
        art = _load_artifact(files)
        with self._lock:
            art = self._artifacts.setdefault(row["id"], art)
            while len(self._artifacts) > self.capacity:
                self._artifacts.popitem(last=False)
        return art

    def build(self, artifact: EnsembleArtifact, ensemble_id: str, keys: bytes, *, layout: str | None,
              session_id: str) -> EnsembleEvaluator:
        """A validated evaluator for ``keys`` in the session's single layout (its stored key,
        410 if it has none), sharing weights with a cached sibling of that layout if any.

        Raises :class:`~appliance.errors.UnprocessableInput` when the keys hold a secret key,
        have other parameters than the ensemble's preset, lack a needed rotation key, or are
        malformed.
        """
        from crypto.ckks import ContextError
        from crypto.private_inference.server import EnsembleEvaluator

        single = _session_layout(artifact.public_spec(), layout, session_id)
        sibling = None
        with self._lock:
            for (ens, _), entry in reversed(self._entries.items()):
                if ens == ensemble_id and entry.evaluator._artifact is artifact and entry.evaluator.layout == single:
                    sibling = entry.evaluator
                    break
        try:
            evaluator = EnsembleEvaluator(artifact=artifact, public_context=keys,
                                          max_context_bytes=context_limit(artifact.preset),
                                          max_query_bytes=MAX_QUERY_BYTES,
                                          max_wide_bytes=MAX_WIDE_BYTES, shared=sibling, layout=single)
        except ContextError as exc:
            raise UnprocessableInput(f"evaluation keys refused: {exc}", hint=exc.hint) from None
        except (ValueError, RuntimeError, TypeError):  # SEAL on corrupt inner blobs
            raise UnprocessableInput("evaluation keys refused: malformed context blob") from None
        self.builds += 1
        return evaluator

    def put(self, ensemble_id: str, session_id: str, evaluator: EnsembleEvaluator) -> _Entry:
        entry = _Entry(evaluator)
        with self._lock:
            self._entries[(ensemble_id, session_id)] = entry
            self._entries.move_to_end((ensemble_id, session_id))
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return entry

    def get_or_load(self, blobs: BlobStore, ensemble: dict[str, Any],
                    session: dict[str, Any]) -> _Entry:
        """The session's evaluator: cached, or rebuilt from the stored evaluation keys."""
        key = (ensemble["id"], session["id"])
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
            build_lock = self._building.setdefault(key, threading.Lock())
        with build_lock:  # one build per session even when several threads ask at once
            with self._lock:
                entry = self._entries.get(key)
            if entry is not None:
                return entry
            digest = session["keys_digest"]
            path = blobs.path(digest) if digest else None
            if path is None or not path.is_file():
                raise Gone(f"inference session {session['id']!r} has expired or was closed")
            artifact = self.artifact(blobs, ensemble)
            evaluator = self.build(artifact, ensemble["id"], path.read_bytes(), layout=session.get("layout"),
                                   session_id=str(session["id"]))
            entry = self.put(ensemble["id"], session["id"], evaluator)
        with self._lock:
            self._building.pop(key, None)
        return entry

    def open(self, blobs: BlobStore, ensemble: dict[str, Any], session_id: str, keys: bytes,
             layout: str) -> None:
        """Build the session's evaluator from ``keys`` in ``layout``'s single layout (422 if
        refused) and keep it."""
        evaluator = self.build(self.artifact(blobs, ensemble), ensemble["id"], keys, layout=layout,
                               session_id=session_id)
        self.put(ensemble["id"], session_id, evaluator)

    def evaluate(self, blobs: BlobStore, ensemble: dict[str, Any], session: dict[str, Any],
                 queries: list[bytes]) -> list[bytes]:
        entry = self.get_or_load(blobs, ensemble, session)
        with _refused("ciphertext"), entry.lock:
            return [entry.evaluator.evaluate(q) for q in queries]

    def evaluate_wide(self, blobs: BlobStore, ensemble: dict[str, Any], session: dict[str, Any],
                      body: bytes) -> bytes:
        entry = self.get_or_load(blobs, ensemble, session)
        with _refused("wide batch", context_hint="open a new session with keys from this SDK version"), entry.lock:
            return entry.evaluator.evaluate_wide_batch(body)


# -- sessions ----------------------------------------------------------------------------------
def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def session_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "ensemble_id": row["ensemble_id"], "keys_size": row["keys_size"],
            "created_at": row["created_at"], "expires_at": _iso(float(row["expires_at"]))}


def _forget_keys(store: Store, digest: str | None) -> None:
    """Delete a key blob no live session references any more (keys are not kept past use)."""
    if not digest:
        return
    still = store.conn.execute(
        "SELECT 1 FROM inference_sessions WHERE keys_digest = ? LIMIT 1", (digest,)).fetchone()
    if still is not None:
        return
    try:
        store.conn.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
    except Exception:  # referenced by another table: leave it
        return
    path = store.blobs.path(digest)
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def sweep_expired(store: Store, *, now: float | None = None) -> int:
    """Drop the key blobs of expired sessions (rows stay so late queries get 410); returns
    how many sessions were swept."""
    now = time.time() if now is None else now
    rows = store.conn.execute(
        "SELECT id, keys_digest FROM inference_sessions WHERE expires_at <= ? "
        "AND keys_digest IS NOT NULL LIMIT 100", (now,)).fetchall()
    for row in rows:
        store.conn.execute("UPDATE inference_sessions SET keys_digest = NULL WHERE id = ?",
                           (row["id"],))
        _forget_keys(store, row["keys_digest"])
    return len(rows)


#: The layout key of sessions whose client sent no layout digest (SDKs that predate it).
LEGACY_LAYOUT = "legacy"
UPGRADE_HINT = ("the client and the server pack queries differently (different versions); upgrade "
                "the appliance SDK (pip install --upgrade) and open the session again")


def check_client_layout(spec: dict[str, Any], digest: str | None) -> str:
    """The layout key a session stores (the client's digest, or :data:`LEGACY_LAYOUT` for a
    client that sends none), once the server serves that client's packing
    (:func:`crypto.private_inference.spec.session_layout`: its own, or where it has pair rows
    also the ones older SDKs compute, if their weights fit the limit); else 422: ciphertexts
    packed another way would decrypt to wrong labels, not to an error."""
    from crypto.packing import LayoutError
    from crypto.private_inference.spec import encoded_weight_bytes, session_layout, single_layout

    try:
        layout = session_layout(spec, digest)
    except LayoutError as exc:
        raise UnprocessableInput(str(exc), hint=UPGRADE_HINT) from None
    if layout != single_layout(spec) and encoded_weight_bytes(spec, layout) > _weight_limit(str(spec["preset"])):
        raise UnprocessableInput("this client packs queries in an earlier layout whose encoded weights "
                                 "exceed this server's limit", hint=UPGRADE_HINT)
    return LEGACY_LAYOUT if digest is None else digest


def _session_layout(spec: dict[str, Any], key: str | None, session_id: str) -> Any:
    """The single layout of a session from the layout key it stored (410 for a session opened
    by a server that did not record one: its client may pack queries another way than this
    server would answer, and wrong labels must not come back)."""
    from crypto.packing import LayoutError
    from crypto.private_inference.spec import session_layout

    if not key:
        raise Gone(f"inference session {session_id!r} was opened by an earlier version of the "
                   "server; open a new one")
    try:
        return session_layout(spec, None if key == LEGACY_LAYOUT else str(key))
    except LayoutError:
        raise Gone(f"inference session {session_id!r} packs queries in a layout this server no "
                   "longer serves; open a new one") from None


def open_session(store: Store, cache: Evaluators, principal: Principal, *, ensemble_id: str,
                 keys: bytes, ttl_seconds: int, layout: str | None = None) -> dict[str, Any]:
    """Validate uploaded evaluation keys against the ensemble and open a session.

    The client's layout digest is checked (:func:`check_client_layout`), then the keys (no
    secret key, the ensemble's preset, every needed rotation key) by building the evaluator
    *before* anything is stored, so refused material never touches disk. Any role of the
    owning tenant may open a session.
    """
    if not 1 <= ttl_seconds <= MAX_SESSION_TTL_SECONDS:
        raise ValidationFailed(f"ttl_seconds must lie in [1, {MAX_SESSION_TTL_SECONDS}]")
    ensemble = get_ensemble(store, principal, ensemble_id)
    layout_key = check_client_layout(loads(ensemble["spec"]), layout)
    limit = context_limit(str(loads(ensemble["spec"])["preset"]))
    if len(keys) > limit:
        raise PayloadTooLarge(f"evaluation keys are limited to {limit} bytes for this ensemble's preset",
                              hint=KEYS_HINT)
    if not keys:
        raise UnprocessableInput("the body must hold the evaluation keys (public context)")
    session_id = new_id("ses")
    cache.open(store.blobs, ensemble, session_id, keys, layout_key)
    try:
        sweep_expired(store)
        digest, size = store.blobs.put_bytes(keys)
        created = time.time()
        row = {"id": session_id, "tenant_id": principal.tenant_id, "ensemble_id": ensemble["id"],
               "keys_digest": digest, "keys_size": size, "token_id": principal.token_id,
               "layout": layout_key,
               "created_at": _iso(created), "expires_at": created + ttl_seconds}
        with store.transaction():
            store.record_blob(digest, size)
            store.conn.execute(
                "INSERT INTO inference_sessions (id, tenant_id, ensemble_id, keys_digest, keys_size, "
                "token_id, layout, created_at, expires_at) VALUES (:id, :tenant_id, :ensemble_id, "
                ":keys_digest, :keys_size, :token_id, :layout, :created_at, :expires_at)", row)
    except BaseException:
        cache.drop(ensemble["id"], session_id)
        raise
    return row


def get_session(store: Store, principal: Principal, session_id: str) -> dict[str, Any]:
    """The session row if the caller's own token opened it, else 404: a session's evaluation
    keys belong to one client, not to every token of its tenant."""
    row = store.get_owned("inference_sessions", principal.tenant_id, session_id,
                          "inference session")
    if row["token_id"] != principal.token_id:
        shown = session_id if len(session_id) <= 80 else session_id[:80] + "…"
        raise NotFound(f"inference session {shown!r} not found")
    return row


def close_session(store: Store, cache: Evaluators, principal: Principal,
                  session_id: str) -> None:
    """Delete a session and its stored evaluation keys (404 for another token's)."""
    row = get_session(store, principal, session_id)
    with store.transaction():
        store.conn.execute("DELETE FROM inference_sessions WHERE id = ?", (row["id"],))
        _forget_keys(store, row["keys_digest"])
    cache.drop(row["ensemble_id"], row["id"])


def predict(store: Store, cache: Evaluators, principal: Principal, *, ensemble_id: str,
            session_id: str, body: bytes | Callable[[], bytes], batch: bool,
            layout: str = "single") -> bytes:
    """Evaluate the ensemble and the encrypted argmax on the body's ciphertext(s).

    ``body`` may be a callable, read only once the ensemble and session are known to be
    usable. ``batch`` bodies are framed with :func:`crypto.private_inference.wire.encode_blobs`
    and so is the reply. ``layout="wide"`` bodies come from
    :meth:`~crypto.private_inference.client.PrivateClient.encrypt_wide_batch` (many queries, slots
    index queries) and the reply is one ciphertext per class, framed the same way; a body of
    the other layout is refused (422). A label-output ensemble answers a query ciphertext with
    round 1 (``PEL1``) and a ``PES1`` selection with round 2 (:mod:`crypto.private_inference.label`).
    Errors: 404 (unknown ensemble or session, or another tenant's), 409
    (session of another ensemble), 410 (expired session), 413 (oversize), 422 (malformed,
    truncated or foreign-parameter ciphertexts; a used, unknown or expired round-1 ticket).
    """
    from crypto.ckks import CiphertextError
    from crypto.private_inference.label import SELECT_MAGIC
    from crypto.private_inference.wire import decode_blobs, encode_blobs

    ensemble = get_ensemble(store, principal, ensemble_id)
    session = get_session(store, principal, session_id)
    if session["ensemble_id"] != ensemble["id"]:
        raise Conflict(f"session {session['id']!r} belongs to another ensemble")
    if float(session["expires_at"]) <= time.time() or not session["keys_digest"]:
        cache.drop(ensemble["id"], session["id"])
        raise Gone(f"inference session {session['id']!r} expired at "
                   f"{_iso(float(session['expires_at']))}; open a new one",
                   hint="POST /v1/inference/sessions again with fresh evaluation keys")
    if layout not in ("single", "wide"):
        raise ValidationFailed("layout is 'single' or 'wide'")
    if layout == "wide" and batch:
        raise ValidationFailed("a wide body frames its own ciphertexts; drop batch=true")
    if callable(body):
        body = body()
    if layout == "wide":
        return _predict_wide(store, cache, ensemble, session, body)
    if is_wide_body(body):
        raise wide_body_sent_as_single()
    if batch:
        try:
            queries = decode_blobs(body, max_items=MAX_BATCH_ITEMS, max_bytes=MAX_BATCH_BYTES)
        except CiphertextError as exc:
            raise UnprocessableInput(f"batch body refused: {exc}") from None
    else:
        queries = [body]
    if not any(queries) and not body:
        raise UnprocessableInput("the body must hold a ciphertext")
    replies = cache.evaluate(store.blobs, ensemble, session, queries)
    # A label-output selection (round 2) finishes a query already counted in round 1.
    asked = sum(1 for q in queries if q[:len(SELECT_MAGIC)] != SELECT_MAGIC)
    store.conn.execute("UPDATE inference_sessions SET queries = queries + ? WHERE id = ?",
                       (asked, session["id"]))
    return encode_blobs(replies) if batch else replies[0]


def is_wide_body(data: bytes) -> bool:
    """Whether ``data`` starts like a wide-layout body (PEW1, or PEW2/PEW3 for partial batches)."""
    from crypto.private_inference.wire import is_wide_body as _is_wide

    return _is_wide(data)


def wide_body_sent_as_single() -> UnprocessableInput:
    """The 422 for a wide-layout body posted without ``layout=wide`` (whatever its size)."""
    return UnprocessableInput(
        "this is a wide body (PEW1/PEW2/PEW3 header): it carries many queries in the wide layout",
        hint="post it with layout=wide (and without batch=true), if the spec's 'layouts' lists 'wide'")


@contextmanager
def _refused(what: str, *, context_hint: str | None = None) -> Iterator[None]:
    """Turn the evaluator's refusals of a client's ciphertexts into 422 problems.

    A :class:`~crypto.ckks.ContextError` (the session's keys do not serve the circuit) becomes
    a 422 only where ``context_hint`` says how to fix it; otherwise it propagates.
    """
    from crypto.ckks import CiphertextError, ContextError
    from crypto.packing import LayoutError

    try:
        yield
    except ContextError as exc:
        if context_hint is None:
            raise
        raise UnprocessableInput(f"{what} refused: {exc}", hint=context_hint) from None
    except (CiphertextError, LayoutError) as exc:
        raise UnprocessableInput(f"{what} refused: {exc}", hint=CiphertextError.hint) from None
    except (ValueError, RuntimeError, TypeError):  # SEAL's own checks on hostile inner blobs
        raise UnprocessableInput(f"{what} refused: it does not fit the session parameters",
                                 hint=CiphertextError.hint) from None


def _predict_wide(store: Store, cache: Evaluators, ensemble: dict[str, Any],
                  session: dict[str, Any], body: bytes) -> bytes:
    from crypto.private_inference.wire import wide_query_count

    if not body:
        raise UnprocessableInput("the body must hold a wide batch")
    refusal = wide_refusal(loads(ensemble["spec"]))
    if refusal is not None:
        raise UnprocessableInput(refusal, hint="send single-layout ciphertexts (layout=single); the "
                                               "spec's 'layouts' lists what this ensemble accepts")
    reply = cache.evaluate_wide(store.blobs, ensemble, session, body)
    # A label-output selection (round 2, PES1) counts 0: its queries were counted in round 1.
    store.conn.execute("UPDATE inference_sessions SET queries = queries + ? WHERE id = ?",
                       (wide_query_count(body), session["id"]))
    return reply
