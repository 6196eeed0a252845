"""The web app ``serve.py`` runs (``--uvicorn_app p2sam_server.asgi:app``): MONAI Label's, checked.

Starting from ``monailabel.app.app`` (MONAI Label's FastAPI app, whose start-up loads ``main.py``):

* **Only the endpoints P2SAM needs** (:data:`ALLOWED`): app info, the datastore's image and label
  endpoints, sign-in; MONAI Label's training, active learning, scoring, batch and WSI inference,
  sessions, logs, model download, DICOMweb proxy, OHIF viewer, API pages, ``/reload`` and the
  whole-datastore download (``GET /datastore/dataset``) answer 404 before MONAI Label sees them;
  P2SAM's own ``POST /infer/p2sam`` and ``/p2sam/jobs`` endpoints replace MONAI Label's ``/infer``.
* **Every name checked before anything runs** (:class:`RequestGuard`): query values that name a
  datastore entry (``image``, ``label``, ``tag``, ``id``, ...) must be identifiers, never paths;
  a path with ``..`` is refused; the request body is bounded (``P2SAM_MAX_UPLOAD_MB``).
* **Only expected hosts and origins**: requests whose ``Host`` is not one of
  ``P2SAM_ALLOWED_HOSTS`` are refused (a web page cannot reach a server on 127.0.0.1 through a
  DNS name of its own), and MONAI Label's allow-every-origin CORS policy is removed (origins in
  ``P2SAM_CORS_ORIGINS`` only).
* **Sign-in that works** (:mod:`.auth`), with MONAI Label's role checks on every endpoint.
* **Inference off the event loop**: jobs run in worker threads (:mod:`.jobs`); the endpoints that
  wait for them or copy uploads are plain functions, which FastAPI runs in its thread pool.
"""
import logging
import os
import re
from typing import Optional
from urllib.parse import parse_qsl

from fastapi import BackgroundTasks, Depends, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRouter
from monailabel.app import app
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, get_current_user
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from . import auth
from .checks import ID_QUERY_PARAMETERS, Refused, datastore_id
from .intake import checked_request, queue_job

logger = logging.getLogger(__name__)

#: (methods, path pattern) of every endpoint the server answers; any other request gets 404 before it
#: reaches MONAI Label (whose app still holds its other endpoints, never called)
ALLOWED = tuple((frozenset(m.split("|")), re.compile(p + r"\Z")) for m, p in (
    ("GET", r"/info/?"),
    ("GET", r"/auth/?"), ("POST", r"/auth/token"), ("GET", r"/auth/token/valid"),
    ("POST", r"/infer/p2sam"),
    ("GET|POST", r"/p2sam/jobs"), ("GET|DELETE", r"/p2sam/jobs/[^/]+"), ("GET", r"/p2sam/jobs/[^/]+/result"),
    ("GET", r"/datastore/?"),
    ("GET|HEAD|PUT|DELETE", r"/datastore/image"), ("GET|PUT", r"/datastore/image/info"),
    ("GET|HEAD|PUT|DELETE", r"/datastore/label"), ("GET|PUT", r"/datastore/label/info"),
))
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_UPLOAD_MB = 2048


def _refusal(status: int, message: str):
    return JSONResponse({"detail": message}, status_code=status)


class RequestGuard:
    """ASGI middleware: identifiers in the query, no ``..`` in the path, a bounded body."""

    def __init__(self, asgi_app, max_body_bytes: int) -> None:
        self.app = asgi_app
        self.max_body_bytes = int(max_body_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":  # none of the served endpoints is one
            return await send({"type": "websocket.close", "code": 1008})
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self._check(scope)
        if refusal is not None:
            return await refusal(scope, receive, send)
        seen = [0]
        started = [False]

        class TooLarge(Exception):
            pass

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.max_body_bytes:
                    raise TooLarge()
            return message

        async def tracked_send(message):
            if message["type"] == "http.response.start":
                started[0] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except TooLarge:
            if not started[0]:
                await self._too_large()(scope, receive, send)

    def _too_large(self):
        return _refusal(413, f"the request is larger than this server accepts ({self.max_body_bytes // 2 ** 20} MB)")

    def _check(self, scope):
        path = scope.get("path", "")
        if "\x00" in path or ".." in path.split("/") or "\\" in path:
            return _refusal(400, "the request path contains '..', a backslash or a NUL character")
        method = scope.get("method", "")
        if not any(method in methods and pattern.match(path) for methods, pattern in ALLOWED):
            return _refusal(404, "Not Found")
        query = scope.get("query_string", b"").decode("latin-1")
        try:
            for key, value in parse_qsl(query, keep_blank_values=True):
                if key in ID_QUERY_PARAMETERS and value != "":
                    datastore_id(value, f"query parameter {key}")
        except Refused as exc:
            return _refusal(exc.status, exc.message)
        except ValueError:
            return _refusal(400, "the query string cannot be read")
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body_bytes:
                        return self._too_large()
                except ValueError:
                    return _refusal(400, "bad Content-Length")
        return None


def _instance():
    from monailabel.interfaces.utils.app import app_instance

    return app_instance()


USER = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))


