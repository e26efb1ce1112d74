"""Python SDK for the appliance.

>>> from appliance.client import Client
>>> client = Client("http://127.0.0.1:8080", token="aat_...")
>>> job = client.create_job("evaluation", {"model_id": m.id, "dataset_id": d.id})
>>> job = client.wait(job, progress=True)
>>> verified = client.verify_report(client.get_report(job.report_id))
"""

from __future__ import annotations

import io
import json
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx

from appliance.capabilities.ownership.client import OwnershipClient
from appliance.capabilities.provenance.client import ProvenanceClient
from appliance.capabilities.signatures.client import SignaturesClient
from appliance.capabilities.unlearning.client import UnlearningClient
from appliance.client.keystore import KeyStore, default_keys_dir
from appliance.errors import Error
from appliance.schemas import (
    DatasetList,
    DatasetOut,
    JobList,
    JobLogLine,
    JobOut,
    ModelList,
    ModelOut,
    ReportList,
    TokenIssued,
    TokenList,
    TokenOut,
    WhoAmI,
)
from models.formats import tar_folder

if TYPE_CHECKING:  # the SDK imports these where it needs them: a light install has no numpy
    from appliance.capabilities.inference.service import EnsembleOut
    from appliance.capabilities.refinement.schemas import (
        ModelOwnerRefinement,
        RefinedModel,
        RefinementOut,
    )
    from appliance.client.inference import InferenceSession, PrivatePrediction
    from crypto.bundle import VerifiedReport
    from crypto.private_inference.client import PrivateClient
    from crypto.provisioning import VerifiedQuote

RETRY_STATUSES = (429, 503)
#: Texts private_predict embeds per encoder call; what they fill of a request is encrypted and
#: sent while the next ones embed (64: one full wide body at K=8 x 384-d).
EMBED_CHUNK = 64
TERMINAL = ("succeeded", "failed", "cancelled")


class ClientError(Error):
    """Base error of the SDK; ``diagnostics()`` explains what to do (the message and a hint)."""

    hint = "see the message above"


class ApiError(ClientError):
    """The server answered with a problem document (its title, detail and hint are kept)."""

    hint = "the problem document above says what the server refused"

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        hint = problem.get("hint")
        super().__init__(f"HTTP {status}: {problem.get('title', '')}: {problem.get('detail', '')}",
                         hint=str(hint) if hint else None)


class ConnectionFailed(ClientError):
    """The server could not be reached after all retries, or dropped the connection."""

    hint = "check the server URL (APPLIANCE_URL) and that `appliance serve` is running"


class RequestTimeout(ClientError):
    """The server took longer than the client's timeout to answer (it may still be working)."""

    hint = ("pass a larger timeout, e.g. Client(url, timeout=300), or send smaller "
            "batches; the request may still complete on the server")


class JobTimeout(ClientError):
    """``wait`` ran out of time; the job goes on on the server."""

    hint = "wait again with a longer timeout, or follow it with `appliance jobs wait JOB_ID`"


class JobNotSucceeded(ClientError):
    """A job whose result was asked for failed, was cancelled or is another kind of job."""


class KeyStoreError(ClientError):
    """Saved client keys cannot be opened (wrong passphrase, damaged or foreign file)."""


