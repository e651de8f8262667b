"""`modelfab.Client`: a thin wrapper of the REST API. Methods return the API's objects as
the wire models of `modelfab.schemas` (the ones the server answers with) and raise
`ApiError` (a ModelfabError carrying the server's code, message and param).

Creates (tenants, keys, datasets, jobs, endpoints) carry a fresh `Idempotency-Key` and are
retried with it when the connection fails, even after the request was sent: the server
answers a repeat as it did the first, so a retry never does the work twice."""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from modelfab.client.chat import ChatStream, Messages, chat_body
from modelfab.client.errors import ApiError, Unreachable, api_error
from modelfab.client.predict import chunks, image_part, merged
from modelfab.errors import ModelfabError
from modelfab.schemas import limits
from modelfab.schemas.common import List
from modelfab.schemas.completions import ChatCompletion
from modelfab.schemas.datasets import Dataset, DatasetCreated, DatasetVersionDetail
from modelfab.schemas.endpoints import FAILED, READY, Endpoint, EndpointDeleted, Prediction
from modelfab.schemas.hub import HubModel, HubModelImported
from modelfab.schemas.jobs import TERMINAL, Job, JobEvent, JobLogs
from modelfab.schemas.models import Lineage, Model, ModelVersion, ModelVersionDetail
from modelfab.schemas.pool import Pool
from modelfab.schemas.tenants import ApiKey, ApiKeyCreated, Me, Tenant, TenantCreated
from modelfab.schemas.usage import AnyUsageRow
from modelfab.settings import ClientSettings

__all__ = ["TERMINAL", "ApiError", "ChatStream", "Client", "Unreachable"]

M = TypeVar("M", bound=BaseModel)


