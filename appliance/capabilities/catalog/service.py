"""Registering models and datasets: streamed to content-addressed blobs, validated, refused
when unsafe (pickle in any guise), and given a signed manifest.

Pure service functions (no Flask): the API, the CLI and notebooks call the same code.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from appliance._internal.auth import Principal
from appliance._internal.config import Settings
from appliance._internal.identity import identity_for
from appliance._internal.store import Store, dumps, loads, new_id, utcnow
from appliance.errors import PayloadTooLarge, UnprocessableInput, ValidationFailed
from crypto.dsse import canonical_json, sign_envelope
from models.architectures import create_architecture
from models.bounded_json import load_bounded_json
from models.datasets import load_npz_dataset
from models.engine import load_model
from models.errors import DatasetError, LimitExceeded, ModelError, ModelFormatError
from models.formats import extract_transformers_tar, sniff_and_validate, validate_onnx, validate_safetensors_header
from models.generators import generator_config, safetensors_generator_config
from models.manifest import build_manifest
from models.textdata import looks_like_jsonl, parse_jsonl, summarize

if TYPE_CHECKING:
    from models.datasets import LabelledArray

MANIFEST_PAYLOAD_TYPE = "application/vnd.in-toto+json"
MODEL_KINDS = ("classifier", "encoder", "causal_lm", "generator")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$")


def _check_name(name: str | None, what: str) -> str:
    if not name or not _NAME_RE.match(name):
        raise ValidationFailed(
            f"{what} name must be 1-128 characters: letters, digits, space, '.', '_', '-'"
        )
    return name


def _safe_filename(filename: str | None, default: str) -> str:
    base = os.path.basename(filename or "") or default
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base)[:128]
    return base if base not in {".", ".."} else default




def transformers_dir(store: Store, tar_digest: str) -> Path:
    """Extracted transformers model folder for a tar blob (extracted once, atomically)."""
    return extract_once(store.blobs.path(tar_digest), store.settings.home / "modeldirs" / tar_digest,
                        settings=store.settings)


def extract_once(tar_path: Path, target: Path, *, settings: Settings) -> Path:
    """Extract a transformers tar into ``target`` unless a previous extraction is there; safe
    against concurrent extractions (the first rename wins). Returns the model folder, which
    holds only that tar's files (each folder is named by the tar's digest)."""
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
        try:
            extract_transformers_tar(tar_path, tmp, max_total_bytes=settings.max_extracted_bytes,
                                     max_entries=settings.max_archive_entries)
            try:
                os.replace(tmp, target)
            except OSError:
                if not target.is_dir():  # else a concurrent extraction won the race
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return _single_child(target)


def _single_child(folder: Path) -> Path:
    if (folder / "config.json").is_file():
        return folder
    children = [p for p in folder.iterdir() if p.is_dir()]
    if len(children) == 1 and (children[0] / "config.json").is_file():
        return children[0]
    return folder


def _infer_transformers_kind(model_dir: Path) -> str:
    config = load_bounded_json((model_dir / "config.json").read_bytes(), what="config.json")
    archs = config.get("architectures") if isinstance(config, dict) else None
    if not isinstance(archs, list):
        archs = []
    archs = [a for a in archs if isinstance(a, str)]
    if any("CausalLM" in a or "LMHead" in a for a in archs):
        return "causal_lm"
    if any("SequenceClassification" in a for a in archs):
        return "classifier"
    return "encoder"


def register_model(
    store: Store,
    principal: Principal,
    *,
    stream: IO[bytes],
    filename: str | None,
    name: str,
    declared_format: str | None = None,
    kind: str | None = None,
    architecture: str | None = None,
    config: dict[str, Any] | None = None,
    check_signature: Callable[[Path], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Store, validate and sign a model upload; returns the model row.

    ``check_signature`` (given when the upload carries a model.sig) is called with the model
    file or folder before anything is recorded; it returns the verified signer, recorded on
    the model, or raises, and then nothing is stored."""
    principal.require("admin", "auditor")
    _check_name(name, "model")
    if kind is not None and kind not in MODEL_KINDS:
        raise ValidationFailed(f"kind must be one of {', '.join(MODEL_KINDS)}")
    if declared_format is not None and declared_format not in ("onnx", "safetensors",
                                                              "transformers"):
        raise ValidationFailed("format must be onnx, safetensors or transformers")
    settings = store.settings
    digest, size, pin = store.put_upload(stream, max_bytes=settings.max_upload_bytes)
    safe_name = _safe_filename(filename, "model")
    try:
        if declared_format == "transformers" or safe_name.endswith((".tar", ".tar.gz", ".tgz")):
            if kind == "generator":
                raise ValidationFailed("generators are registered as ONNX graphs or safetensors "
                                       "with a generator architecture: (noise, class) -> samples")
            fmt = "transformers"
            model_dir = transformers_dir(store, digest)
            kind = kind or _infer_transformers_kind(model_dir)
            manifest_target = model_dir
        else:
            blob_path = store.blobs.path(digest)
            named = _named_copy(store, blob_path, safe_name)
            try:
                fmt = sniff_and_validate(named, declared=declared_format,
                                         max_bytes=settings.max_upload_bytes,
                                         max_expanded_bytes=settings.max_extracted_bytes,
                                         max_entries=settings.max_archive_entries,
                                         single_file=True)
            finally:
                shutil.rmtree(named.parent, ignore_errors=True)
            if fmt == "transformers":
                raise UnprocessableInput("transformers models are uploaded as a tar archive")
            if fmt == "onnx" and isinstance((config or {}).get("kind"), str):
                kind = kind or str((config or {})["kind"])
            kind = kind or "classifier"
            if fmt == "safetensors":
                if not architecture:
                    raise ValidationFailed(
                        "safetensors uploads need 'architecture' and 'config'",
                        hint="list architectures with GET /v1/architectures",
                    )
                if kind == "generator":  # (noise, class) -> samples, probed on every class
                    config = safetensors_generator_config(blob_path, architecture, config)
                else:
                    _check_safetensors_loads(blob_path, architecture, config or {})
            elif architecture:
                raise ValidationFailed("'architecture' only applies to safetensors uploads")
            elif kind == "generator":
                config = generator_config(blob_path, config)
            else:
                _check_onnx_options(config, kind)
            manifest_target = None
        model_id = new_id("mdl")
        signer: dict[str, Any] | None = None
        if manifest_target is None:
            statement, signer = _blob_manifest(store, digest, safe_name, name, check_signature)
        else:
            statement = build_manifest(manifest_target, model_name=name)
            if check_signature is not None:
                signer = check_signature(manifest_target)
    except (ModelError, ValueError) as exc:
        store.drop_refused_upload(pin, digest)
        if isinstance(exc, ValidationFailed | UnprocessableInput):
            raise
        if isinstance(exc, LimitExceeded):
            raise PayloadTooLarge(str(exc), hint=exc.hint) from None
        raise UnprocessableInput(str(exc), hint=getattr(exc, "diagnostics", lambda: "")()) \
            from None
    except BaseException:
        store.drop_refused_upload(pin, digest)
        raise
    envelope, files = _signed_manifest(settings, statement)
    with store.transaction():
        store.record_blob(digest, size)
        store.unpin(pin)
        store.conn.execute(
            "INSERT INTO models (id, tenant_id, name, format, kind, architecture, config, files, "
            "storage, manifest, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                model_id, principal.tenant_id, name, fmt, kind, architecture,
                dumps(config) if config is not None else None, dumps(files),
                dumps({"blob": digest, "size": size, "filename": safe_name}),
                dumps(envelope), utcnow(),
            ),
        )
        if signer is not None:  # the column comes with the signatures capability's migration
            store.conn.execute("UPDATE models SET signer = ? WHERE id = ?",
                               (dumps(signer), model_id))
    return store.get_owned("models", principal.tenant_id, model_id, "model")


