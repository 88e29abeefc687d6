"""The REST API: images in, class probabilities out, as ``scripts/predict.py`` answers them.

::

    POST /predict   one or many images (multipart, any field name) or one raw image body
                    -> per image: class probabilities, predicted class, tiles, areas
    POST /heatmap   one image larger than a tile -> the heat map as PNG (?format=json: grid)
    GET  /health    up, and how many model calls served how many requests
    GET  /model     the model's facts (model.json) and how it is served
    GET  /docs      OpenAPI, with a form to try it

An image is decoded by pcam's one decoder and made tiles as ``predict.py
--images`` makes them (``pcam.predict.images``); its tiles join other
requests' in one model call (``pcam.serve.batcher``). Bad input is a 4xx
naming the file and why, never a 500: undecodable (400), no image (400), a
body over the limit (413, before it is read when its length is declared).
Decoding and tiling run in the server's thread pool, so the event loop keeps
accepting requests while the model works.
"""
from __future__ import annotations

import asyncio
import io
from typing import Sequence

import numpy as np
# At module level: FastAPI reads the routes' annotations (strings here) in this
# module's namespace to know that ``request`` is the request, not a query field.
from fastapi import Request

from pcam import __version__


class BadInput(Exception):
    """A request's mistake: its HTTP status and a one-line reason."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def create_app(ensemble: Sequence, identity: dict, views: Sequence[int], *, max_tiles: int = 256,
               max_wait: float = 0.0, max_body_mb: float = 50.0):
    """The FastAPI application serving ``ensemble`` (``(model, ModelInfo)`` pairs).

    Args:
        identity: what every answer says about the model (run, folds, versions).
        views: dihedral TTA views (``pcam.predict.tta.TTA_VIEWS[n]``).
        max_tiles: tiles gathered into one model call (0: one call per request).
        max_wait: seconds a batch waits for more requests.
        max_body_mb: the largest request body accepted.
    """
    import dataclasses

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    from pcam.serve.batcher import Batcher

    info = ensemble[0][1]
    classes = tuple(info.classes)
    limit = int(max_body_mb * 1e6)
    batcher = Batcher(ensemble, views, max_tiles, max_wait)
    app = FastAPI(title="pcam", version=__version__,
                  description=f"Class probabilities of histology images by run "
                              f"{identity.get('run', '')}: {', '.join(classes)}. For research "
                              "and teaching, not diagnosis.")
    app.state.batcher = batcher
    served = {"requests": 0}

    @app.exception_handler(BadInput)
    async def bad_input(request, err: BadInput):
        return JSONResponse({"detail": err.detail}, status_code=err.status)

    @app.middleware("http")
    async def body_limit(request: Request, call_next):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return JSONResponse({"detail": f"the request body is {int(declared) / 1e6:.1f} MB, "
                                           f"over this server's limit of {max_body_mb:g} MB"},
                                status_code=413)
        return await call_next(request)

    @app.post("/predict", summary="Class probabilities of one or many images")
    async def predict(request: Request):
        from pcam.predict.images import answer_images, images_as_tiles, predicted_classes

        found = await uploads(request, limit)
        images = await run_in_threadpool(decoded, found)
        tiles, owner = await run_in_threadpool(images_as_tiles, images, info.tile_size,
                                               info.window)
        probs = await asyncio.wrap_future(batcher.submit(tiles))
        answers = answer_images(probs, owner, len(images), info.threshold)
        names = predicted_classes(answers.probs, classes, info.threshold)
        served["requests"] += 1
        return {"model": identity, "images": [
            {"name": name, "probabilities": dict(zip(classes, map(float, p))),
             "predicted": predicted, "tiles": int(n), "areas": dict(zip(classes, map(float, a)))}
            for (name, _), p, predicted, n, a in zip(found, answers.probs, names, answers.tiles,
                                                     answers.areas)]}

    @app.post("/heatmap", summary="Where in an image larger than a tile each class is")
    async def heatmap(request: Request, format: str = "png", stride: int = 0):
        from pcam.explain.heatmap import heat_map

        found = await uploads(request, limit)
        if len(found) != 1:
            raise BadInput(400, f"a heat map is of one image; this request holds {len(found)}")
        image = (await run_in_threadpool(decoded, found))[0]
        check_heat_map(found[0][0], image, info.window, format, stride)
        heat = await run_in_threadpool(heat_map, ensemble, image, info, stride or None,
                                       tuple(batcher.views))
        if format == "json":
            return {"model": identity, "classes": list(classes), "ys": heat.ys.tolist(),
                    "xs": heat.xs.tolist(), "grid": np.round(heat.grid, 6).tolist(),
                    "window": heat.tile, "stride": heat.stride}

        png = await run_in_threadpool(heat_map_png, heat, image,
                                      f"{found[0][0]}: run {identity.get('run', '')}")
        return Response(png, media_type="image/png")

    @app.get("/health", summary="Up, with the model calls made so far")
    async def health():
        return {"status": "ok", "requests": served["requests"], "model_calls": batcher.calls}

    @app.get("/model", summary="The model's facts and how it is served")
    async def model():
        return {"model": identity, "info": dataclasses.asdict(info),
                "tta_views": list(batcher.views), "batching": {
                    "max_tiles": max_tiles, "max_wait_ms": max_wait * 1000}}

    return app


async def uploads(request, limit: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image in a request: its multipart files, or its body.

    Raises:
        BadInput: no image (400), or more than ``limit`` bytes of them (413).
    """
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_part_size=limit)
        found = [(item.filename or key, await item.read()) for key, item in form.multi_items()
                 if hasattr(item, "read")]
    else:
        body = await request.body()
        found = [("body", body)] if body else []
    if sum(len(data) for _, data in found) > limit:
        raise BadInput(413, f"the images are over this server's limit of {limit / 1e6:g} MB")
    if not any(data for _, data in found):
        raise BadInput(400, "no image in the request: send image files as multipart form "
                            "data, or one image as the request body")
    return found


def decoded(found: list[tuple[str, bytes]]) -> list[np.ndarray]:
    """The images, decoded by pcam's decoder; the first that cannot be, a 400 naming it."""
    from pcam.data.images import decode_bytes

    images = []
    for name, data in found:
        image, problem = decode_bytes(data, name)
        if problem:
            raise BadInput(400, f"{name}: {problem}")
        images.append(image)
    return images


def heat_map_png(heat, image: np.ndarray, title: str) -> bytes:
    """A heat map's figure as PNG bytes."""
    import matplotlib.pyplot as plt

    from pcam.explain.heatmap import heat_map_figure

    fig = heat_map_figure(heat, image, title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def check_heat_map(name: str, image: np.ndarray, window: int, format: str, stride: int) -> None:
    """Refuse, as a 400, a heat map that cannot be made as asked."""
    if min(image.shape[:2]) < window:
        raise BadInput(400, f"{name}: {image.shape[1]}x{image.shape[0]} px is smaller than the "
                            f"model's {window} px window; POST it to /predict")
    if format not in ("png", "json"):
        raise BadInput(400, f"format={format}: png or json")
    if stride and not 1 <= stride <= window:
        raise BadInput(400, f"stride={stride}: from 1 to the window's {window} px")
