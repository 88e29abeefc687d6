"""``pcam-serve``: load the model once, then serve it until stopped."""
from __future__ import annotations

from pathlib import Path

from pcam import __version__
from pcam.errors import PcamError


def serve(settings) -> None:
    """Serve ``settings`` (a ``ServeSettings``) with uvicorn until interrupted.

    Raises:
        PcamError: no model named, a bad run, FastAPI missing, or the port taken.
    """
    try:
        import uvicorn

        from pcam.serve.api import create_app
    except ImportError as err:
        raise PcamError(f"pcam-serve needs FastAPI and uvicorn ({err.name} is missing): "
                        "pip install 'pcam[serve]'") from None
    from pcam.predict.tta import TTA_VIEWS

    _check_port(settings.host, settings.port)  # before minutes of loading, not after
    ensemble, identity = load(settings)
    views = TTA_VIEWS[settings.tta]
    app = create_app(ensemble, identity, views,
                     max_tiles=settings.max_batch if settings.batching else 0,
                     max_wait=settings.max_wait_ms / 1000 if settings.batching else 0.0,
                     max_body_mb=settings.max_body_mb)
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"listening on {settings.host}: other machines that reach this one can use the "
              "model (the default, 127.0.0.1, is this machine only)", flush=True)
    print(f"serving {identity['run']} (fold(s) {', '.join(map(str, identity['folds']))}, TTA "
          f"x{len(views)}) on http://{settings.host}:{settings.port} (docs: /docs); Ctrl+C "
          "stops it", flush=True)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    except OSError as err:
        raise PcamError(f"cannot listen on {settings.host}:{settings.port}: {err.strerror}; "
                        "choose another --port") from None
    finally:
        app.state.batcher.close()


def _check_port(host: str, port: int) -> None:
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        raise PcamError(f"cannot listen on {host}:{port}: {err.strerror}; choose another "
                        "--port (or --host)") from None


def load(settings) -> tuple[list, dict]:
    """The ``(model, ModelInfo)`` pairs to serve and the identity answers carry."""
    from pcam.models.saved import load_model_with_info
    from pcam.predict.ensemble import load_ensemble
    from pcam.runs import load_run, resolve_folds

    if bool(settings.run) == bool(settings.model):
        raise PcamError("name the model to serve: --run runs/NAME, or --model "
                        "runs/NAME/fold_K/best.keras (one of the two)")
    if settings.model:
        path = Path(settings.model)
        if not path.is_file():
            raise PcamError(f"--model {path}: no such file; give a fold's best.keras")
        ensemble = [load_model_with_info(path)]
        return ensemble, {"run": str(path), "folds": [], "pcam_version": __version__}
    run_dir, config = load_run(settings.run)
    folds = resolve_folds(run_dir, config, settings.folds)
    return load_ensemble(run_dir, folds), {"run": run_dir.resolve().name, "folds": list(folds),
                                           "pcam_version": __version__}