def _blob_manifest(store: Store, digest: str, filename: str, name: str,
                   check_signature: Callable[[Path], dict[str, Any]] | None
                   ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The model-signing statement of a single-file model stored as blob ``digest`` (linked
    under ``filename``, the name its manifest records) and, given ``check_signature``, the
    verified signer of that file."""
    with tempfile.TemporaryDirectory(dir=store.settings.tmp_dir) as tmp:
        link = Path(tmp) / filename
        os.link(store.blobs.path(digest), link)
        statement = build_manifest(link, model_name=name)
        signer = check_signature(link) if check_signature is not None else None
    return statement, signer


def _signed_manifest(settings: Settings, statement: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The statement signed by the appliance (a DSSE envelope) and the files it names."""
    envelope = sign_envelope(canonical_json(statement), MANIFEST_PAYLOAD_TYPE, identity_for(settings).signing_key)
    files = [{"name": r["name"], "sha256": r["digest"]} for r in statement["predicate"]["resources"]]
    return envelope, files


def _named_copy(store: Store, blob_path: Path, name: str) -> Path:
    folder = store.settings.tmp_dir / f"sniff-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    target = folder / name
    os.link(blob_path, target)
    return target


ONNX_OPTIONS = {"kind": ("classifier", "encoder"), "output": ("logits", "probabilities")}


def _check_onnx_options(config: dict[str, Any] | None, kind: str) -> None:
    """An ONNX model's optional ``config`` is read at job time: refuse what would fail there."""
    for key, value in (config or {}).items():
        if key not in ONNX_OPTIONS:
            raise ValidationFailed(
                f"unknown ONNX option {key!r}; accepted: {', '.join(ONNX_OPTIONS)}")
        if value not in ONNX_OPTIONS[key]:
            raise ValidationFailed(
                f"ONNX option {key!r} must be one of {', '.join(ONNX_OPTIONS[key])}")
    if config and "kind" in config and config["kind"] != kind:
        raise ValidationFailed(f"config kind {config['kind']!r} contradicts kind {kind!r}")


def _check_safetensors_loads(path: Path, architecture: str, config: dict[str, Any]) -> None:
    """Load the weights into the architecture; the shapes are first compared on the meta
    device, so a config naming a huge network is refused without allocating it."""
    import torch

    header = validate_safetensors_header(path)
    with torch.device("meta"):
        module = create_architecture(architecture, config)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    if expected != found:
        missing = sorted(set(expected) - set(found))[:5]
        unexpected = sorted(set(found) - set(expected))[:5]
        shapes = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])[:5]
        raise ModelFormatError(
            f"safetensors weights do not fit architecture {architecture!r} with this config: "
            f"missing {missing}, unexpected {unexpected}, shape mismatches {shapes}")
    try:
        load_model(path, format="safetensors", architecture=architecture, config=config,
                   device="cpu")
    except (RuntimeError, MemoryError, TypeError) as exc:
        raise ModelFormatError(f"weights cannot be loaded into {architecture!r}: {exc}") from None


