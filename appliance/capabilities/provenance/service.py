"""The provenance audit without Flask: generators (registered ONNX or remote), the shadow
cache, and the TrainProVe run over one or several candidate generators.

Shadows and the samples they were trained on are cached per (generator digest, sampling and
training parameters, seed) under the appliance's cache folder, so a second audit against the
same generator queries only the suspect; the report says whether the shadow was trained or
reused.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.audits.egress import EgressGuard
from appliance.audits.errors import AuditInputError, RemoteEndpointError
from appliance.audits.provenance.trainprove import ProvenanceEvidence
from appliance.audits.suspects import check_status, post_with_retries
from appliance.capabilities.provenance.schemas import GeneratorEndpoint, ProvenanceParams
from models.architectures import create_architecture
from models.generators import check_labels, check_samples
from models.provenance import (
    PoolProgress,
    draw_probes,
    draw_sets,
    shadow_config,
    shadow_pool_specs,
    shadow_proba,
    split_real_data,
    train_shadow_pool,
    train_shadow_pool_on_data,
)

CACHE_VERSION = "2"
LogFn = Callable[[str], None]


#: The fixed sampling seed of a generator endpoint's fingerprint (:meth:`RemoteGenerator.fingerprint`).
FINGERPRINT_SEED = 20_241_204


class RemoteGenerator:
    """A generator behind an HTTP URL, with the remote suspects' timeouts, retries and budget.

    Each chunk of at most ``max_batch`` labels is one ``POST {"labels", "seed", "temperature"}``;
    the answer must be ``{"outputs": [...]}`` with one finite sample per label, all of one shape.
    """

    def __init__(self, spec: GeneratorEndpoint, *, backoff_s: float = 0.2, guard: EgressGuard | None = None) -> None:
        self.spec, self.backoff_s = spec, backoff_s
        self.num_classes = spec.num_classes
        self.z_dim = 0
        self.sample_shape: tuple[int, ...] = ()
        self.samples = 0
        # checked now (at run time, on every attempt of the job) and pinned: the connection goes
        # to the address that was checked, whatever the name resolves to later
        guard = guard or EgressGuard.from_environment()
        self._client = guard.client(guard.resolve(spec.url), timeout_s=spec.timeout_s)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def fingerprint(self) -> str:
        """sha256 of the endpoint's samples for one label per class at :data:`FINGERPRINT_SEED`,
        temperature 1 (``num_classes`` samples, counted in the budget): what the shadows' cache
        key pins for an endpoint, so a model changed behind the URL, or one that ignores the
        seed, gets shadows of its own instead of another model's."""
        x = self.sample(np.arange(self.num_classes), seed=FINGERPRINT_SEED, temperature=1.0)
        data = np.ascontiguousarray(x, dtype="<f4")
        return hashlib.sha256(json.dumps(list(data.shape)).encode() + data.tobytes()).hexdigest()

    def check_budget(self, needed: int, what: str) -> None:
        """Refuse, before anything is drawn, ``needed`` more samples that the sample budget cannot
        pay for (``what`` says where the number comes from)."""
        budget = self.spec.sample_budget
        if budget is not None and self.samples + needed > budget:
            spent = f" ({self.samples} spent)" if self.samples else ""
            raise AuditInputError(f"the audit draws {needed} samples from the generator endpoint ({what}) and "
                                  f"its sample_budget is {budget}{spent}: raise sample_budget, or lower shadows "
                                  "or n_shadow")

    def sample(self, labels: np.ndarray, *, seed: int, temperature: float) -> np.ndarray:
        """Samples for ``labels``; chunk ``i`` is asked with seed ``(seed * 7919 + i) mod 2^31``."""
        lab = check_labels(labels, self.num_classes)
        budget = self.spec.sample_budget
        if budget is not None and self.samples + len(lab) > budget:
            raise AuditInputError(f"generator endpoint: {self.samples} samples drawn, {len(lab)} more would "
                                  f"exceed the sample budget of {budget}")
        parts = []
        for i, start in enumerate(range(0, len(lab), self.spec.max_batch)):
            chunk = lab[start : start + self.spec.max_batch]
            body = {"labels": chunk.tolist(), "seed": (seed * 7919 + i) % 2**31, "temperature": temperature}
            out = self._post(body)
            try:
                arr = np.asarray(out, dtype=np.float32)
            except (ValueError, TypeError) as exc:
                raise RemoteEndpointError(f"generator endpoint answered outputs that are not a numeric array: "
                                          f"{exc}") from None
            shape = self.sample_shape or None
            try:
                arr = check_samples(arr, len(chunk), shape, f"generator endpoint {self.spec.url}")
            except Exception as exc:
                raise RemoteEndpointError(str(exc)) from None
            self.sample_shape = tuple(arr.shape[1:])
            self.samples += len(chunk)
            parts.append(arr)
        return np.concatenate(parts)

    def _post(self, body: dict[str, Any]) -> Any:
        who = f"generator endpoint {self.spec.url}"
        response = post_with_retries(self._client, self.spec.url, body, retries=self.spec.retries,
                                     backoff_s=self.backoff_s, timeout_s=self.spec.timeout_s,
                                     what="generator endpoint")
        check_status(response, who, "the request")
        try:
            answer = response.json()
        except ValueError:
            raise RemoteEndpointError(f"{who} answered with invalid JSON") from None
        outputs = answer.get("outputs") if isinstance(answer, dict) else None
        if not isinstance(outputs, list):
            raise RemoteEndpointError(f"{who} answered without an 'outputs' list")
        return outputs


