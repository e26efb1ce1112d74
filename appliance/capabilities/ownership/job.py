"""The ``ownership`` job: "was this suspect model trained on my dataset?"

Two methods from ``appliance.audits``: DOV4CL for self-supervised encoders (black-box
``embed``) and the keyed backdoor watermark for classifiers (``predict`` or labels only).
The suspect is a registered model or a remote HTTP endpoint with timeouts, retries and a
query budget; the report records the queries spent.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from appliance._internal.auth import Principal
from appliance._internal.jobs.kinds import JobKind, JobOutcome, register_job_kind
from appliance._internal.jobs.runner import JobContext
from appliance._internal.secrets import unseal_secret
from appliance._internal.store import Store, loads
from appliance.audits.egress import EgressGuard, check_endpoint_url
from appliance.audits.errors import AuditError
from appliance.audits.ownership.dov4cl import (
    PROFILE_TRANSFORMS,
    DOV4CLInputs,
    data_range,
    suspect_profile,
)
from appliance.audits.ownership.watermark import WatermarkInputs
from appliance.audits.registry import create_method
from appliance.audits.suspects import CountedQuery, RemoteEndpoint
from appliance.capabilities.catalog.jobs import load_job_model, model_digests
from appliance.capabilities.catalog.schemas import DatasetInput, ModelInput
from appliance.capabilities.catalog.service import dataset_input, model_input, read_dataset, record_trained_model
from appliance.capabilities.ownership.distillation import DISTILLED_SHARE, check_distillation_budget, distil_shadows
from appliance.errors import JobFailed, UnprocessableInput
from appliance.schemas import SuspectEndpoint
from models.augment import ViewSpec, to_unit
from models.errors import ModelFormatError
from models.onnx_train import check_graph, graph_summary, train_graph_encoder
from models.vision import (
    ENCODERS,
    MOMENTUM_OBJECTIVES,
    Rescaled,
    Resized,
    build_model,
    embed_fn,
    train_contrastive,
)

VERSION = "1.0.0"


class ShadowViews(BaseModel):
    """The views a shadow trains on (pairs of augmentations of one image). The defaults are the
    appliance's recipe; match the suspect's where it is known (a suspect trained without flips,
    with rotations or noise)."""

    model_config = ConfigDict(extra="forbid")

    scale: tuple[float, float] = Field(default=(0.2, 1.0), description="random-resized crop area, "
                                       "as a share of the image, [lo, hi]")
    flip: bool = Field(default=True, description="horizontal flips, half of the views")
    rotation: float = Field(default=0.0, ge=0.0, le=180.0, description="largest rotation, degrees either way")
    brightness: float = Field(default=0.4, ge=0.0, le=1.0, description="multiplicative jitter amplitude")
    contrast: float = Field(default=0.4, ge=0.0, le=1.0, description="contrast jitter amplitude")
    noise: float = Field(default=0.0, ge=0.0, le=1.0, description="standard deviation of Gaussian "
                         "noise, as a share of the data's value range")

    @model_validator(mode="after")
    def _scale_is_a_range(self) -> ShadowViews:
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got [{lo}, {hi}]")
        return self

    def departures(self) -> dict[str, Any]:
        """The fields (as JSON) where these views differ from the appliance's recipe."""
        mine, recipe = self.model_dump(mode="json"), ShadowViews().model_dump(mode="json")
        return {k: v for k, v in mine.items() if v != recipe[k]}

    def spec(self) -> ViewSpec:
        return ViewSpec(scale=self.scale, flip_p=0.5 if self.flip else 0.0, rotation=self.rotation,
                        brightness=self.brightness, contrast=self.contrast, noise=self.noise)


#: ``views: "auto"`` adapts the shadows' training views to the suspect's invariance profile
#: (1: as invariant to a transform as to a crop of half the image or more; 0: no more than to
#: another image). Measured on digits: encoders trained with rotations of 20 degrees score
#: 1.04-1.15 on rotations, without ~0.87; encoders trained with crops down to 20% of the area
#: ~0.65 on crops of 20-30%, with crops of 50-100% ~0.41, of 56-100% 0.33-0.43. Training with
#: noise of 4-5% of the range did not move the noise score (1.08 either way), so noise is not
#: chosen automatically. Flips follow the audit's own ``flip_threshold``.
AUTO_VIEW_THRESHOLDS = {"rotation": 1.0, "crop": 0.5}
#: The crop scales the shadows train with where the suspect is not invariant to small crops
#: (the audit's own global views).
AUTO_MODERATE_CROPS = (0.5, 1.0)