class Client:
    """HTTP client with retries (connection errors, 429, 503) and typed results."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        backoff: float = 0.25,
        transport: httpx.BaseTransport | None = None,
        key_passphrase: str | None = None,
        keys_dir: str | Path | None = None,
    ) -> None:
        """``key_passphrase`` (or ``APPLIANCE_KEY_PASSPHRASE``) keeps private-inference keys
        between runs in ``keys_dir`` (default :func:`appliance.client.inference.default_keys_dir`),
        encrypted under it; without one, keys live only as long as this process."""
        self.base_url = (base_url or os.environ.get("APPLIANCE_URL") or "http://127.0.0.1:8080")
        token = token or os.environ.get("APPLIANCE_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries = retries
        self.backoff = backoff
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout,
                                 transport=transport)
        self.signatures = SignaturesClient(self)
        self.ownership = OwnershipClient(self)
        self.provenance = ProvenanceClient(self)
        self.unlearning = UnlearningClient(self)
        passphrase = key_passphrase or os.environ.get("APPLIANCE_KEY_PASSPHRASE")
        self.key_store: KeyStore | None = None
        if passphrase:
            self.key_store = KeyStore(directory=keys_dir or default_keys_dir(),
                                      passphrase=passphrase)
        self._private_clients: dict[str, Any] = {}  # ensemble id -> PrivateClient (this run)
        self._sessions: list[InferenceSession] = []  # opened here, closed by close()

    def close(self) -> None:
        """Close the inference sessions this client opened (their keys leave the server),
        then the connection pool."""
        try:
            for session in self._sessions:
                try:
                    session.close()
                except ClientError:
                    pass  # best effort: the server's TTL sweeps what could not be closed
            self._sessions.clear()
        finally:
            self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; retry on connection errors, 429 and 503 with jittered backoff."""
        attempt = 0
        while True:
            try:
                for key in ("files",):
                    # rewind file objects so a retried upload sends the whole body again
                    for item in (kwargs.get(key) or {}).values():
                        handle = item[1] if isinstance(item, tuple) else item
                        if hasattr(handle, "seek"):
                            handle.seek(0)
                resp = self.http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                if attempt >= self.retries:
                    raise ConnectionFailed(f"cannot reach {self.base_url}: {exc}") from exc
            except httpx.TimeoutException as exc:
                raise RequestTimeout(f"{method} {path}: no answer from {self.base_url} within "
                                     f"the client's timeout ({type(exc).__name__})") from exc
            except httpx.HTTPError as exc:
                raise ConnectionFailed(f"{method} {path} to {self.base_url} failed: "
                                       f"{type(exc).__name__}: {exc}") from exc
            else:
                if resp.status_code not in RETRY_STATUSES or attempt >= self.retries:
                    if resp.status_code >= 400:
                        try:
                            problem = resp.json()
                        except ValueError:
                            problem = {"title": resp.reason_phrase, "detail": resp.text[:200]}
                        raise ApiError(resp.status_code, problem)
                    return resp
                retry_after = resp.headers.get("Retry-After")
                if retry_after and retry_after.isdigit():
                    time.sleep(min(float(retry_after), 10.0))
            attempt += 1
            time.sleep(self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random()))

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # -- identity -----------------------------------------------------------------------------
    def whoami(self) -> WhoAmI:
        return WhoAmI.model_validate(self._json("GET", "/v1/whoami"))

    def health(self) -> dict[str, Any]:
        return dict(self._json("GET", "/healthz"))

    # -- tokens (tenant admins onboard their own clients) --------------------------------------
    def create_token(self, role: str, *, label: str | None = None,
                     expires_in: str | None = None) -> TokenIssued:
        """Mint a ``client`` or ``auditor`` token for this tenant (admins); ``expires_in`` like
        ``"30d"`` (default 30 days, at most 365). The token is in the answer only."""
        body: dict[str, Any] = {"role": role}
        if label is not None:
            body["label"] = label
        if expires_in is not None:
            body["expires_in"] = expires_in
        return TokenIssued.model_validate(self._json("POST", "/v1/tokens", json=body))

    def list_tokens(self) -> list[TokenOut]:
        """This tenant's tokens: ids, roles, labels, expiry, revocation (never the secrets)."""
        return TokenList.model_validate(self._json("GET", "/v1/tokens")).items

    def revoke_token(self, token_id: str) -> None:
        """Revoke one of this tenant's tokens."""
        self.request("DELETE", f"/v1/tokens/{token_id}")

    # -- models & datasets --------------------------------------------------------------------
    def upload_model(
        self,
        path: str | Path,
        *,
        name: str,
        format: str | None = None,
        kind: str | None = None,
        architecture: str | None = None,
        config: Mapping[str, Any] | None = None,
        signature: str | Path | None = None,
    ) -> ModelOut:
        """Upload an ONNX or safetensors file, or a transformers folder (sent as a tar);
        ``signature`` is a model.sig from ``model_signing sign``, verified before storing."""
        path = Path(path)
        data: dict[str, str] = {"name": name}
        for key, value in (("format", format), ("kind", kind), ("architecture", architecture)):
            if value:
                data[key] = value
        if config is not None:
            data["config"] = json.dumps(dict(config))
        if path.is_dir():
            data.setdefault("format", "transformers")
            handle: Any = io.BytesIO(tar_folder(path))
            filename = path.name + ".tar"
        else:
            handle = open(path, "rb")  # noqa: SIM115 - closed below
            filename = path.name
        files: dict[str, Any] = {"file": (filename, handle)}
        if signature is not None:
            files["signature"] = ("model.sig", Path(signature).read_bytes())
        try:
            body = self._json("POST", "/v1/models", data=data, files=files)
        finally:
            handle.close()
        return ModelOut.model_validate(body)

    def list_models(self) -> list[ModelOut]:
        return ModelList.model_validate(self._json("GET", "/v1/models")).items

    def get_model(self, model_id: str) -> ModelOut:
        return ModelOut.model_validate(self._json("GET", f"/v1/models/{model_id}"))

    def model_manifest(self, model_id: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/v1/models/{model_id}/manifest"))

    def upload_dataset(self, path_or_arrays: str | Path | Mapping[str, Any], *,
                       name: str) -> DatasetOut:
        """Upload an ``.npz`` file, or a mapping ``{"x": array, "y": array}``."""
        if isinstance(path_or_arrays, Mapping):
            import numpy as np

            buf = io.BytesIO()
            arrays: dict[str, Any] = {k: np.asarray(v) for k, v in path_or_arrays.items()}
            np.savez(buf, **arrays)
            handle: Any = io.BytesIO(buf.getvalue())
            filename = f"{name}.npz"
        else:
            handle = open(path_or_arrays, "rb")  # noqa: SIM115
            filename = Path(path_or_arrays).name
        try:
            body = self._json("POST", "/v1/datasets", data={"name": name},
                              files={"file": (filename, handle)})
        finally:
            handle.close()
        return DatasetOut.model_validate(body)

    def list_datasets(self) -> list[DatasetOut]:
        return DatasetList.model_validate(self._json("GET", "/v1/datasets")).items

    # -- jobs -------------------------------------------------------------------------------------
    def create_job(self, kind: str, params: Mapping[str, Any] | None = None) -> JobOut:
        return JobOut.model_validate(
            self._json("POST", "/v1/jobs", json={"kind": kind, "params": dict(params or {})}))

    def get_job(self, job: str | JobOut) -> JobOut:
        job_id = job.id if isinstance(job, JobOut) else job
        return JobOut.model_validate(self._json("GET", f"/v1/jobs/{job_id}"))

    def list_jobs(self) -> list[JobOut]:
        return JobList.model_validate(self._json("GET", "/v1/jobs")).items

    def job_logs(self, job: str | JobOut, *, after: int = 0) -> list[JobLogLine]:
        job_id = job.id if isinstance(job, JobOut) else job
        body = self._json("GET", f"/v1/jobs/{job_id}/logs", params={"after": after})
        return [JobLogLine.model_validate(item) for item in body["items"]]

    def cancel_job(self, job: str | JobOut) -> JobOut:
        job_id = job.id if isinstance(job, JobOut) else job
        return JobOut.model_validate(self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    def wait(self, job: str | JobOut, *, timeout: float = 3600.0, poll: float = 0.2,
             progress: bool = False) -> JobOut:
        """Poll until the job ends; with ``progress=True`` draw a progress bar."""
        deadline = time.monotonic() + timeout
        current = self.get_job(job)
        with _progress_bar(progress) as show:
            while current.state not in TERMINAL:
                show(f"{current.kind} {current.id} [{current.state}]", current.progress)
                if time.monotonic() > deadline:
                    raise JobTimeout(f"job {current.id} still {current.state} after {timeout}s")
                time.sleep(poll)
                poll = min(poll * 1.3, 2.0)
                current = self.get_job(current.id)
            show(f"{current.kind} {current.id} [{current.state}]",
                 1.0 if current.state == "succeeded" else current.progress)
        return current

    # -- reports and the log ----------------------------------------------------------------------
    def get_report(self, report_id: str, *, tree_size: int | None = None) -> dict[str, Any]:
        """The signed bundle: save it as JSON and verify it anywhere with ``verify_report``."""
        params = {"tree_size": tree_size} if tree_size else None
        return dict(self._json("GET", f"/v1/reports/{report_id}", params=params))

    def report_html(self, report_id: str) -> str:
        return self.request("GET", f"/v1/reports/{report_id}.html").text

    def list_reports(self) -> ReportList:
        return ReportList.model_validate(self._json("GET", "/v1/reports"))

    def checkpoint(self) -> dict[str, Any]:
        return dict(self._json("GET", "/v1/log/checkpoint")["envelope"])

    def public_key(self) -> str:
        return str(self._json("GET", "/v1/log/public-key")["public_key"])

    def consistency_proof(self, first: int, second: int | None = None) -> list[str]:
        params = {"first": first, **({"second": second} if second else {})}
        return list(self._json("GET", "/v1/log/consistency", params=params)["proof"])

    @staticmethod
    def verify_report(bundle: Mapping[str, Any], *, trusted_key_pem: str | bytes | None = None,
                      checkpoint: Mapping[str, Any] | None = None) -> VerifiedReport:
        """Verify offline: signature, inclusion in the log, signed checkpoint."""
        return verify_report(bundle, trusted_key_pem=trusted_key_pem, checkpoint=checkpoint)

    # -- private ensemble inference -----------------------------------------------------
    def create_ensemble(self, artifact: Any, *, name: str | None = None) -> EnsembleOut:
        """Register a private ensemble (owner roles): an ``EnsembleArtifact``, a folder holding
        ``ensemble.json`` + ``ensemble.safetensors``, or a mapping of those file names to bytes.
        Returns :class:`appliance.capabilities.inference.service.EnsembleOut`."""
        from appliance.capabilities.inference.service import EnsembleOut
        from crypto.ensemble import JSON_NAME, TENSORS_NAME, EnsembleArtifact

        if isinstance(artifact, EnsembleArtifact):
            files = artifact.dumps()
        elif isinstance(artifact, Mapping):
            files = {str(k): bytes(v) for k, v in artifact.items()}
        else:
            folder = Path(artifact)
            files = {n: (folder / n).read_bytes() for n in (JSON_NAME, TENSORS_NAME)}
        data = {"name": name} if name else {}
        body = self._json("POST", "/v1/ensembles", data=data, files={
            "ensemble_json": (JSON_NAME, io.BytesIO(files[JSON_NAME]), "application/json"),
            "ensemble_safetensors": (TENSORS_NAME, io.BytesIO(files[TENSORS_NAME]),
                                     "application/octet-stream"),
        })
        return EnsembleOut.model_validate(body)

    def list_ensembles(self) -> list[EnsembleOut]:
        """This tenant's ensembles (:class:`appliance.capabilities.inference.service.EnsembleOut`)."""
        from appliance.capabilities.inference.service import EnsembleList

        return EnsembleList.model_validate(self._json("GET", "/v1/ensembles")).items

    def ensemble_spec(self, ensemble_id: str) -> dict[str, Any]:
        """The public spec a client needs (templates, classes, encoder, preset, layout)."""
        from appliance.capabilities.inference.service import EnsembleSpec

        body = self._json("GET", f"/v1/ensembles/{ensemble_id}")
        return EnsembleSpec.model_validate(body).model_dump()

    def _private_client(self, ensemble_id: str, spec: dict[str, Any]) -> PrivateClient:
        """This run's client keys for the ensemble: reused, loaded from the key store, or
        generated (and then saved there)."""
        from crypto.private_inference.client import PrivateClient

        private = self._private_clients.get(ensemble_id)
        if private is not None and getattr(private, "_spec", None) == spec:
            return cast("PrivateClient", private)
        path = self.key_store.path_for(self.base_url, spec) if self.key_store else None
        if self.key_store is not None and path is not None:
            private = self.key_store.load(path, spec)
        if private is None:
            try:
                private = PrivateClient(spec=spec)
            except Exception as exc:  # CryptoError subclasses with hints
                raise ClientError(f"cannot make keys for ensemble {ensemble_id}: {exc}",
                                  hint=str(getattr(exc, "hint", "")) or None) from exc
            if self.key_store is not None and path is not None:
                self.key_store.save(path, private)
        self._private_clients[ensemble_id] = private
        return private

    def open_inference_session(self, ensemble_id: str, *,
                               ttl_seconds: int | None = None) -> InferenceSession:
        """Open a session holding only this client's evaluation keys; the secret key stays here.

        Keys are generated once per process and ensemble, or loaded from the key store
        (``key_passphrase``); :meth:`close` (or leaving ``with Client(...)``) closes the
        session, as does :meth:`InferenceSession.close`.
        """
        spec = self.ensemble_spec(ensemble_id)
        private = self._private_client(ensemble_id, spec)
        from appliance.client.inference import InferenceSession
        from appliance.client.inference import _open as _open_session

        body = _open_session(self, ensemble_id, private, ttl_seconds)
        session = InferenceSession(sdk=self, ensemble_id=ensemble_id, spec=spec,
                                   private_client=private, session=body, ttl_seconds=ttl_seconds)
        self._sessions.append(session)
        return session

    def private_predict(self, ensemble_id: str, texts: list[str] | tuple[str, ...], *,
                        encode: Any = None, batch: bool = True,
                        session: InferenceSession | None = None,
                        layout: str | None = None) -> PrivatePrediction:
        """Embed locally (with the encoder the spec names, see
        :func:`appliance.client.inference.text_encoder`, unless ``encode`` is given; every
        template prompt of :data:`EMBED_CHUNK` texts per encoder call) -> encrypt -> send ->
        decrypt, the requests of texts already embedded encrypted, sent and decrypted in the
        background while the next texts embed.

        Returns :class:`appliance.client.inference.PrivatePrediction` (labels, indices, and win
        counts or, for an ensemble registered with ``output: "onehot"``, one-hot values; with
        ``output: "label"`` exact one-hot values, each query answered in two rounds). The
        server sees only ciphertexts. Without ``session`` one is opened for this call and
        closed before returning (the keys themselves are kept for the next call, and across
        runs with a key store). With ``batch`` and enough texts the wide layout is used where
        the spec lists it; ``layout="single"``/``"wide"`` forces one.
        """
        import numpy as np

        from appliance.client.inference import PrivatePrediction, embed_texts, text_encoder
        from crypto.errors import CryptoError
        from crypto.private_inference.client import PrivateScores

        texts = [str(t) for t in texts]
        if not texts:
            raise ClientError("private_predict needs at least one text",
                              hint="pass a non-empty list of strings")
        spec = session.spec if session is not None else self.ensemble_spec(ensemble_id)
        if encode is None:
            encode = text_encoder(str(spec["encoder"]))
        opening: Future[InferenceSession] | None = None
        pool = ThreadPoolExecutor(max_workers=1) if session is None else None
        sender = ThreadPoolExecutor(max_workers=1)
        sent: list[Future[PrivateScores]] = []
        try:
            if pool is not None:  # keys and upload overlap the embedding (ONNX frees the GIL)
                opening = pool.submit(self.open_inference_session, ensemble_id)
            # Texts are embedded EMBED_CHUNK at a time; each whole request's worth of queries
            # is encrypted, sent and decrypted in the background while the next texts embed.
            # The layout is chosen once for all the texts, so the requests are the same as
            # for one embedding call (only the last may be partial).
            pending: list[Any] = []
            held = 0
            chosen = ""
            unit = 1
            for start in range(0, len(texts), EMBED_CHUNK):
                try:
                    part = embed_texts(spec, texts[start:start + EMBED_CHUNK], encode)
                except CryptoError as exc:
                    raise ClientError(f"embedding failed: {exc}", hint=exc.hint) from exc
                pending.append(part)
                held += len(part)
                if not chosen:
                    if opening is not None:
                        session = opening.result()
                    assert session is not None
                    chosen = session.choose_layout(len(texts), batch=batch, layout=layout)
                    unit = session.request_queries(chosen, batch=batch)
                assert session is not None
                ready = held if start + EMBED_CHUNK >= len(texts) else held // unit * unit
                if ready:
                    block = np.concatenate(pending) if len(pending) > 1 else pending[0]
                    sent.append(sender.submit(session.predict_embeddings, block[:ready],
                                              batch=batch, layout=chosen))
                    pending = [block[ready:]] if ready < held else []
                    held -= ready
            scores = PrivateScores.concat([future.result() for future in sent])
        finally:
            for future in sent:
                future.cancel()  # after an error: what has not started yet is not sent
            sender.shutdown(wait=True)
            if pool is not None and opening is not None:
                pool.shutdown(wait=True)
                if opening.exception() is None:
                    opened = opening.result()
                    self._sessions.remove(opened)
                    try:
                        opened.close()
                    except ClientError:
                        pass  # the TTL sweeps it; the prediction (or its error) matters more
        return PrivatePrediction(labels=list(scores.predicted_classes),
                                 indices=list(scores.labels), win_counts=scores.win_counts,
                                 one_hot=scores.one_hot)

    # -- confidential refinement --------------------------------------------------------
    def enclave_attestation(self, nonce: bytes) -> dict[str, Any]:
        """The raw attestation answer for ``nonce`` (quote base64, platform key, measurement)."""
        return dict(self._json("GET", "/v1/enclave/attestation", params={"nonce": nonce.hex()}))

    def verify_enclave(self, expected_measurements: Any, platform_key: Any, *,
                       allow_simulated: bool = False, allow_debug: bool = False) -> VerifiedQuote:
        """Fetch a quote over a fresh random nonce and verify it against the pinned platform
        key (32 raw bytes, their hex, or PEM) and the MRENCLAVE allow-list
        (``expected_measurements``: one hex string or several). Returns the
        :class:`crypto.provisioning.VerifiedQuote` to wrap secrets to.

        Raises a :class:`crypto.provisioning.ProvisioningError` subclass naming what did not
        match: ``QuoteSignatureError`` (other platform key), ``SimulatedQuoteError``,
        ``DebugEnclaveError``, ``MeasurementNotAllowedError``, ``ReportDataMismatchError``
        (replayed quote / substituted key), ``QuoteFormatError``.
        """
        import base64

        from crypto.provisioning import QuoteFormatError, verify_quote

        allowed = [expected_measurements] if isinstance(expected_measurements, str) \
            else list(expected_measurements)
        key = platform_key
        if isinstance(key, str) and len(key) == 64:
            try:
                key = bytes.fromhex(key)
            except ValueError:
                pass
        nonce = os.urandom(32)
        answer = self.enclave_attestation(nonce)
        try:
            quote = base64.b64decode(str(answer["quote"]), validate=True)
        except (KeyError, ValueError):
            raise QuoteFormatError("the attestation answer carries no base64 quote") from None
        return verify_quote(quote, platform_key=key, allowed_measurements=allowed, nonce=nonce,
                            allow_simulated=allow_simulated, allow_debug=allow_debug)

    def create_refinement(self, model: Mapping[str, Any], *, kind: str,
                          expected_measurements: Any, platform_key: Any,
                          allow_simulated: bool = False, epochs: int = 1, lr: float = 0.5,
                          seed: int = 0, batch_size: int = 64, reduction: str = "host",
                          name: str | None = None) -> ModelOwnerRefinement:
        """Model owner: verify the enclave, wrap the model to it, create the refinement.

        ``model``: ``{"W": (d, k), "b": (k,)}`` for ``kind="softmax"``; plus ``"W1": (d, h)``,
        ``"b1": (h,)`` (frozen ReLU layer) for ``kind="mlp_last_layer"``. Nothing is sent unless
        the quote verifies. Returns :class:`appliance.capabilities.refinement.schemas.ModelOwnerRefinement`
        (id, one-time invitation for the data owner, and the result key that stays here).
        """
        import numpy as np

        from appliance.capabilities.refinement.schemas import ModelOwnerRefinement, RefinementCreated
        from appliance.confidential import pack_mlp_model, pack_softmax_model, wrap_model

        if kind not in ("softmax", "mlp_last_layer"):
            raise ClientError("kind must be 'softmax' or 'mlp_last_layer'")
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in model.items()}
        result_key = os.urandom(32)
        try:
            if kind == "softmax":
                packed = pack_softmax_model(arrays["W"], arrays["b"], result_key=result_key)
                input_dim = arrays["W"].shape[0]
            else:
                packed = pack_mlp_model(arrays["W1"], arrays["b1"], arrays["W"], arrays["b"],
                                        result_key=result_key)
                input_dim = arrays["W1"].shape[0]
        except KeyError as exc:
            raise ClientError(f"model lacks the array {exc.args[0]!r} for kind {kind!r}") from None
        verified = self.verify_enclave(expected_measurements, platform_key,
                                       allow_simulated=allow_simulated)
        blob = wrap_model(verified, packed)
        fields = {"kind": kind, "input_dim": str(input_dim),
                  "num_classes": str(arrays["W"].shape[1]), "epochs": str(epochs),
                  "lr": repr(float(lr)), "seed": str(seed), "batch_size": str(batch_size),
                  "reduction": reduction}
        if name:
            fields["name"] = name
        body = self._json("POST", "/v1/refinements", data=fields, files={
            "model": ("model.wrapped", io.BytesIO(blob), "application/octet-stream")})
        created = RefinementCreated.model_validate(body)
        return ModelOwnerRefinement(id=created.refinement.id, invitation=created.invitation,
                                    result_key=result_key, refinement=created.refinement)

    def get_refinement(self, refinement_id: str, *,
                       invitation: str | None = None) -> RefinementOut:
        """A refinement (:class:`appliance.capabilities.refinement.schemas.RefinementOut`); a data owner who
        has not provisioned yet passes the ``invitation`` to read the terms."""
        from appliance.capabilities.refinement.schemas import RefinementOut

        headers = {"X-Invitation-Code": invitation} if invitation else None
        return RefinementOut.model_validate(
            self._json("GET", f"/v1/refinements/{refinement_id}", headers=headers))

    def list_refinements(self) -> list[RefinementOut]:
        """Refinements where this tenant is the model owner or the data owner."""
        from appliance.capabilities.refinement.schemas import RefinementList

        return RefinementList.model_validate(self._json("GET", "/v1/refinements")).items

    def provision_refinement(self, refinement_id: str, invitation: str, *, X: Any, y: Any,
                             X_val: Any, y_val: Any, expected_measurements: Any,
                             platform_key: Any, allow_simulated: bool = False,
                             ckks_context: Any = None) -> RefinementOut:
        """Data owner: read the terms, verify the enclave, CKKS-encrypt the features (the
        secret key stays here, and reaches only the verified enclave, wrapped to it), wrap the
        labels to the enclave, and upload. Starts the refinement job. Nothing is sent if the
        quote does not verify."""
        import numpy as np

        from appliance.confidential import (
            create_ckks_context,
            encrypt_dataset,
            public_context,
            wrap_ckks_secret,
        )

        terms = self.get_refinement(refinement_id, invitation=invitation).terms
        arrays = []
        for features, labels, what in ((X, y, "training"), (X_val, y_val, "validation")):
            features, labels = np.asarray(features, np.float64), np.asarray(labels)
            if features.ndim != 2 or features.shape[1] != terms.input_dim:
                raise ClientError(f"{what} features must be (n, {terms.input_dim})")
            if labels.shape != (features.shape[0],) or labels.min() < 0 \
                    or labels.max() >= terms.num_classes:
                raise ClientError(f"{what} labels must be (n,) in [0, {terms.num_classes})")
            arrays.append((features, labels))
        verified = self.verify_enclave(expected_measurements, platform_key,
                                       allow_simulated=allow_simulated)
        ctx = ckks_context if ckks_context is not None else create_ckks_context()
        (Xt, yt), (Xv, yv) = arrays
        train = encrypt_dataset(ctx, verified, Xt, yt, num_classes=terms.num_classes,
                                batch_size=terms.batch_size, split="train", layout="coeff")
        val = encrypt_dataset(ctx, verified, Xv, yv, num_classes=terms.num_classes,
                              batch_size=terms.batch_size, split="val", layout="coeff")
        parts = {
            "train": train.to_bytes(), "validation": val.to_bytes(),
            "public_context": public_context(ctx), "ckks_secret": wrap_ckks_secret(ctx, verified),
        }
        from appliance.capabilities.refinement.schemas import RefinementOut

        body = self._json("POST", f"/v1/refinements/{refinement_id}/data",
                          data={"invitation": invitation},
                          files={k: (k, io.BytesIO(v), "application/octet-stream")
                                 for k, v in parts.items()})
        return RefinementOut.model_validate(body)

    def wait_refinement(self, refinement_id: str, *, timeout: float = 3600.0,
                        poll: float = 0.2, progress: bool = False) -> RefinementOut:
        """Poll until the refinement's job ends (either party); with ``progress=True`` draw the
        bar of :meth:`wait`."""
        deadline = time.monotonic() + timeout
        with _progress_bar(progress) as show:
            while True:
                current = self.get_refinement(refinement_id)
                done = current.state == "succeeded"
                show(f"refinement {refinement_id} [{current.state}]",
                     1.0 if done else current.job.progress if current.job else 0.0)
                if current.state in TERMINAL:
                    return current
                if time.monotonic() > deadline:
                    raise JobTimeout(f"refinement {refinement_id} still {current.state}")
                time.sleep(poll)
                poll = min(poll * 1.3, 2.0)

    def retry_refinement(self, refinement_id: str, *, resume: bool = True) -> JobOut:
        """Model owner: a new job for a failed refinement (resumes from its sealed checkpoint)."""
        return JobOut.model_validate(self._json(
            "POST", f"/v1/refinements/{refinement_id}/retry",
            params={"resume": "true" if resume else "false"}))

    def refinement_result(self, refinement_id: str, result_key: bytes, *,
                          trusted_key_pem: str | bytes | None = None) -> RefinedModel:
        """Model owner: fetch the refined model, check its signed manifest (against
        ``trusted_key_pem`` if given, else the key the server names) and its digest, and open it
        with ``result_key``. Returns :class:`appliance.capabilities.refinement.schemas.RefinedModel`."""
        import base64
        import hashlib

        from appliance.capabilities.refinement.schemas import RefinedModel, RefinementResultOut
        from appliance.confidential import open_refined_model
        from crypto.dsse import verify_envelope
        from crypto.errors import SignatureError
        from crypto.keys import load_public_key_pem
        from models.manifest import PAYLOAD_TYPE

        out = RefinementResultOut.model_validate(
            self._json("GET", f"/v1/refinements/{refinement_id}/result"))
        blob = base64.b64decode(out.model, validate=True)
        digest = hashlib.sha256(blob).hexdigest()
        key = load_public_key_pem(trusted_key_pem or out.manifest["public_key"])
        statement = json.loads(verify_envelope(out.manifest["envelope"], key,
                                               payload_type=PAYLOAD_TYPE))
        listed = [r.get("digest") for r in statement.get("predicate", {}).get("resources", [])]
        if digest != out.sha256 or listed != [digest]:
            raise SignatureError("the refined model's bytes do not match its signed manifest")
        meta, arrays = open_refined_model(blob, result_key=result_key, job_id=refinement_id)
        return RefinedModel(refinement_id=refinement_id, job_id=out.job_id,
                            report_id=out.report_id, sha256=digest, meta=meta, arrays=arrays,
                            statement=statement)


def verify_report(bundle: Mapping[str, Any], *, trusted_key_pem: str | bytes | None = None,
                  checkpoint: Mapping[str, Any] | None = None) -> VerifiedReport:
    """Offline verification of a report bundle (no network)."""
    from crypto.bundle import verify_bundle
    from crypto.keys import load_public_key_pem

    trusted = load_public_key_pem(trusted_key_pem) if trusted_key_pem else None
    core = {k: bundle[k] for k in ("envelope", "log", "public_key") if k in bundle}
    verified = verify_bundle(core, trusted_key=trusted,
                             checkpoint=dict(checkpoint) if checkpoint else None)
    if "report" in bundle and bundle["report"] != verified.report:
        from crypto.errors import SignatureError

        raise SignatureError("the bundle's 'report' copy differs from the signed payload")
    return verified


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[str, float], None]]:
    """The bar ``wait`` draws (rich): call it with a description and the progress in [0, 1]."""
    if not enabled:
        yield lambda description, completed: None
        return
    from rich.progress import Progress, TaskID

    bar = Progress(transient=False)
    task: TaskID | None = None

    def show(description: str, completed: float) -> None:
        nonlocal task
        if task is None:
            task = bar.add_task(description, total=1.0)
        bar.update(task, completed=completed, description=description)

    bar.start()
    try:
        yield show
    finally:
        bar.stop()