def shadow_specs(params: ProvenanceParams, num_classes: int) -> list[Any]:
    """The shadows the audit trains: the paper's MLP on the shadow set, then varied recipes
    (small CNN / MLP, width, learning rate, weight decay, epochs), each on its own draw from the
    generator (:func:`models.provenance.shadow_pool_specs`), all from the audit seed."""
    return shadow_pool_specs(params.shadows, seed=params.seed, epochs=params.shadow_epochs,
                             train_size=params.n_shadow * num_classes)


def cache_key(generator_digest: str, params: ProvenanceParams, num_classes: int) -> str:
    """sha256 over the generator's digest and everything that decides the samples and shadows."""
    recipe = {
        "v": CACHE_VERSION, "generator": generator_digest, "seed": params.seed,
        "n_shadow": params.n_shadow, "n_val": params.n_val, "batches": params.batches,
        "t_shadow": params.t_shadow, "t_val": params.t_val,
        "num_classes": num_classes, "shadows": [s.to_dict() for s in shadow_specs(params, num_classes)],
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


@dataclass
class BuiltEvidence:
    """A source's evidence with what the report records about it."""

    evidence: ProvenanceEvidence
    provenance: dict[str, Any]
    timings: dict[str, float]


def _load_cached(folder: Path, specs: list[Any], num_classes: int) -> tuple[Any, list[Any]] | None:
    import torch
    from safetensors.torch import load_file

    data_path = folder / "sets.npz"
    if not data_path.is_file() or not all((folder / f"shadow-{i}.safetensors").is_file() for i in range(len(specs))):
        return None
    with np.load(data_path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    batches = [arrays[f"batch_{i}"] for i in range(int(arrays["n_batches"]))]
    models = []
    for i, spec in enumerate(specs):
        config = shadow_config(spec.architecture, tuple(arrays["val_x"].shape[1:]), num_classes, spec.config)
        with torch.device("cpu"):
            module = create_architecture(spec.architecture, config)
        module.load_state_dict(load_file(str(folder / f"shadow-{i}.safetensors")))
        models.append(module.eval())
    return (arrays["val_x"], arrays["val_y"], batches), models


def _store_cached(folder: Path, val_x: np.ndarray, val_y: np.ndarray, batches: list[np.ndarray],
                  models: list[Any], meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + f".tmp{time.monotonic_ns()}")
    tmp.mkdir(parents=True)
    arrays: dict[str, Any] = {"val_x": val_x, "val_y": val_y, "n_batches": np.int64(len(batches)),
                              **{f"batch_{i}": b for i, b in enumerate(batches)}}
    np.savez(tmp / "sets.npz", **arrays)
    for i, module in enumerate(models):
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp / f"shadow-{i}.safetensors"))
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        tmp.rename(folder)
    except OSError:  # another audit cached the same shadows first: theirs are identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def needs_probes(params: ProvenanceParams) -> bool:
    """Whether the audit's decision may use the hot probes (then they are drawn and queried)."""
    return params.decision == "error_location_hot"