def matched_views(profile: dict[str, float], flip_threshold: float) -> ShadowViews:
    """The appliance's recipe adapted to a suspect's invariance ``profile``
    (:func:`~appliance.audits.ownership.dov4cl.invariance_profile`): flips where the audit's
    views flip, rotations of the probe's own size where the suspect is as invariant to them as
    encoders trained with them are, and crops of at least half the image where it is not
    invariant to small crops."""
    recipe = ShadowViews()
    return ShadowViews(
        flip=profile["flip"] >= flip_threshold,
        rotation=PROFILE_TRANSFORMS["rotation"].rotation
        if profile["rotation"] >= AUTO_VIEW_THRESHOLDS["rotation"] else 0.0,
        scale=recipe.scale if profile["crop"] >= AUTO_VIEW_THRESHOLDS["crop"] else AUTO_MODERATE_CROPS,
    )


class ShadowTraining(BaseModel):
    """Train the shadow encoder here, with the suspect's recipe family, on data without D_pub."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, max_length=64)
    architecture: Literal["conv_encoder", "pool_encoder", "suspect", "auto"] = Field(
        default="conv_encoder", description="the shadow's layers. conv_encoder (default) or pool_encoder: "
        "the appliance's encoders. 'suspect': the suspect's own ONNX graph with every weight redrawn before "
        "training (the suspect must be registered as ONNX; config and input_size do not apply, the graph "
        "fixes both). 'auto': 'suspect' where the suspect is a registered ONNX graph of at most 2M weights "
        "the appliance can train and config and input_size are unset, else conv_encoder with a caution")
    config: dict[str, int] = Field(default_factory=dict)
    objective: Literal["simclr", "simsiam", "byol", "mocov3", "dino"] = Field(
        default="simclr", description="the suspect's recipe family: SimCLR, SimSiam, BYOL, MoCo v3 or DINO")
    input_size: int | None = Field(default=None, ge=4, le=512, description="resize inputs to this "
                                   "side inside the shadow (for suspects trained at another resolution)")
    epochs: int = Field(default=400, ge=1, le=5000, description="match the suspect's recipe; 400 suits "
                        "SimCLR on digits-sized data, SimSiam learns slower (the digits benchmark uses "
                        "1000)")
    batch_size: int = Field(default=128, ge=8, le=4096)
    views: ShadowViews | Literal["auto"] = Field(
        default="auto", description="the training views' augmentations. 'auto' (default): the appliance's "
        "recipe with flips only where the suspect is flip-invariant, rotations where it is invariant to them "
        "and crops of at least half the image where it is not invariant to small crops, as measured "
        "label-blind on D_pub and D_pvt pooled (the DOV4CL audit's own "
        "invariance probe: no further queries where the audit's views.flip is 'auto', its default); {} for "
        "the appliance's recipe as it is")
    projection_head: bool = Field(default=True, description="train through a discarded MLP projector, as "
                                  "SimCLR, MoCo and SimSiam recipes do and release the encoder below it "
                                  "(default); false trains on the released embedding itself (the recipe "
                                  "before this default, and the appliance's own suspects' in its tests)")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    count: int = Field(default=3, ge=1, le=8, description="shadows trained with seeds seed, "
                       "seed+1, ...; their relations are averaged (one unlucky shadow shifts "
                       "every audit that uses it)")
    distilled: int = Field(default=1, ge=0, le=4, description="shadows distilled from the suspect "
                           "itself, besides the recipe's (default 1; 0: none): the appliance's conv_encoder "
                           "trained to reproduce "
                           "the suspect's embeddings of distill_views global views of every image of this "
                           "dataset (distill_views x its size more suspect queries, counted in the report). "
                           "A student never sees D_pub or D_pvt, so the test stays exact; it copies what "
                           "the suspect does on images it did not train on, whatever its recipe. Students "
                           "are not registered as models (they copy the suspect); see keep_distilled")
    distill_views: int = Field(default=32, ge=2, le=128, description="views per image the suspect "
                               "is queried on to distil it (the first is the image itself)")
    distill_epochs: int = Field(default=40, ge=1, le=1000)
    keep_distilled: bool = Field(default=True, description="keep the students of a registered suspect "
                                 "(in the appliance's cache, per tenant, keyed by the suspect's weights digest, "
                                 "the shadow data and the distillation recipe) and take them in later audits of "
                                 "the same suspect: no further distillation queries or training. A remote "
                                 "suspect is distilled afresh every time")

    @model_validator(mode="after")
    def _graph_fixes_layers(self) -> ShadowTraining:
        if self.architecture == "suspect" and (self.config or self.input_size is not None):
            raise ValueError("architecture 'suspect' takes the suspect's graph as it is: leave config and "
                             "input_size unset")
        return self


class OwnershipParams(BaseModel):
    """Parameters of an ownership audit; see ``GET /v1/job-kinds`` for the schema."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["dov4cl", "watermark_dvbw"]
    suspect_model_id: str | None = Field(default=None, max_length=64)
    suspect_endpoint: SuspectEndpoint | None = None
    public_dataset_id: str | None = Field(default=None, max_length=64)
    private_dataset_id: str | None = Field(default=None, max_length=64)
    shadow_model_ids: list[str] | None = Field(default=None, min_length=1, max_length=8)
    shadow_training: ShadowTraining | None = None
    watermark_id: str | None = Field(default=None, max_length=64)
    benign_dataset_id: str | None = Field(default=None, max_length=64)
    method_params: dict[str, Any] = Field(default_factory=dict)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> OwnershipParams:
        if (self.suspect_model_id is None) == (self.suspect_endpoint is None):
            raise ValueError("give exactly one of suspect_model_id and suspect_endpoint")
        if self.method == "dov4cl":
            if not self.public_dataset_id or not self.private_dataset_id:
                raise ValueError("dov4cl needs public_dataset_id and private_dataset_id")
            if (self.shadow_model_ids is None) == (self.shadow_training is None):
                raise ValueError("dov4cl needs exactly one of shadow_model_ids and shadow_training")
        else:
            if not self.watermark_id or not self.benign_dataset_id:
                raise ValueError("watermark_dvbw needs watermark_id and benign_dataset_id")
        return self


