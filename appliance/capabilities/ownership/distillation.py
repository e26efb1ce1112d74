"""Shadows distilled from a DOV4CL suspect, and keeping them per registered suspect.

A student is the appliance's conv_encoder trained to answer as the suspect does on views of
the shadow dataset (never on D_pub or D_pvt, so the audit stays exact). Distilling one costs
``distill_views`` suspect queries per image and about a minute of training; for a registered
suspect the students are kept in the appliance's cache (per tenant, keyed by the suspect's
weights digest and everything that decides the students) so a later audit of the same
suspect on the same shadow data takes them without querying or training again. A remote
suspect is distilled afresh every time: nothing pins the model behind an endpoint. Students
are not registered as models and are never served: they are copies of the suspect.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from appliance.audits.ownership.dov4cl import view_specs
from appliance.audits.suspects import CountedQuery
from appliance.errors import JobFailed
from models.augment import from_unit, to_unit
from models.vision import ENCODERS, Rescaled, build_model, distill_encoder, distillation_inputs, embed_fn

if TYPE_CHECKING:
    from appliance._internal.jobs.runner import JobContext
    from appliance.capabilities.catalog.schemas import ModelInput
    from appliance.capabilities.ownership.job import OwnershipParams, ShadowTraining

#: Where a DOV4CL job's progress bar stands once its distilled shadows are ready.
DISTILLED_SHARE = 0.85
#: Bumped when what a kept student is changes, so older ones are not taken for it.
STUDENT_CACHE_VERSION = 1
#: The appliance's cache folder for kept students (one folder per tenant below it).
STUDENT_CACHE = "dov4cl-students"


def student_key(tenant_id: str, suspect: ModelInput, data_sha256: str, value_range: tuple[float, float],
                spec: ShadowTraining, view: Any, flips: bool) -> str:
    """sha256 over the tenant, the suspect's weights and how they load, the shadow data and
    everything that decides the students but their count (each is kept under its own seed, so
    asking for two after one distils only the second)."""
    import torch

    recipe = {
        "v": STUDENT_CACHE_VERSION, "tenant": tenant_id,
        "suspect": {"blob": suspect.blob, "format": suspect.format, "architecture": suspect.architecture,
                    "config": suspect.config},
        "data": data_sha256, "value_range": [float(value_range[0]), float(value_range[1])],
        "family": "conv_encoder", "views": spec.distill_views, "epochs": spec.distill_epochs,
        "seed": spec.seed, "view": dataclasses.asdict(view), "flips": flips, "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _student(seed: int, shape: tuple[int, ...], width: int) -> Any:
    """A fresh conv_encoder student for images of ``shape`` (``[N, C, H, W]``), embedding ``width``."""
    return build_model(ENCODERS["conv_encoder"], seed=seed, in_channels=int(shape[1]), image_size=int(shape[2]),
                       embed_dim=int(width))


def _load_student(folder: Path, seed: int, shape: tuple[int, ...]) -> tuple[Any, dict[str, Any]] | bool:
    """A kept student and what was recorded when it was distilled; ``False`` where none is kept,
    ``True`` where one is there but cannot be read (both are distilled again)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta_path, weights_path = folder / f"student-{seed}.json", folder / f"student-{seed}.safetensors"
    if not (meta_path.is_file() and weights_path.is_file()):
        return any(folder.glob(f"student-{seed}.*"))
    try:
        meta = json.loads(meta_path.read_text())
        student = _student(seed, shape, int(meta["embed_dim"]))
        student.load_state_dict(load_file(str(weights_path)))
        float(meta["fit_centred_cosine"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError):
        return True
    return student.eval(), meta


def _keep_student(folder: Path, seed: int, student: Any, meta: dict[str, Any]) -> None:
    """Write a student's weights, then its record (a reader takes it only once both are there);
    each file lands whole (written aside, then renamed), so audits running at once see either
    nothing or a complete student, and identical students where two distilled the same."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    stamp = f".tmp{os.getpid()}-{time.monotonic_ns()}"
    weights = folder / f"student-{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(weights) + stamp)
    os.replace(str(weights) + stamp, weights)
    record = folder / f"student-{seed}.json"
    Path(str(record) + stamp).write_text(json.dumps(meta))
    os.replace(str(record) + stamp, record)


def distil_shadows(ctx: JobContext, spec: ShadowTraining, method: Any, params: OwnershipParams,
                   data: np.ndarray, data_sha256: str, value_range: tuple[float, float], suspect: Any,
                   invariance: tuple[dict[str, float], int] | None, *, registered: ModelInput | None,
                   budget: int | None, start: float) -> tuple[list[Any], dict[str, Any]]:
    """``spec.distilled`` students of the suspect (:func:`models.vision.distill_encoder`): the
    suspect is queried once on ``spec.distill_views`` views of each image of ``data`` (the
    shadow dataset, on its own scale; the first view is the image itself, the others the
    audit's global views, with flips where the audit flips: ``views.flip`` true, or "auto"
    and the measured profile flip-invariant), and each student, a conv_encoder of the
    suspect's embedding width with its own seed, learns those answers. For a ``registered``
    suspect with ``spec.keep_distilled``, students kept by an earlier audit are taken as they
    are (no queries) and the ones distilled here are kept. Progress moves from ``start`` to
    :data:`DISTILLED_SHARE`. Returns their embed functions and what the report records: the
    recipe, the queries spent here, each student's seed, fit and whether it was reused."""
    p = method.resolve_params(params.method_params)
    method.check_params(p)
    flip = p["views"].get("flip", "auto")
    flips = flip is True or (flip == "auto" and invariance is not None
                             and invariance[0].get("flip", 0.0) >= float(p["flip_threshold"]))
    view = view_specs(p["views"], flip=flips)[0]
    seeds = [spec.seed + 1000 + i for i in range(spec.distilled)]
    folder = None
    if registered is not None and spec.keep_distilled:
        key = student_key(ctx.tenant_id, registered, data_sha256, value_range, spec, view, flips)
        folder = ctx.cache_dir(f"{STUDENT_CACHE}/{ctx.tenant_id}") / key
    found: dict[int, tuple[Any, dict[str, Any]]] = {}
    for seed in seeds:
        loaded = _load_student(folder, seed, data.shape) if folder is not None else False
        if isinstance(loaded, tuple):
            found[seed] = loaded
        elif loaded:
            ctx.log(f"the kept student of seed {seed} cannot be read; distilling it again")
    missing = [seed for seed in seeds if seed not in found]
    queries, inputs, native, targets = 0, None, None, None
    if missing:
        inputs = distillation_inputs(to_unit(data, value_range), views=spec.distill_views, view=view,
                                     seed=spec.seed)
        native = from_unit(inputs, value_range)  # what the suspect is asked, on the data's own scale
        counted = CountedQuery(suspect, kind="embed", name="suspect", budget=budget,
                               max_batch=int(p["max_batch"]))
        t0 = time.perf_counter()
        targets = counted(native)
        queries = counted.queries
        ctx.log(f"distilling {len(missing)} shadow(s) from the suspect: {queries} queries "
                f"({spec.distill_views} views of {len(data)} images) in {time.perf_counter() - t0:.1f} s")
    students, entries = [], []
    for i, seed in enumerate(seeds):
        kept = found.get(seed)
        if kept is not None:
            student, meta = kept
            fit = float(meta["fit_centred_cosine"])
            embed = embed_fn(Rescaled(student, *value_range).eval())
            ctx.log(f"distilled shadow {i + 1}/{len(seeds)} (seed {seed}): kept from an earlier audit of this "
                    f"suspect (centred cosine to its answers {fit:.3f})")
            ctx.progress(start + (DISTILLED_SHARE - start) * (i + 1) / len(seeds))
        else:
            assert inputs is not None and native is not None and targets is not None

            def on_epoch(done: int, epochs: int, i: int = i) -> None:
                ctx.progress(start + (DISTILLED_SHARE - start) * (i + done / epochs) / len(seeds))

            student = _student(seed, data.shape, targets.shape[1])
            try:
                distill_encoder(student, inputs, targets, seed=seed,
                                epochs=spec.distill_epochs, on_epoch=on_epoch)
            except ValueError as exc:  # answers of the wrong shape, or not finite
                raise JobFailed(f"cannot distil a shadow from the suspect's answers: {exc}") from None
            embed = embed_fn(Rescaled(student, *value_range).eval())
            fit = centred_fit(embed(native), targets)
            ctx.log(f"distilled shadow {i + 1}/{len(seeds)} (seed {seed}): centred cosine to the "
                    f"suspect's answers {fit:.3f}")
            if folder is not None:
                try:
                    _keep_student(folder, seed, student, {"embed_dim": int(targets.shape[1]),
                                                           "fit_centred_cosine": round(fit, 6),
                                                           "queries": queries, "job_id": ctx.job_id})
                except OSError as exc:  # a full disk costs the next audit a distillation, not this one
                    ctx.log(f"could not keep distilled shadow {i + 1} for later audits ({exc.strerror})")
        students.append(embed)
        entries.append({"seed": seed, "fit_centred_cosine": round(fit, 6),
                        "status": "distilled" if kept is None else "reused"})
    return students, {"family": "conv_encoder", "views": spec.distill_views, "epochs": spec.distill_epochs,
                      "flips": flips, "queries": queries, "kept": folder is not None,
                      "distilled": len(missing), "reused": len(seeds) - len(missing), "students": entries}


def check_distillation_budget(params: OwnershipParams, images: int) -> None:
    """Fail before anything trains where a remote suspect's query budget cannot pay for the
    distilled shadows' queries (``distill_views`` per image of the shadow dataset)."""
    spec, endpoint = params.shadow_training, params.suspect_endpoint
    if spec is None or not spec.distilled or endpoint is None or endpoint.query_budget is None:
        return
    needed = spec.distill_views * images
    if needed >= endpoint.query_budget:
        raise JobFailed(f"distilling a shadow from the suspect takes {needed} queries ({spec.distill_views} "
                        f"views of {images} images) and the suspect's query budget is {endpoint.query_budget}, "
                        "with the audit's own queries still to come: raise query_budget, lower "
                        "shadow_training.distill_views, or set shadow_training.distilled to 0")


def centred_fit(answers: np.ndarray, targets: np.ndarray) -> float:
    """The median cosine between a student's and the suspect's embeddings, each centred on its
    mean (what the audit compares)."""
    a, b = answers - answers.mean(axis=0), targets - targets.mean(axis=0)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.median(np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)))