def _probes(generator: Any, folder: Path | None, params: ProvenanceParams, num_classes: int,
            sample_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, str]:
    """The hot probes, cached beside the shadows (one file per probe count and temperature; the
    shadows' key already fixes the generator, the seed and the class count)."""
    path = folder / f"probes-{params.n_probe}-{params.t_probe!r}.npz" if folder is not None else None
    if path is not None and params.use_cache and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            return data["x"], data["y"], "reused"
    x, y = draw_probes(generator, num_classes=num_classes, n_probe=params.n_probe, seed=params.seed,
                       temperature=params.t_probe, sample_shape=sample_shape)
    if path is not None and params.use_cache and folder is not None and folder.is_dir():
        tmp = path.with_name(path.name + f".tmp{time.monotonic_ns()}.npz")
        np.savez(tmp, x=x, y=y)
        tmp.replace(path)
    return x, y, "drawn"


def build_evidence(name: str, generator: Any, digest: str, *, num_classes: int, params: ProvenanceParams,
                   cache_root: Path | None, log: LogFn, progress: PoolProgress | None = None) -> BuiltEvidence:
    """Sample, train (or reuse) the shadows for one generator and wrap them as evidence;
    ``progress(done, total)`` after each shadow trained."""
    specs = shadow_specs(params, num_classes)
    key = cache_key(digest, params, num_classes)
    folder = cache_root / key if cache_root is not None else None
    timings = {"sampling_seconds": 0.0, "shadow_training_seconds": 0.0}
    cached = _load_cached(folder, specs, num_classes) if folder is not None and params.use_cache else None
    if cached is not None:
        (val_x, val_y, batches), models = cached
        status = "reused"
        log(f"{name}: reusing {len(models)} cached shadow(s) {key[:12]}")
    else:
        if isinstance(generator, RemoteGenerator):  # fail before the first shadow trains, not at the 13th
            generator.check_budget(num_classes * (params.n_shadow * len(specs) + params.n_val),
                                   f"{len(specs)} shadows x {params.n_shadow} + {params.n_val} validation samples "
                                   f"per class, {num_classes} classes")
        t0 = time.perf_counter()
        sets = draw_sets(generator, num_classes=num_classes, n_shadow=params.n_shadow, n_val=params.n_val,
                         batches=params.batches, seed=params.seed, t_shadow=params.t_shadow, t_val=params.t_val)
        timings["sampling_seconds"] = time.perf_counter() - t0
        log(f"{name}: sampled {len(sets.shadow_y)} shadow and {len(sets.val_y)} validation samples "
            f"of shape {tuple(sets.val_x.shape[1:])}; training {len(specs)} shadow(s)")
        t0 = time.perf_counter()
        models = train_shadow_pool(generator, sets, specs, num_classes=num_classes, seed=params.seed,
                                   t_shadow=params.t_shadow, progress=progress)
        timings["shadow_training_seconds"] = time.perf_counter() - t0
        val_x, val_y, batches = sets.val_x, sets.val_y, sets.batches
        status = "trained"
        if folder is not None and params.use_cache:
            _store_cached(folder, val_x, val_y, batches, models, {"generator": digest, "name": name})
    provenance = {"status": status, "cache_key": key, "generator_digest": digest,
                  "shadows": [s.to_dict() for s in specs], "n_shadow_per_class": params.n_shadow,
                  "n_val_per_class": params.n_val, "batches": params.batches,
                  "t_shadow": params.t_shadow, "t_val": params.t_val,
                  "sample_shape": list(val_x.shape[1:])}
    probe_x = probe_y = None
    if needs_probes(params):
        t0 = time.perf_counter()
        probe_x, probe_y, probe_status = _probes(generator, folder, params, num_classes, tuple(val_x.shape[1:]))
        timings["sampling_seconds"] += time.perf_counter() - t0
        provenance["hot_probes"] = {"status": probe_status, "n_probe_per_class": params.n_probe,
                                    "t_probe": params.t_probe}
    evidence = ProvenanceEvidence(name, val_x, val_y, list(batches), [shadow_proba(m) for m in models],
                                  [s.to_dict() for s in specs], probe_x=probe_x, probe_y=probe_y)
    return BuiltEvidence(evidence, provenance, timings)