def _http(exc: Refused) -> HTTPException:
    return HTTPException(status_code=exc.status, detail=exc.message)


# -- POST /infer/p2sam: MONAI Label's request format, one blocking request -------------------------------------
infer_router = APIRouter(prefix="/infer", tags=["Infer"])


@infer_router.post("/{model}", summary="Run P2SAM (MONAI Label's format; waits for the result)")
def run_inference(background_tasks: BackgroundTasks, model: str, image: str = "", params: str = Form("{}"),
                  file: Optional[UploadFile] = File(None), label: Optional[UploadFile] = File(None),
                  output: Optional[str] = None, user=USER):
    """The follow-up is the datastore image ``image`` or the upload ``file``; the prior image is the
    datastore image ``params.prior_image``; the prior segmentation is the upload ``label`` or that image's
    datastore label ``params.prior_label_tag`` (default ``final``). Answers as MONAI Label does:
    ``output=all`` (default) a multipart answer (``params``: JSON, ``image``: the ``.seg.nrrd``),
    ``json`` the JSON only, ``image`` the file only."""
    instance = _instance()
    if model != "p2sam":
        raise HTTPException(status_code=404, detail=f"no infer task {model!r} on this server (only 'p2sam')")
    if output not in (None, "", "all", "json", "image"):
        raise HTTPException(status_code=422, detail="output must be all, json or image")
    try:
        params, segments, parameters = checked_request(params, instance.handshake)
        datastore = instance.datastore()
        files = {}
        uploads = {}
        if file is not None:
            uploads["followup"] = file
        elif image:
            path = datastore.get_image_uri(datastore_id(image, "image"))
            if not path:
                raise Refused(404, f"follow-up image '{image}' is not in the datastore")
            files["followup"] = (path, f"datastore image '{image}'")
        else:
            raise Refused(422, "send the follow-up as the datastore image 'image' or as the upload 'file'")
        prior_id = datastore_id(params.get("prior_image") or "", "params.prior_image")
        prior_path = datastore.get_image_uri(prior_id)
        if not prior_path:
            raise Refused(404, f"prior image '{prior_id}' is not in the datastore (params.prior_image must be a "
                               "datastore image id)")
        files["prior_image"] = (prior_path, f"datastore image '{prior_id}'")
        if label is not None:
            uploads["prior_segmentation"] = label
        else:
            tag = datastore_id(params.get("prior_label_tag") or "final", "params.prior_label_tag")
            label_path = datastore.get_label_uri(prior_id, tag)
            if not label_path:
                raise Refused(404, f"prior image '{prior_id}' has no label with tag '{tag}' (upload the prior "
                                   "segmentation as 'label')")
            files["prior_segmentation"] = (label_path, f"datastore label '{prior_id}' ({tag})")
        job = queue_job(instance.jobs, user.username, segments, parameters, uploads, files)
    except Refused as exc:
        raise _http(exc) from None
    if not job.done_event.wait(settings.MONAI_LABEL_INFER_TIMEOUT):
        instance.jobs.delete(job)
        raise HTTPException(status_code=504, detail=f"P2SAM did not finish within {settings.MONAI_LABEL_INFER_TIMEOUT} "
                                                    "s; use POST /p2sam/jobs for long runs")
    if job.status != "done":
        instance.jobs.delete(job)
        raise HTTPException(status_code=job.error_status or 503, detail=job.error or job.message)
    background_tasks.add_task(instance.jobs.delete, job)
    if output == "json":
        return job.answer
    if output == "image":
        return FileResponse(job.result, media_type="application/octet-stream", filename="result.seg.nrrd")
    import json

    from requests_toolbelt import MultipartEncoder

    with open(job.result, "rb") as handle:
        data = handle.read()
    encoded = MultipartEncoder(fields={"params": (None, json.dumps(job.answer), "application/json"),
                                       "image": ("result.seg.nrrd", data, "application/octet-stream")})
    return Response(content=encoded.to_string(), media_type=encoded.content_type)