def model_view(row: dict[str, Any]) -> dict[str, Any]:
    storage = loads(row["storage"])
    return {
        "id": row["id"], "name": row["name"], "format": row["format"], "kind": row["kind"],
        "architecture": row["architecture"], "config": loads(row["config"]),
        "files": loads(row["files"]), "size": storage.get("size"),
        "signer": loads(row.get("signer")), "origin": loads(row.get("origin")),
        "created_at": row["created_at"],
    }


def model_input(row: dict[str, Any]) -> dict[str, Any]:
    """The JSON a job message carries to let any worker load this model."""
    return {
        "id": row["id"], "name": row["name"], "format": row["format"], "kind": row["kind"],
        "architecture": row["architecture"], "config": loads(row["config"]),
        "blob": loads(row["storage"])["blob"], "files": loads(row["files"]),
        "signer": loads(row.get("signer")), "origin": loads(row.get("origin")),
    }


def record_trained_model(store: Store, tenant_id: str, *, model_id: str, name: str, digest: str,
                         kind: str, architecture: str | None, config: dict[str, Any],
                         origin: dict[str, Any]) -> bool:
    """Register weights a job trained and saved as blob ``digest`` as the tenant's model
    ``model_id`` (given by the job, so its report can name it), with a signed manifest and its
    ``origin``: safetensors of ``architecture``, or (``architecture`` None) an ONNX graph.
    Idempotent: a model of that id already there is kept. Returns whether a row was added;
    weights that do not load into the architecture, or a graph that fails validation, are
    refused."""
    _check_name(name, "model")
    if kind not in MODEL_KINDS:
        raise ValidationFailed(f"kind must be one of {', '.join(MODEL_KINDS)}")
    if store.conn.execute("SELECT 1 FROM models WHERE id = ?", (model_id,)).fetchone():
        return False
    blob_path = store.blobs.path(digest)
    if not blob_path.is_file():
        raise UnprocessableInput(f"the weights of model {model_id} (blob {digest}) are missing")
    try:
        if architecture is None:
            validate_onnx(blob_path)
        else:
            _check_safetensors_loads(blob_path, architecture, config)
    except ModelError as exc:
        raise UnprocessableInput(str(exc)) from None
    fmt = "safetensors" if architecture is not None else "onnx"
    filename = f"model.{fmt}"
    statement, _ = _blob_manifest(store, digest, filename, name, None)
    envelope, files = _signed_manifest(store.settings, statement)
    size = blob_path.stat().st_size
    with store.transaction():
        store.record_blob(digest, size)
        cur = store.conn.execute(
            "INSERT OR IGNORE INTO models (id, tenant_id, name, format, kind, architecture, config, "
            "files, storage, manifest, origin, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (model_id, tenant_id, name, fmt, kind, architecture, dumps(config), dumps(files),
             dumps({"blob": digest, "size": size, "filename": filename}), dumps(envelope),
             dumps(origin), utcnow()),
        )
    return cur.rowcount == 1