class Client:
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float | None = None,
        transport: httpx.BaseTransport | None = None,
        create_retries: int = 3,
        retry_backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
    ):
        """`transport` replaces the network (httpx.MockTransport in tests, a proxy...).
        A create whose connection fails is sent again up to `create_retries` times, after
        `retry_backoff_s`, then twice that, and so on, never waiting more than
        `max_backoff_s` between two tries."""
        self.create_retries = create_retries
        self.retry_backoff_s = retry_backoff_s
        self.max_backoff_s = max_backoff_s
        settings = ClientSettings()
        self.url = (url or settings.url).rstrip("/")
        key = api_key if api_key is not None else settings.api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(
            base_url=f"{self.url}/v1",
            headers=headers,
            timeout=timeout_s or settings.timeout_s,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call; raises ApiError on 4xx/5xx and Unreachable when the server is down."""
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if resp.status_code >= 400:
            raise api_error(resp)
        return resp.json()

    def create(self, model: type[M], path: str, **kwargs: Any) -> M:
        """POST a create with a fresh `Idempotency-Key`, sent again with the same key when
        the connection fails (before or after the request went out) or the server says a
        request with the key is still in progress: the work is done once. Blocks through
        the back-off; raises Unreachable after `create_retries` retries, ApiError on 4xx/5xx.
        File objects in `files` are rewound before each retry."""
        headers = {**kwargs.pop("headers", {}), "Idempotency-Key": str(uuid.uuid4())}
        for attempt in range(self.create_retries + 1):
            if attempt:
                time.sleep(min(self.max_backoff_s, self.retry_backoff_s * 2 ** (attempt - 1)))
                _rewind(kwargs.get("files"))
            try:
                resp = self._http.post(path, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.create_retries:
                    raise self._unreachable(exc) from exc
                continue
            error = api_error(resp) if resp.status_code >= 400 else None
            if error is None:
                return model.model_validate(resp.json())
            if error.code != "idempotency_key_in_use" or attempt == self.create_retries:
                raise error
        raise AssertionError("unreachable: the loop returns or raises")

    def _unreachable(self, exc: Exception) -> Unreachable:
        return Unreachable(
            f"cannot reach modelfab at {self.url} ({exc}); is `modelfab up` running? "
            "Set MODELFAB_URL to its address."
        )

    def call(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        """`request`, its answer parsed into `model` (pydantic ValidationError if it does
        not fit, which means client and server disagree on the wire format)."""
        return model.model_validate(self.request(method, path, **kwargs))

    def _list(self, model: type[M], path: str, **kwargs: Any) -> list[M]:
        return self.call(List[model], "GET", path, **kwargs).data  # type: ignore[valid-type]

    # -- tenants --------------------------------------------------------------------------
    def me(self) -> Me:
        return self.call(Me, "GET", "/me")

    def create_tenant(self, name: str, **quota: Any) -> TenantCreated:
        return self.create(TenantCreated, "/tenants", json={"name": name, **quota})

    def list_tenants(self) -> list[Tenant]:
        return self._list(Tenant, "/tenants")

    def update_tenant(self, name: str, **changes: Any) -> Tenant:
        return self.call(Tenant, "PATCH", f"/tenants/{name}", json=changes)

    # -- keys -----------------------------------------------------------------------------
    def create_key(
        self,
        tenant: str,
        *,
        name: str | None = None,
        role: str = "member",
        expires_at: float | None = None,
        expires_in_s: float | None = None,
    ) -> ApiKeyCreated:
        """A new key of `tenant`; its secret (`api_key`) is in this answer only."""
        body = {"name": name, "role": role, "expires_at": expires_at, "expires_in_s": expires_in_s}
        return self.create(ApiKeyCreated, f"/tenants/{tenant}/keys", json=body)

    def list_keys(self, tenant: str) -> list[ApiKey]:
        """The keys of `tenant`, revoked and expired ones too (never their secrets)."""
        return self._list(ApiKey, f"/tenants/{tenant}/keys")

    def revoke_key(self, tenant: str, key_id: str) -> ApiKey:
        """Revoke a key at once; revoking it again answers the same."""
        return self.call(ApiKey, "DELETE", f"/tenants/{tenant}/keys/{key_id}")

    # -- datasets -------------------------------------------------------------------------
    def create_dataset(self, name: str, path: str | Path, *, task: str) -> DatasetCreated:
        """Upload a local folder (packed as tar.gz on the fly) or an existing archive."""
        path = Path(path)
        if path.is_dir():
            with tempfile.TemporaryDirectory() as tmp:
                archive = Path(tmp) / f"{name}.tar.gz"
                with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
                    tar.add(path, arcname=name)
                return self._upload(name, task, archive)
        if not path.exists():
            raise ModelfabError(f"{path} does not exist", param="path", code="not_found")
        return self._upload(name, task, path)

    def _upload(self, name: str, task: str, archive: Path) -> DatasetCreated:
        with open(archive, "rb") as fh:
            files = {"file": (archive.name, fh, "application/octet-stream")}
            data = {"name": name, "task": task}
            return self.create(DatasetCreated, "/datasets/upload", data=data, files=files)

    def create_dataset_from_server_path(self, name: str, path: str, *, task: str) -> DatasetCreated:
        body = {"name": name, "task": task, "path": path}
        return self.create(DatasetCreated, "/datasets", json=body)

    def list_datasets(self) -> list[Dataset]:
        return self._list(Dataset, "/datasets")

    def get_dataset(self, ref: str) -> DatasetVersionDetail:
        return self.call(DatasetVersionDetail, "GET", f"/datasets/{ref}")

    # -- jobs -----------------------------------------------------------------------------
    def create_job(
        self,
        recipe: str,
        *,
        params: dict[str, Any] | None = None,
        dataset: str | None = None,
        gpus: float = 0.0,
        cpus: float = 1.0,
        memory_bytes: int = 0,
        priority: int = 0,
        max_attempts: int = 3,
    ) -> Job:
        body = {
            "recipe": recipe,
            "params": params or {},
            "dataset": dataset,
            "resources": {"gpus": gpus, "cpus": cpus, "memory_bytes": memory_bytes},
            "priority": priority,
            "max_attempts": max_attempts,
        }
        return self.create(Job, "/jobs", json=body)

    def list_jobs(
        self, status: str | None = None, limit: int = limits.DEFAULT_LIST_JOBS
    ) -> list[Job]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        return self._list(Job, "/jobs", params=params)

    def get_job(self, job_id: str) -> Job:
        return self.call(Job, "GET", f"/jobs/{job_id}")

    def cancel_job(self, job_id: str) -> Job:
        return self.call(Job, "POST", f"/jobs/{job_id}/cancel")

    def job_events(self, job_id: str, after: int = 0) -> list[JobEvent]:
        return self._list(JobEvent, f"/jobs/{job_id}/events", params={"after": after})

    def job_logs(self, job_id: str, *, attempt: int | None = None, offset: int = 0) -> JobLogs:
        params: dict[str, Any] = {"offset": offset}
        if attempt:
            params["attempt"] = attempt
        return self.call(JobLogs, "GET", f"/jobs/{job_id}/logs", params=params)

    def follow_events(
        self, job_id: str, *, poll_s: float = 0.25, timeout_s: float | None = None
    ) -> Iterator[tuple[Job, list[JobEvent]]]:
        """Yield (job, new events) until the job ends; raises TimeoutError after `timeout_s`."""
        after = 0
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get_job(job_id)
            events = self.job_events(job_id, after=after)
            if events:
                after = events[-1].id
            yield job, events
            if job.status in TERMINAL:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout_s}s")
            time.sleep(poll_s)

    def wait_job(
        self,
        job_id: str,
        *,
        timeout_s: float | None = None,
        on_update: Callable[[Job, list[JobEvent]], None] | None = None,
    ) -> Job:
        """Block until the job ends and return it; raises TimeoutError after `timeout_s`."""
        job = None
        for job, events in self.follow_events(job_id, timeout_s=timeout_s):
            if on_update is not None:
                on_update(job, events)
        assert job is not None  # follow_events yields at least once
        return job

    # -- hub ------------------------------------------------------------------------------
    def hub_list(self) -> list[HubModel]:
        return self._list(HubModel, "/hub")

    def hub_import(
        self, model_id: str, path: str | Path, *, task: str | None = None
    ) -> HubModelImported:
        """Import into the hub (admin keys only). Without `task`: weights (a torch state
        dict) for the vision catalog model `model_id`. With task "chat": a language model
        under the new name `model_id`, from a .gguf file or a Hugging Face model folder
        (sent as a tar, symbolic links followed, so a hub cache snapshot works). Safe to
        retry: the same content again answers the stored import."""
        path = Path(path)
        if path.is_dir():
            if task is None:
                raise ModelfabError(
                    f"{path} is a folder: only chat models are imported as folders; pass "
                    "task='chat' (--task chat)",
                    param="task",
                    code="invalid_request",
                )
            with tempfile.TemporaryDirectory() as tmp:
                archive = Path(tmp) / f"{model_id}.tar"
                # Uncompressed: safetensors barely compress, and gzip would cost minutes.
                with tarfile.open(archive, "w", dereference=True) as tar:
                    tar.add(path, arcname=model_id)
                return self._hub_upload(model_id, archive, task)
        if not path.is_file():
            raise ModelfabError(f"{path} is not a file or folder", param="path", code="not_found")
        return self._hub_upload(model_id, path, task)

    def _hub_upload(self, model_id: str, path: Path, task: str | None) -> HubModelImported:
        params = {"task": task} if task else {}
        with open(path, "rb") as fh:
            files = {"file": (path.name, fh, "application/octet-stream")}
            return self.create(
                HubModelImported, f"/hub/{model_id}/import", params=params, files=files
            )

    # -- models ---------------------------------------------------------------------------
    def list_models(self) -> list[Model]:
        return self._list(Model, "/models")

    def get_model(self, ref: str) -> ModelVersionDetail:
        """`ref` is NAME (the latest version), NAME:VERSION or NAME@ALIAS."""
        return self.call(ModelVersionDetail, "GET", f"/models/{ref}")

    def set_alias(self, name: str, alias: str, version: int) -> ModelVersion:
        body = {"alias": alias, "version": version}
        return self.call(ModelVersion, "POST", f"/models/{name}/aliases", json=body)

    def model_lineage(self, ref: str) -> Lineage:
        return self.call(Lineage, "GET", f"/models/{ref}/lineage")

    def download_artifact(self, ref: str, name: str, dest: Path) -> Path:
        """Stream artifact `name` of `ref` to `dest` (a file, or a folder to put `name` in).

        The bytes are checked against the server's X-Sha256 before `dest` appears; raises
        ModelfabError (code artifact_corrupt) on a mismatch, leaving nothing behind.
        """
        dest = Path(dest)
        target = dest / name if dest.is_dir() else dest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                expected, actual = self._stream_to(f"/models/{ref}/artifacts/{name}", out)
            if expected != actual:
                raise ModelfabError(
                    f"{name} of {ref} arrived with sha256 {actual}, but the server says "
                    f"{expected}; download it again",
                    param="name",
                    code="artifact_corrupt",
                )
            os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; an export is an ordinary file
            os.replace(tmp_name, target)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        return target

    def _stream_to(self, path: str, out: Any) -> tuple[str, str]:
        """GET `path` into `out`; returns (the X-Sha256 header, the sha256 of what arrived)."""
        digest = hashlib.sha256()
        try:
            with self._http.stream("GET", path) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise api_error(resp)
                for chunk in resp.iter_bytes(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach modelfab at {self.url} ({exc})") from exc
        return resp.headers.get("x-sha256", ""), digest.hexdigest()

    # -- endpoints --------------------------------------------------------------------------
    def create_endpoint(self, name: str, *, model: str, **options: Any) -> Endpoint:
        """`options`: replicas, gpus, cpus, memory_bytes, max_batch_size, max_wait_ms."""
        body = {"name": name, "model": model, **options}
        return self.create(Endpoint, "/endpoints", json=body)

    def list_endpoints(self) -> list[Endpoint]:
        return self._list(Endpoint, "/endpoints")

    def get_endpoint(self, name: str) -> Endpoint:
        return self.call(Endpoint, "GET", f"/endpoints/{name}")

    def update_endpoint(self, name: str, **changes: Any) -> Endpoint:
        return self.call(Endpoint, "PATCH", f"/endpoints/{name}", json=changes)

    def delete_endpoint(self, name: str) -> EndpointDeleted:
        return self.call(EndpointDeleted, "DELETE", f"/endpoints/{name}")

    def wait_endpoint(
        self, name: str, *, timeout_s: float = 300.0, poll_s: float = 0.25
    ) -> Endpoint:
        """Block until every replica is ready; raises ModelfabError when the endpoint
        failed or `timeout_s` passed."""
        deadline = time.monotonic() + timeout_s
        while True:
            endpoint = self.get_endpoint(name)
            if endpoint.status == READY:
                return endpoint
            if endpoint.status == FAILED:
                why = (endpoint.error or {}).get("message", "no reason given")
                raise ModelfabError(f"endpoint {name!r} failed: {why}", code="endpoint_failed")
            if time.monotonic() > deadline:
                raise ModelfabError(
                    f"endpoint {name!r} not ready after {timeout_s:g}s "
                    f"({endpoint.ready_replicas}/{endpoint.replicas} replicas)",
                    code="timeout",
                )
            time.sleep(poll_s)

    def predict(
        self,
        name: str,
        images: list[Path | tuple[str, bytes]],
        *,
        top_k: int = 1,
        threshold: float | None = None,
        heatmap: bool | None = None,
        max_images: int = limits.MAX_IMAGES_PER_REQUEST,
        max_bytes: int = limits.PREDICT_CHUNK_BYTES,
    ) -> Prediction:
        """Run endpoint `name` on images (paths, or (name, bytes) pairs). A classifier
        answers labels (`top_k` best); an anomaly detector answers score, verdict and
        heatmap, judged at `threshold` when given (else its stored one), without the
        heatmap when `heatmap` is False. None sends nothing, leaving the server default.

        More images than one request may carry go in several requests, in order, of at
        most `max_images` images and about `max_bytes` (a single larger image goes alone):
        the answer is one Prediction whose indexes count over all `images` and whose usage
        adds up. Raises ApiError of the first request that fails."""
        params: dict[str, Any] = {"top_k": top_k}
        if threshold is not None:
            params["threshold"] = repr(float(threshold))
        if heatmap is not None:
            params["heatmap"] = "true" if heatmap else "false"
        path = f"/endpoints/{name}/predict"
        answers, offset = [], 0
        for chunk in chunks(images, max_images=max_images, max_bytes=max_bytes):
            files = [("file", image_part(image)) for image in chunk]
            answers.append(
                (offset, self.call(Prediction, "POST", path, files=files, params=params))
            )
            offset += len(chunk)
        return merged(answers)

    # -- chat -----------------------------------------------------------------------------
    def chat(
        self,
        endpoint: str,
        messages: Messages,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: str | list[str] | None = None,
        seed: int | None = None,
    ) -> ChatCompletion:
        """Ask chat endpoint `endpoint` (OpenAI's `/v1/chat/completions`); blocks until the
        whole answer is generated. Options left None take the server's defaults
        (temperature 1; 0 is greedy). Raises ApiError: 404 model_not_found for a name that
        is not one of the caller's endpoints, 400 naming a bad option, 429 when full."""
        body = chat_body(
            endpoint, messages, stream=False, max_tokens=max_tokens,
            temperature=temperature, stop=stop, seed=seed,
        )  # fmt: skip
        return self.call(ChatCompletion, "POST", "/chat/completions", json=body)

    def chat_stream(
        self,
        endpoint: str,
        messages: Messages,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: str | list[str] | None = None,
        seed: int | None = None,
    ) -> ChatStream:
        """As `chat`, streamed: returns once the server accepted the request (raising
        ApiError as `chat` when it refused), with a `ChatStream` to iterate for the text
        as it is generated; then its `finish_reason`, `usage` and `completion()`. Use it
        in a `with` block so an abandoned stream frees its connection and its slot."""
        body = chat_body(
            endpoint, messages, stream=True, max_tokens=max_tokens,
            temperature=temperature, stop=stop, seed=seed,
        )  # fmt: skip
        request = self._http.build_request("POST", "/chat/completions", json=body)
        try:
            resp = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if resp.status_code >= 400:
            try:
                resp.read()
            finally:
                resp.close()
            raise api_error(resp)
        return ChatStream(resp)

    # -- pool and usage -------------------------------------------------------------------
    def pool(self) -> Pool:
        return self.call(Pool, "GET", "/pool")

    def usage(self, *, since: float | None = None, by: str = "meter") -> list[AnyUsageRow]:
        """Rows per tenant and meter; `by` job or endpoint adds their columns."""
        params: dict[str, Any] = {"by": by}
        if since is not None:
            params["since"] = since
        return self.call(List[AnyUsageRow], "GET", "/usage", params=params).data


def _rewind(files: dict[str, Any] | None) -> None:
    """Seek the file objects of a multipart `files` mapping back to their start."""
    for value in (files or {}).values():
        handle = value[1] if isinstance(value, tuple) else value
        if hasattr(handle, "seek"):
            handle.seek(0)