# -- /p2sam/jobs: uploads in, status, cancel, result -----------------------------------------------------------
jobs_router = APIRouter(prefix="/p2sam/jobs", tags=["P2SAM jobs"])


def _job(job_id: str, user):
    job = _instance().jobs.get(job_id, user) if JOB_ID.match(job_id or "") else None
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id!r} of yours on this server (finished jobs are "
                                                    "forgotten after a while)")
    return job


@jobs_router.post("", status_code=202, summary="Start a propagation job (three uploads and params)")
def create_job(params: str = Form("{}"), prior_image: UploadFile = File(...), followup: UploadFile = File(...),
               prior_segmentation: UploadFile = File(...), user=USER):
    """Uploads: ``prior_image``, ``followup`` (images) and ``prior_segmentation`` (a segmentation on the
    prior image); ``params``: JSON with ``expected_engine_version``, ``expected_model_sha256`` (both
    required), ``segments``, ``parameters``. Answers 202 with the job's id; the uploads are deleted
    when the run ends."""
    instance = _instance()
    try:
        _, segments, parameters = checked_request(params, instance.handshake)
        job = queue_job(instance.jobs, user.username, segments, parameters,
                        {"prior_image": prior_image, "followup": followup, "prior_segmentation": prior_segmentation},
                        {})
    except Refused as exc:
        raise _http(exc) from None
    return job.public()


@jobs_router.get("", summary="Your jobs")
def list_jobs(user=USER):
    return [j.public() for j in _instance().jobs.list_for(user)]


@jobs_router.get("/{job_id}", summary="A job's status and, when done, its answer (report)")
def job_status(job_id: str, user=USER):
    return _job(job_id, user).public()


@jobs_router.get("/{job_id}/result", summary="A finished job's proposal (.seg.nrrd)")
def job_result(job_id: str, user=USER):
    job = _job(job_id, user)
    if job.status in ("queued", "running"):
        raise HTTPException(status_code=409, detail=f"job {job_id} is {job.status}")
    if job.status != "done" or job.result is None or not os.path.isfile(job.result):
        raise HTTPException(status_code=410, detail=f"job {job_id} has no result ({job.status}"
                                                    f"{', files deleted' if job.files_deleted else ''})")
    return FileResponse(job.result, media_type="application/octet-stream", filename="result.seg.nrrd")


@jobs_router.delete("/{job_id}", summary="Cancel a job (if it runs) and delete its files")
def delete_job(job_id: str, user=USER):
    return _instance().jobs.delete(_job(job_id, user)).public()


# -- assembling the app ----------------------------------------------------------------------------------------
def _env_list(name: str):
    return [v.strip() for v in os.environ.get(name, "").split(",") if v.strip()]


def harden(fastapi_app) -> None:
    """Turn MONAI Label's app into the P2SAM server's (see the module docstring); done once, at import."""
    provider = auth.configure()
    fastapi_app.dependency_overrides[get_current_user] = auth.make_dependency()
    routes = fastapi_app.router.routes
    before = len(routes)
    fastapi_app.include_router(auth.router())
    fastapi_app.include_router(infer_router)
    fastapi_app.include_router(jobs_router)
    routes[:] = routes[before:] + routes[:before]  # ours first: they replace MONAI Label's /auth and /infer

    @fastapi_app.exception_handler(Refused)
    async def refused(request, exc: Refused):
        return _refusal(exc.status, exc.message)

    from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException

    @fastapi_app.exception_handler(ImageNotFoundException)
    @fastapi_app.exception_handler(LabelNotFoundException)
    async def not_found(request, exc):
        return _refusal(404, str(exc) or "not found")

    origins = _env_list("P2SAM_CORS_ORIGINS")
    middleware = [m for m in fastapi_app.user_middleware if m.cls is not CORSMiddleware]
    if origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=origins, allow_credentials=False,
                                     allow_methods=["GET", "POST", "PUT", "DELETE", "HEAD"],
                                     allow_headers=["Authorization", "Content-Type"]))
    hosts = _env_list("P2SAM_ALLOWED_HOSTS") or list(LOOPBACK_HOSTS)
    middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=hosts))
    max_mb = int(os.environ.get("P2SAM_MAX_UPLOAD_MB", MAX_UPLOAD_MB))
    middleware.insert(0, Middleware(RequestGuard, max_body_bytes=max_mb * 2 ** 20))
    fastapi_app.user_middleware[:] = middleware
    logger.info(f"P2SAM server: sign-in {'by ' + provider.realm if provider else 'OFF'}; hosts {hosts}; "
                f"CORS origins {origins or 'none'}; uploads up to {max_mb} MB")


harden(app)