def read_dataset(settings: Settings, path: Path, *, require_labels: bool = False) -> LabelledArray:
    """Load a stored ``.npz`` within the appliance's bounds (upload size, decompressed bytes,
    entries); the API and every worker read datasets through here."""
    return load_npz_dataset(path, max_bytes=settings.max_upload_bytes,
                            require_labels=require_labels,
                            max_array_bytes=settings.max_dataset_bytes,
                            max_entries=settings.max_archive_entries)


def register_dataset(
    store: Store, principal: Principal, *, stream: IO[bytes], name: str
) -> dict[str, Any]:
    """Store and validate an ``.npz`` dataset (keys ``x`` and optional integer ``y``) or a
    ``.jsonl`` text dataset (see :mod:`models.textdata`)."""
    principal.require("admin", "auditor")
    _check_name(name, "dataset")
    digest, size, pin = store.put_upload(stream, max_bytes=store.settings.max_upload_bytes)
    with open(store.blobs.path(digest), "rb") as handle:
        if looks_like_jsonl(handle.read(64)):
            return _register_jsonl(store, principal, digest=digest, size=size, name=name, pin=pin)
    try:
        data = read_dataset(store.settings, store.blobs.path(digest))
    except LimitExceeded as exc:
        store.drop_refused_upload(pin, digest)
        raise PayloadTooLarge(f"dataset refused: {exc}", hint=exc.hint) from None
    except (DatasetError, ModelError, ValueError) as exc:
        store.drop_refused_upload(pin, digest)
        raise UnprocessableInput(f"dataset refused: {exc}") from None
    except BaseException:
        store.drop_refused_upload(pin, digest)
        raise
    num_classes = int(data.y.max()) + 1 if data.y is not None and len(data.y) else None
    return _record_dataset(store, principal, pin=pin, digest=digest, size=size, name=name,
                           n=int(data.x.shape[0]), shape=list(data.x.shape[1:]),
                           has_labels=data.y is not None, num_classes=num_classes,
                           meta={"dtype": str(data.x.dtype)})


def _record_dataset(store: Store, principal: Principal, *, pin: str, digest: str, size: int,
                    name: str, n: int, shape: list[int], has_labels: bool,
                    num_classes: int | None, meta: dict[str, Any]) -> dict[str, Any]:
    """Record a validated upload: its blob kept (unpinned) and the dataset row, in one
    transaction."""
    dataset_id = new_id("dst")
    with store.transaction():
        store.record_blob(digest, size)
        store.unpin(pin)
        store.conn.execute(
            "INSERT INTO datasets (id, tenant_id, name, digest, size, n, shape, has_labels, "
            "num_classes, meta, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (dataset_id, principal.tenant_id, name, digest, size, n, dumps(shape),
             int(has_labels), num_classes, dumps(meta), utcnow()))
    return store.get_owned("datasets", principal.tenant_id, dataset_id, "dataset")


def _register_jsonl(store: Store, principal: Principal, *, digest: str, size: int,
                    name: str, pin: str) -> dict[str, Any]:
    """Validate a stored JSONL upload (422 naming the bad line) and record it."""
    try:
        records = parse_jsonl(store.blobs.path(digest).read_bytes())
    except DatasetError as exc:
        store.drop_refused_upload(pin, digest)
        raise UnprocessableInput(f"dataset refused: {exc}", hint=exc.hint) from None
    except BaseException:
        store.drop_refused_upload(pin, digest)
        raise
    return _record_dataset(store, principal, pin=pin, digest=digest, size=size, name=name,
                           n=len(records), shape=[], has_labels=False, num_classes=None,
                           meta={"format": "jsonl", **summarize(records)})


def _dataset_format(row: dict[str, Any]) -> str:
    meta = loads(row["meta"]) if row.get("meta") else {}
    return str(meta.get("format", "npz")) if isinstance(meta, dict) else "npz"


def dataset_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "name": row["name"], "sha256": row["digest"], "size": row["size"],
        "n": row["n"], "shape": loads(row["shape"]), "has_labels": bool(row["has_labels"]),
        "num_classes": row["num_classes"], "format": _dataset_format(row),
        "created_at": row["created_at"],
    }


def dataset_input(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "sha256": row["digest"], "n": row["n"],
            "shape": loads(row["shape"]), "has_labels": bool(row["has_labels"]),
            "format": _dataset_format(row)}