def build_dataset_evidence(name: str, x: np.ndarray, y: np.ndarray, digest: str, *, num_classes: int,
                           params: ProvenanceParams, cache_root: Path | None, log: LogFn,
                           progress: PoolProgress | None = None) -> BuiltEvidence:
    """Real labelled data as a candidate source: half of each class is the validation set, the
    other half trains the shadow pool (pool shadows on bootstrap resamples of it); cached like a
    generator's shadows, keyed by the dataset's digest."""
    t0 = time.perf_counter()
    try:
        sets = split_real_data(x, y, batches=params.batches, seed=params.seed)
    except ValueError as exc:
        raise AuditInputError(f"candidate dataset {name}: {exc}") from None
    specs = shadow_pool_specs(params.shadows, seed=params.seed, epochs=params.shadow_epochs,
                              train_size=len(sets.shadow_y))
    recipe = {"v": CACHE_VERSION, "dataset": digest, "seed": params.seed, "batches": params.batches,
              "num_classes": num_classes, "shadows": [s.to_dict() for s in specs]}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    folder = cache_root / key if cache_root is not None else None
    timings = {"sampling_seconds": time.perf_counter() - t0, "shadow_training_seconds": 0.0}
    cached = _load_cached(folder, specs, num_classes) if folder is not None and params.use_cache else None
    if cached is not None:
        (val_x, val_y, batches), models = cached
        status = "reused"
    else:
        log(f"{name}: {len(sets.shadow_y)} real shadow and {len(sets.val_y)} validation samples; "
            f"training {len(specs)} shadow(s)")
        t0 = time.perf_counter()
        models = train_shadow_pool_on_data(sets, specs, num_classes=num_classes, seed=params.seed,
                                           progress=progress)
        timings["shadow_training_seconds"] = time.perf_counter() - t0
        val_x, val_y, batches = sets.val_x, sets.val_y, sets.batches
        status = "trained"
        if folder is not None and params.use_cache:
            _store_cached(folder, val_x, val_y, batches, models, {"dataset": digest, "name": name})
    provenance = {"status": status, "cache_key": key, "dataset_digest": digest,
                  "shadows": [s.to_dict() for s in specs], "n_shadow": int(len(sets.shadow_y)),
                  "n_val": int(len(val_y)), "batches": params.batches, "sample_shape": list(val_x.shape[1:])}
    evidence = ProvenanceEvidence(name, val_x, val_y, list(batches), [shadow_proba(m) for m in models],
                                  [s.to_dict() for s in specs])
    return BuiltEvidence(evidence, provenance, timings)


__all__ = ["BuiltEvidence", "build_dataset_evidence", "RemoteGenerator", "build_evidence", "cache_key", "needs_probes",
           "shadow_specs"]
