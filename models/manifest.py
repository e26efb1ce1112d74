"""Manifests of model files, shaped like the OpenSSF model-signing v1.0 in-toto statement.

``build_manifest`` hashes every file (sha256, streamed in 1 MiB chunks) and returns the
statement that ``crypto.dsse`` signs; ``verify_manifest`` recomputes it and names each
missing, extra or changed file::

    statement = build_manifest(Path("model_dir"), model_name="minilm")
    verify_manifest(Path("model_dir"), statement)      # raises ManifestError on mismatch

The subject digest is, as in model-signing, sha256 over the raw bytes of the resource
digests in resource order (resources sorted by their POSIX relative path).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from models.errors import ManifestError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
# model-signing names the one resource of a single-file model "." (its path relative to itself)
SINGLE_FILE_RESOURCE = "."
_CHUNK = 1 << 20


def hash_file(path: Path) -> str:
    """Return the sha256 hex digest of ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _model_files(root: Path) -> dict[str, Path]:
    root = Path(root)
    if root.is_symlink():
        raise ManifestError(f"{root} is a symlink; symlinks are not allowed in a model")
    if root.is_file():
        return {root.name: root}
    if not root.is_dir():
        raise ManifestError(f"model path {root} does not exist")
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise ManifestError(
                f"model contains a symlink {path.relative_to(root).as_posix()!r}; "
                "symlinks are not allowed (allow_symlinks is false)"
            )
        if path.is_file():
            files[path.relative_to(root).as_posix()] = path
        elif not path.is_dir():
            raise ManifestError(f"model contains a special file {path.name!r}")
    if not files:
        raise ManifestError(f"model folder {root} holds no files")
    return files


def _root_digest(resources: list[dict[str, str]]) -> str:
    digest = hashlib.sha256()
    for resource in resources:
        digest.update(bytes.fromhex(resource["digest"]))
    return digest.hexdigest()


def build_manifest(model_dir_or_file: Path, *, model_name: str) -> dict[str, Any]:
    """Return the in-toto statement (model-signing v1.0 predicate) over the model's files."""
    if not isinstance(model_name, str) or not model_name:
        raise ValueError("model_name must be a non-empty string")
    files = _model_files(Path(model_dir_or_file))
    resources = [
        {"name": name, "algorithm": "sha256", "digest": hash_file(path)}
        for name, path in sorted(files.items())
    ]
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": _root_digest(resources)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": [],
            },
            "resources": resources,
        },
    }


def _parse_statement(statement: Any) -> tuple[dict[str, str], list[str]]:
    if not isinstance(statement, dict):
        raise ManifestError("manifest must be a JSON object")
    if statement.get("_type") != STATEMENT_TYPE:
        raise ManifestError(f"manifest _type must be {STATEMENT_TYPE!r}")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise ManifestError(f"manifest predicateType must be {PREDICATE_TYPE!r}")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1 or not isinstance(subjects[0], dict):
        raise ManifestError("manifest must have exactly one subject")
    subject_digest = (subjects[0].get("digest") or {}).get("sha256")
    predicate = statement.get("predicate")
    if not isinstance(predicate, dict):
        raise ManifestError("manifest predicate must be an object")
    serialization = predicate.get("serialization")
    if not isinstance(serialization, dict) or serialization.get("method") != "files":
        raise ManifestError("manifest serialization method must be 'files'")
    if serialization.get("hash_type") != "sha256":
        raise ManifestError("manifest hash_type must be 'sha256'")
    ignore = serialization.get("ignore_paths", [])
    if not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore):
        raise ManifestError("manifest ignore_paths must be a list of strings")
    resources = predicate.get("resources")
    if not isinstance(resources, list):
        raise ManifestError("manifest resources must be a list")
    expected: dict[str, str] = {}
    for resource in resources:
        if (
            not isinstance(resource, dict)
            or not isinstance(resource.get("name"), str)
            or resource.get("algorithm") != "sha256"
            or not isinstance(resource.get("digest"), str)
            or len(resource["digest"]) != 64
        ):
            raise ManifestError(f"malformed manifest resource {resource!r}")
        try:
            bytes.fromhex(resource["digest"])
        except ValueError as exc:
            raise ManifestError(f"resource digest of {resource['name']!r} is not hex") from exc
        if resource["name"] in expected:
            raise ManifestError(f"resource {resource['name']!r} is listed twice")
        expected[resource["name"]] = resource["digest"].lower()
    if _root_digest(resources) != str(subject_digest).lower():
        raise ManifestError("manifest subject digest does not match its resources")
    return expected, ignore


def as_single_file_statement(statement: dict[str, Any]) -> dict[str, Any]:
    """The statement of a one-file model renamed as model-signing names it (resource ``.``),
    so that ``model_signing verify`` accepts it for the file under any name."""
    resources = statement["predicate"]["resources"]
    if len(resources) != 1:
        raise ManifestError("a single-file statement has exactly one resource")
    renamed = dict(resources[0], name=SINGLE_FILE_RESOURCE)
    return {**statement, "predicate": {**statement["predicate"], "resources": [renamed]}}


def _ignored(name: str, ignore: list[str]) -> bool:
    return any(name == p or name.startswith(p.rstrip("/") + "/") for p in ignore)


def verify_manifest(model_dir_or_file: Path, statement: dict[str, Any]) -> None:
    """Check the model's files against ``statement``; raise :class:`ManifestError` naming
    every missing, extra and changed file."""
    expected, ignore = _parse_statement(statement)
    files = {
        name: path
        for name, path in _model_files(Path(model_dir_or_file)).items()
        if not _ignored(name, ignore)
    }
    if Path(model_dir_or_file).is_file() and set(expected) == {SINGLE_FILE_RESOURCE}:
        # a model-signing signature of one file binds its bytes, not its name
        if hash_file(Path(model_dir_or_file)) != expected[SINGLE_FILE_RESOURCE]:
            raise ManifestError("model does not match its manifest: changed files "
                                f"[{Path(model_dir_or_file).name!r}]")
        return
    missing = sorted(set(expected) - set(files))
    extra = sorted(set(files) - set(expected))
    changed = sorted(
        name for name in set(expected) & set(files) if hash_file(files[name]) != expected[name]
    )
    if missing or extra or changed:
        parts = []
        if missing:
            parts.append(f"missing files {missing}")
        if extra:
            parts.append(f"extra files {extra}")
        if changed:
            parts.append(f"changed files {changed}")
        raise ManifestError("model does not match its manifest: " + "; ".join(parts))


__all__ = [
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "SINGLE_FILE_RESOURCE",
    "STATEMENT_TYPE",
    "as_single_file_statement",
    "build_manifest",
    "hash_file",
    "verify_manifest",
]