class WatermarkInput(BaseModel):
    """A tenant's watermark as a job carries it: the key stays sealed until the worker runs."""

    id: str
    sealed_key: str
    params: dict[str, Any]
    marked_dataset_id: str | None = None


class OwnershipInputs(BaseModel):
    """What an ownership job runs on: the registered suspect (absent for a remote one), and
    D_pub, D_pvt and the shadows (DOV4CL) or the watermark and benign data (watermark)."""

    suspect: ModelInput | None = None
    public_dataset: DatasetInput | None = None
    private_dataset: DatasetInput | None = None
    shadows: list[ModelInput] | None = None
    shadow_data: DatasetInput | None = None
    kept_shadows: list[ModelInput] = Field(default_factory=list)
    #: the shadows' architecture once ``auto`` is settled at submission, and why, if not the suspect's
    shadow_architecture: str | None = None
    shadow_caution: str | None = None
    watermark: WatermarkInput | None = None
    benign: DatasetInput | None = None


def _model(store: Store, tenant: str, model_id: str) -> ModelInput:
    return ModelInput.model_validate(model_input(store.get_owned("models", tenant, model_id, "model")))


def _dataset(store: Store, tenant: str, dataset_id: str) -> DatasetInput:
    return DatasetInput.model_validate(
        dataset_input(store.get_owned("datasets", tenant, dataset_id, "dataset")))


def _resolve(store: Store, principal: Principal, params: OwnershipParams) -> OwnershipInputs:
    tenant = principal.tenant_id
    inputs = OwnershipInputs()
    if params.suspect_model_id:
        inputs.suspect = _model(store, tenant, params.suspect_model_id)
    else:
        assert params.suspect_endpoint is not None
        check_endpoint_url(params.suspect_endpoint.url)
    if params.method == "dov4cl":
        inputs.public_dataset = _dataset(store, tenant, params.public_dataset_id or "")
        inputs.private_dataset = _dataset(store, tenant, params.private_dataset_id or "")
        if params.shadow_model_ids:
            inputs.shadows = [_model(store, tenant, shadow_id) for shadow_id in params.shadow_model_ids]
            _check_shadows(inputs.shadows, inputs.public_dataset)
        else:
            assert params.shadow_training is not None
            inputs.shadow_architecture, inputs.shadow_caution = _shadow_architecture(
                store, params.shadow_training, inputs.suspect)
            inputs.shadow_data = _dataset(store, tenant, params.shadow_training.dataset_id)
            inputs.kept_shadows = _kept_shadows(store, tenant, inputs.shadow_data.sha256)
    else:
        mark = store.get_owned("watermarks", tenant, params.watermark_id or "", "watermark")
        inputs.watermark = WatermarkInput(id=mark["id"], sealed_key=bytes(mark["sealed_key"]).hex(),
                                          params=loads(mark["params"]),
                                          marked_dataset_id=mark["marked_dataset_id"])
        inputs.benign = _dataset(store, tenant, params.benign_dataset_id or "")
    return inputs


SHADOW_TAG = "dov4cl_shadow"
#: ``auto`` trains shadows of the suspect's graph up to this many weights (a bigger graph takes
#: hours per shadow on a CPU worker: asked for explicitly, not by default).
AUTO_GRAPH_MAX_VALUES = 2_000_000


