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
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from .schemas import (
    DatasetList,
    DatasetOut,
    JobList,
    JobLogLine,
    JobOut,
    ModelList,
    ModelOut,
    ReportList,
    WhoAmI,
)

RETRY_STATUSES = (429, 503)
TERMINAL = ("succeeded", "failed", "cancelled")


class ClientError(Exception):
    """Base error of the SDK; ``diagnostics()`` explains what to do."""

    def diagnostics(self) -> str:
        return str(self)


class ApiError(ClientError):
    """The server answered with a problem document."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        super().__init__(f"HTTP {status}: {problem.get('title', '')}: {problem.get('detail', '')}")

    def diagnostics(self) -> str:
        hint = self.problem.get("hint")
        return str(self) + (f"\nHint: {hint}" if hint else "")


class ConnectionFailed(ClientError):
    """The server could not be reached after all retries."""


class JobTimeout(ClientError):
    """``wait`` ran out of time; the job goes on on the server."""


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
    ) -> None:
        self.base_url = (base_url or os.environ.get("APPLIANCE_URL") or "http://127.0.0.1:8080")
        token = token or os.environ.get("APPLIANCE_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries = retries
        self.backoff = backoff
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout,
                                 transport=transport)

    def close(self) -> None:
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
    ) -> ModelOut:
        """Upload an ONNX or safetensors file, or a transformers folder (sent as a tar)."""
        path = Path(path)
        data: dict[str, str] = {"name": name}
        for key, value in (("format", format), ("kind", kind), ("architecture", architecture)):
            if value:
                data[key] = value
        if config is not None:
            data["config"] = json.dumps(dict(config))
        if path.is_dir():
            data.setdefault("format", "transformers")
            handle: Any = io.BytesIO(_tar_folder(path))
            filename = path.name + ".tar"
        else:
            handle = open(path, "rb")  # noqa: SIM115 - closed below
            filename = path.name
        try:
            body = self._json("POST", "/v1/models", data=data, files={"file": (filename, handle)})
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
            np.savez(buf, **{k: np.asarray(v) for k, v in path_or_arrays.items()})
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
        bar = None
        task = None
        if progress:
            from rich.progress import Progress

            bar = Progress(transient=False)
            bar.start()
            task = bar.add_task(f"{current.kind} {current.id}", total=1.0)
        try:
            while current.state not in TERMINAL:
                if bar is not None and task is not None:
                    bar.update(task, completed=current.progress,
                               description=f"{current.kind} {current.id} [{current.state}]")
                if time.monotonic() > deadline:
                    raise JobTimeout(f"job {current.id} still {current.state} after {timeout}s")
                time.sleep(poll)
                poll = min(poll * 1.3, 2.0)
                current = self.get_job(current.id)
            if bar is not None and task is not None:
                bar.update(task, completed=1.0 if current.state == "succeeded" else current.progress,
                           description=f"{current.kind} {current.id} [{current.state}]")
        finally:
            if bar is not None:
                bar.stop()
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
                      checkpoint: Mapping[str, Any] | None = None) -> Any:
        """Verify offline: signature, inclusion in the log, signed checkpoint."""
        return verify_report(bundle, trusted_key_pem=trusted_key_pem, checkpoint=checkpoint)


def verify_report(bundle: Mapping[str, Any], *, trusted_key_pem: str | bytes | None = None,
                  checkpoint: Mapping[str, Any] | None = None) -> Any:
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


def _tar_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    return buf.getvalue()