def _shadow_architecture(store: Store, spec: ShadowTraining,
                         suspect: ModelInput | None) -> tuple[str, str | None]:
    """The shadows' architecture, and a caution where it is not the suspect's. Shadows of the
    suspect's architecture need its graph: a registered ONNX suspect whose operators the
    trainable interpreter runs (``suspect`` refuses anything else with a 422, ``auto`` falls
    back to conv_encoder)."""
    if spec.architecture in ("conv_encoder", "pool_encoder"):
        return spec.architecture, None
    problem = None
    if suspect is None or suspect.format != "onnx":
        what = "a remote endpoint" if suspect is None else f"a {suspect.format} model"
        problem = f"the suspect is {what}, not a registered ONNX graph"
    elif spec.config or spec.input_size is not None:
        problem = "shadow_training sets config or input_size, which apply to the appliance's encoders"
    else:
        try:
            values = check_graph(store.blobs.path(suspect.blob).read_bytes())
        except ModelFormatError as exc:
            problem = f"the appliance cannot train the suspect's graph ({exc})"
        else:
            if spec.architecture == "auto" and values > AUTO_GRAPH_MAX_VALUES:
                problem = (f"the suspect's graph holds {values} weights (auto trains graphs of at most "
                           f"{AUTO_GRAPH_MAX_VALUES} here; ask for architecture 'suspect' to train it anyway)")
    if problem is None:
        return "suspect", None
    if spec.architecture == "suspect":
        raise UnprocessableInput(f"shadow_training.architecture 'suspect' trains shadows of the suspect's own "
                                 f"ONNX graph, and {problem}; register the suspect as ONNX, or use "
                                 "conv_encoder or pool_encoder")
    return "conv_encoder", (f"architecture auto: the shadows are the appliance's conv_encoder, not the "
                            f"suspect's architecture: {problem}")


def _kept_shadows(store: Store, tenant: str, data_digest: str) -> list[ModelInput]:
    """The tenant's registered DOV4CL shadows trained on this data (the worker takes the ones
    whose recipe and seed match, by model id, and trains the others)."""
    rows = store.conn.execute(
        "SELECT * FROM models WHERE tenant_id = ? AND json_extract(origin, '$.tag') = ? "
        "AND json_extract(origin, '$.recipe.data.sha256') = ? ORDER BY created_at DESC LIMIT 256",
        (tenant, SHADOW_TAG, data_digest)).fetchall()
    return [ModelInput.model_validate(model_input(dict(row))) for row in rows]


def _is_encoder(model: ModelInput) -> bool:
    """Registered as an encoder, or safetensors of an encoder architecture (uploads without a
    kind are recorded as classifiers)."""
    if model.kind == "encoder":
        return True
    if model.format != "safetensors" or not model.architecture:
        return False
    from models.architectures import architecture_task

    try:
        return architecture_task(model.architecture) == "encoder"
    except ValueError:
        return False


def _check_shadows(shadows: list[ModelInput], public: DatasetInput | None) -> None:
    """Shadows given by id must be encoders; a shadow the appliance trained must take the
    audited images' shape. Shadows (and the suspect) may embed in different dimensions: the
    audit compares relations between views (cosines), never embeddings, and regresses the
    suspect's per-image scores on each shadow's separately, so the appliance's shadows and
    encoders of the suspect's own family (uploaded, e.g. as ONNX) can serve together."""
    for shadow in shadows:
        if not _is_encoder(shadow):
            raise UnprocessableInput(f"shadow model {shadow.id} is a {shadow.kind}, not an encoder")
        trained_on = ((shadow.origin or {}).get("recipe") or {}).get("data", {}).get("shape")
        # a dataset's shape is its items' ([C, H, W]); the recipe records the array's ([n, C, H, W])
        if public is not None and public.shape and trained_on and list(trained_on[1:]) != list(public.shape):
            raise UnprocessableInput(
                f"shadow model {shadow.id} was trained on images of shape {list(trained_on[1:])}; the "
                f"public dataset holds images of shape {list(public.shape)}")


def _images(ctx: JobContext, dataset: DatasetInput | None, what: str, *,
            labels: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    assert dataset is not None  # resolved for this method at submission
    data = read_dataset(ctx.settings, ctx.blob_path(dataset.sha256), require_labels=labels)
    if data.x.ndim != 4 or data.x.dtype.kind != "f":
        raise JobFailed(f"{what} dataset must hold float images x of shape [n, C, H, W], got "
                        f"{data.x.dtype} {tuple(data.x.shape)}")
    return data.x.astype(np.float32, copy=False), data.y


def _suspect_fn(ctx: JobContext, params: OwnershipParams, inputs: OwnershipInputs,
                kind: str) -> tuple[Any, str, Any]:
    """A query function for the suspect, the device it runs on, and a closer."""
    if params.suspect_endpoint is not None:
        ep = params.suspect_endpoint
        # resolved and checked again now, on every run (a re-queue, a retry): the address
        # may have changed since submission; the endpoint then connects only to what passed
        endpoint = RemoteEndpoint(ep.url, kind=kind,  # type: ignore[arg-type]
                                  timeout_s=ep.timeout_s, retries=ep.retries,
                                  query_budget=ep.query_budget, max_batch=ep.max_batch,
                                  guard=EgressGuard.from_environment())
        return endpoint, "remote", endpoint.close
    assert inputs.suspect is not None
    model = load_job_model(ctx, inputs.suspect, params.device)
    if kind == "embed":
        return (lambda x: model.embed(x)), model.device, None
    if kind == "proba":
        return (lambda x: model.predict(x)), model.device, None
    return (lambda x: np.argmax(model.predict(x), axis=1)), model.device, None


def shadow_recipe(spec: ShadowTraining, data: DatasetInput, shape: tuple[int, ...], seed: int,
                  config: dict[str, Any], value_range: tuple[float, float]) -> dict[str, Any]:
    """What makes one trained shadow: recorded on its model and in the report. For shadows of
    the suspect's graph, ``config`` is the graph's structure digest and how many of its
    tensors are redrawn weights and kept constants (not which suspect's weights it carried:
    suspects of one architecture share their shadows)."""
    import torch

    recipe = {"family": spec.architecture, "objective": spec.objective, "epochs": spec.epochs,
              "batch_size": spec.batch_size, "seed": seed, "input_size": spec.input_size,
              "config": config, "value_range": [float(value_range[0]), float(value_range[1])],
              "data": {"dataset_id": data.id, "sha256": data.sha256, "n": int(shape[0]),
                       "shape": [int(v) for v in shape]},
              "torch": torch.__version__, "version": VERSION}
    # recorded only where they differ from the appliance's recipe, so the shadows trained before
    # these options existed keep their ids (and are reused)
    assert isinstance(spec.views, ShadowViews), "views 'auto' is settled before the shadows train"
    if spec.views != ShadowViews():
        recipe["views"] = spec.views.model_dump(mode="json")
    # the default since shadows without it were registered (they keep their ids); the momentum
    # objectives train through their own heads either way
    if spec.projection_head and spec.objective not in MOMENTUM_OBJECTIVES:
        recipe["projection_head"] = True
    return recipe


def shadow_model_id(tenant_id: str, recipe: dict[str, Any]) -> str:
    """The model id of a shadow: a digest of the tenant and the recipe (the data by its content,
    not by which upload of it was named), so the same recipe and seed name one model (two jobs
    at once register it once) and another tenant's never match."""
    keyed = {**recipe, "data": {k: v for k, v in recipe["data"].items() if k != "dataset_id"}}
    named = json.dumps({"tenant": tenant_id, "recipe": keyed}, sort_keys=True).encode()
    return f"mdl_{hashlib.sha256(named).hexdigest()[:20]}"


def _shadow_model_config(recipe: dict[str, Any]) -> dict[str, Any]:
    """The ``scaled_encoder`` config a registered shadow loads with."""
    return {"family": recipe["family"], "family_config": recipe["config"],
            "input_size": recipe["input_size"], "value_range": recipe["value_range"]}


def _shadow_share(*, trained: bool) -> float:
    """The share of a DOV4CL job's progress bar its shadows take: 0.8 where any is trained
    (most of such a job's time: 77 of 88 s with three default shadows), else 0.1."""
    return 0.8 if trained else 0.1


def _train_shadows(ctx: JobContext, spec: ShadowTraining, data: np.ndarray, dataset: DatasetInput,
                   kept: list[ModelInput], value_range: tuple[float, float], device: str,
                   graph: bytes | None = None) -> tuple[list[Any], list[dict[str, Any]]]:
    """Train ``spec.count`` shadow encoders, or reuse the tenant's registered shadows of the
    same recipe and seed; returns their embed functions and, per shadow, its model id, seed,
    weights digest and whether it was trained or reused. A trained shadow's weights are saved
    as a blob; the API node registers it as the tenant's model once the job's report is
    signed, before the job shows as succeeded (:func:`_register_shadows`). Shadows train on
    the data mapped from ``value_range`` to [0, 1] (where the augmentations work) and answer
    on the data's own scale. With ``architecture: "suspect"``, ``graph`` is the suspect's ONNX
    graph: each shadow is that graph with every weight redrawn from its seed, trained the
    same way, and saved as ONNX. Progress moves from 0 to :func:`_shadow_share` as epochs pass."""
    from safetensors.torch import save

    unit = to_unit(data, value_range)
    assert isinstance(spec.views, ShadowViews), "views 'auto' is settled before the shadows train"
    config: dict[str, Any]
    if spec.architecture == "suspect":
        if graph is None:
            raise JobFailed("shadows of the suspect's graph need a registered ONNX suspect")
        try:
            config = graph_summary(graph)
        except ModelFormatError as exc:
            raise JobFailed(f"cannot train shadows of the suspect's graph: {exc}") from None
    else:
        config = {"in_channels": int(data.shape[1]), "image_size": spec.input_size or int(data.shape[2]),
                  **spec.config}
    by_id = {model.id: model for model in kept}
    recipes = [shadow_recipe(spec, dataset, tuple(data.shape), spec.seed + i, config, value_range)
               for i in range(spec.count)]
    ids = [shadow_model_id(ctx.tenant_id, recipe) for recipe in recipes]
    share = _shadow_share(trained=any(model_id not in by_id for model_id in ids))
    shadows, provenance = [], []
    for i, (recipe, model_id) in enumerate(zip(recipes, ids, strict=True)):

        def on_epoch(done: int, epochs: int, i: int = i) -> None:
            ctx.progress(share * (i + done / epochs) / spec.count)

        seed = spec.seed + i
        registered = by_id.get(model_id)
        if registered is not None:
            ctx.log(f"reusing {spec.objective} shadow {i + 1}/{spec.count} (seed {seed}): model {model_id}")
            loaded = load_job_model(ctx, registered, device)
            shadows.append(loaded.embed)
            digest = registered.blob
        elif graph is not None:
            ctx.log(f"training {spec.objective} shadow {i + 1}/{spec.count} (the suspect's graph, "
                    f"{config['learned']} weights redrawn, {spec.epochs} epochs, {len(data)} images, "
                    f"seed {seed}) as model {model_id}")
            module = train_graph_encoder(graph, unit, value_range, objective=spec.objective, seed=seed,
                                         epochs=spec.epochs, batch_size=spec.batch_size,
                                         view=spec.views.spec(), projection_head=spec.projection_head,
                                         on_epoch=on_epoch)
            digest = ctx.save_artifact(module.to_onnx())
            shadows.append(embed_fn(module))
        else:
            try:
                encoder = build_model(ENCODERS[spec.architecture], seed=seed, **config)
            except (TypeError, ValueError) as exc:
                raise JobFailed(f"bad shadow architecture config: {exc}") from None
            if spec.input_size is not None:
                encoder = Resized(encoder, spec.input_size)
            ctx.log(f"training {spec.objective} shadow {i + 1}/{spec.count} ({spec.architecture}, "
                    f"{spec.epochs} epochs, {len(data)} images, seed {seed}) as model {model_id}")
            encoder = train_contrastive(encoder, unit, objective=spec.objective, seed=seed,
                                        epochs=spec.epochs, batch_size=min(spec.batch_size, len(data)),
                                        view=spec.views.spec(), projection_head=spec.projection_head,
                                        on_epoch=on_epoch)
            shadow = Rescaled(encoder, *value_range).eval()
            digest = ctx.save_artifact(save({k: v.contiguous() for k, v in shadow.state_dict().items()}))
            shadows.append(embed_fn(shadow))
        provenance.append({"model_id": model_id, "seed": seed,
                           "status": "reused" if registered is not None else "trained",
                           "reused": registered is not None, "weights_sha256": digest,
                           "recipe": recipe})
        ctx.progress(share * (i + 1) / spec.count)
    return shadows, provenance


def _match_views(ctx: JobContext, method: Any, spec: ShadowTraining, params: OwnershipParams,
                 public: np.ndarray, private: np.ndarray,
                 suspect: Any) -> tuple[ShadowTraining, tuple[dict[str, float], int]]:
    """Settle ``views: "auto"``: measure the suspect's invariance profile as the audit would
    (its seed, probe and value range, label-blind) and adapt the recipe to it
    (:func:`matched_views`). Returns the settled spec and the profile with the queries it cost,
    which the audit takes instead of measuring again."""
    p = method.resolve_params(params.method_params)
    method.check_params(p)
    budget = params.suspect_endpoint.query_budget if params.suspect_endpoint else None
    counted = CountedQuery(suspect, kind="embed", name="suspect", budget=budget, max_batch=int(p["max_batch"]))
    profile = suspect_profile(public, private, counted, p, params.seed)
    views = matched_views(profile, float(p["flip_threshold"]))
    shown = ", ".join(f"{name} {value:.2f}" for name, value in profile.items())
    changed = views.departures()
    ctx.log(f"the suspect's invariance: {shown} ({counted.queries} queries); the shadows train with "
            f"the appliance's views{' and ' + str(changed) if changed else ''}")
    return spec.model_copy(update={"views": views}), (profile, counted.queries)


def _register_shadows(store: Store, job: dict[str, Any], outcome: JobOutcome) -> None:
    """Register the shadows a DOV4CL job trained as the tenant's models (ids as its report
    names them; a model already there, trained by a job that ran alongside, is kept)."""
    shadows = outcome.inputs.get("shadows")
    if not isinstance(shadows, dict):
        return
    for entry in shadows.get("models", []):
        if entry.get("status") != "trained":
            continue
        recipe = entry["recipe"]
        name = (f"dov4cl-shadow {recipe['objective']} {recipe['family']} e{recipe['epochs']} "
                f"s{recipe['seed']} {recipe['data']['dataset_id']}")[:128]
        graph = recipe["family"] == "suspect"  # the suspect's graph, trained: an ONNX encoder
        added = record_trained_model(
            store, job["tenant_id"], model_id=entry["model_id"], name=name, digest=entry["weights_sha256"],
            kind="encoder", architecture=None if graph else "scaled_encoder",
            config={} if graph else _shadow_model_config(recipe),
            origin={"tag": SHADOW_TAG, "job_id": job["id"], "recipe": recipe})
        store.add_job_log(job["id"], f"shadow seed {recipe['seed']} registered as model {entry['model_id']}"
                          if added else f"shadow seed {recipe['seed']}: model {entry['model_id']} "
                          "was already registered")


def _run(ctx: JobContext, params: OwnershipParams, inputs: OwnershipInputs) -> JobOutcome:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    method = create_method(params.method)
    digests: dict[str, Any] = {}
    if inputs.suspect is not None:
        digests["suspect"] = model_digests(inputs.suspect)
    else:
        assert params.suspect_endpoint is not None
        digests["suspect"] = {"endpoint": params.suspect_endpoint.url}

    start = 0.1  # where the audit's own progress begins: after the shadows' share

    def progress(fraction: float) -> None:
        ctx.progress(start + (1 - start) * fraction)

    closer = None
    distill_queries = 0  # suspect queries spent distilling shadows from it (DOV4CL)
    try:
        if params.method == "dov4cl":
            assert inputs.public_dataset is not None and inputs.private_dataset is not None
            public, _ = _images(ctx, inputs.public_dataset, "public")
            private, _ = _images(ctx, inputs.private_dataset, "private")
            if public.shape[1:] != private.shape[1:]:
                raise JobFailed(f"public images {public.shape[1:]} and private images "
                                f"{private.shape[1:]} differ in shape")
            suspect, device, closer = _suspect_fn(ctx, params, inputs, "embed")
            budget = params.suspect_endpoint.query_budget if params.suspect_endpoint else None
            t0 = time.perf_counter()
            shadow: list[Any]
            invariance: tuple[dict[str, float], int] | None = None
            if inputs.shadows:
                loaded = [load_job_model(ctx, m, params.device) for m in inputs.shadows]
                shadow = [m.embed for m in loaded]
                digests["shadows"] = {
                    "models": [{**model_digests(m), "model_id": m.id, "status": "reused", "reused": True,
                                "weights_sha256": m.blob, "recipe": (m.origin or {}).get("recipe")}
                               for m in inputs.shadows],
                    "trained": 0, "reused": len(inputs.shadows)}
            else:
                assert params.shadow_training is not None and inputs.shadow_data is not None
                shadow_data, _ = _images(ctx, inputs.shadow_data, "shadow training")
                check_distillation_budget(params, len(shadow_data))
                declared = params.method_params.get("value_range")
                try:
                    shadow_range = data_range(public, private, declared) if declared is None \
                        else (float(declared[0]), float(declared[1]))
                    shadow_range = (min(shadow_range[0], float(shadow_data.min())),
                                    max(shadow_range[1], float(shadow_data.max())))
                except (TypeError, ValueError, IndexError, AuditError) as exc:
                    raise JobFailed(f"cannot tell the images' value range: {exc}") from None
                asked = params.shadow_training.architecture  # settled at submission; before, auto was conv
                spec = params.shadow_training.model_copy(update={"architecture": inputs.shadow_architecture or (
                    "conv_encoder" if asked == "auto" else asked)})
                graph = None
                if spec.architecture == "suspect" and inputs.suspect is not None:
                    graph = ctx.blob_path(inputs.suspect.blob).read_bytes()
                matched: dict[str, Any] = {}
                if spec.views == "auto":
                    spec, invariance = _match_views(ctx, method, spec, params, public, private, suspect)
                    matched = {"views_from_invariance": invariance[0]}
                shadow, kept = _train_shadows(ctx, spec, shadow_data, inputs.shadow_data,
                                              inputs.kept_shadows, shadow_range, params.device, graph)
                start = _shadow_share(trained=not all(k["reused"] for k in kept))
                digests["shadows"] = {"trained_on": inputs.shadow_data.model_dump(mode="json"),
                                      "recipe": spec.model_dump(), **matched,
                                      "models": kept,
                                      "trained": sum(not k["reused"] for k in kept),
                                      "reused": sum(k["reused"] for k in kept)}
                if spec.distilled:
                    students, distilled = distil_shadows(
                        ctx, spec, method, params, shadow_data, inputs.shadow_data.sha256, shadow_range, suspect,
                        invariance, registered=inputs.suspect, budget=budget, start=start)
                    shadow = [*shadow, *students]
                    distill_queries = distilled["queries"]
                    digests["shadows"]["distilled"] = distilled
                    start = DISTILLED_SHARE
            timings["shadow_seconds"] = time.perf_counter() - t0
            ctx.progress(start)
            digests["public_dataset"] = inputs.public_dataset.model_dump(mode="json")
            digests["private_dataset"] = inputs.private_dataset.model_dump(mode="json")
            result = method.run(
                DOV4CLInputs(public=public, private=private, suspect=suspect,
                             shadow=shadow if len(shadow) > 1 else shadow[0],
                             query_budget=None if budget is None else budget - distill_queries,
                             invariance=invariance),
                params=params.method_params, seed=params.seed, progress=progress, log=ctx.log)
        else:
            mark = inputs.watermark
            assert mark is not None and inputs.benign is not None
            key = unseal_secret(ctx.settings, bytes.fromhex(mark.sealed_key),
                                context=_seal_context(mark.id, ctx.tenant_id))
            benign, labels = _images(ctx, inputs.benign, "benign", labels=True)
            if labels is None:
                raise JobFailed("the benign dataset needs labels 'y'")
            mode = params.method_params.get("mode", "proba")
            suspect, device, closer = _suspect_fn(ctx, params, inputs,
                                                  "label" if mode == "label" else "proba")
            digests["watermark"] = {"id": mark.id, "marked_dataset_id": mark.marked_dataset_id,
                                    "params": mark.params}
            digests["benign_dataset"] = inputs.benign.model_dump(mode="json")
            budget = params.suspect_endpoint.query_budget if params.suspect_endpoint else None
            ctx.progress(0.1)
            result = method.run(
                WatermarkInputs(benign=benign, benign_labels=labels, suspect=suspect, key=key,
                                target_class=int(mark.params["target_class"]),
                                strength=float(mark.params["strength"]), query_budget=budget),
                params=params.method_params, seed=params.seed, progress=progress, log=ctx.log)
    finally:
        if closer is not None:
            closer()
    timings.update({k: float(v) for k, v in result.timings.items()})
    timings["audit_seconds"] = time.perf_counter() - started
    statistics = dict(result.statistics)
    statistics["queries"] = result.queries + distill_queries
    if distill_queries:
        statistics["distillation_queries"] = distill_queries
    if inputs.shadow_caution:
        statistics["cautions"] = [*statistics.get("cautions", []), inputs.shadow_caution]
    ctx.log(f"{result.method}: p = {result.p_value:.4g}, verdict {result.verdict} "
            f"({result.queries} queries)")
    return JobOutcome(
        method=f"ownership/{result.method}", version=f"{VERSION}+{result.version}",
        parameters={**params.model_dump(mode="json"), "effective": result.parameters},
        inputs=digests, statistics=statistics, p_value=float(result.p_value),
        verdict=result.verdict, alpha=float(result.alpha), seed=params.seed, device=device,
        timings=timings,
    )


def _seal_context(watermark_id: str, tenant_id: str) -> bytes:
    return f"watermark:{watermark_id}:{tenant_id}".encode()


register_job_kind(
    JobKind(
        name="ownership",
        params_model=OwnershipParams,
        resolve=_resolve,
        run=_run,
        inputs_model=OwnershipInputs,
        on_succeeded=_register_shadows,
        description="Dataset-ownership verification: DOV4CL for encoders, keyed watermark for "
        "classifiers; a p-value and a verdict at alpha.",
    )
)
