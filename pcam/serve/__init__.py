"""A run's model as a REST API (``pcam-serve``): FastAPI on uvicorn, requests batched.

``batcher`` gathers the tiles of concurrent requests into one model call;
``api`` is the FastAPI application (decode, tile, answer, as predict.py does).
A face like the commands and the app: may import everything below it;
nothing imports it but ``pcam.commands.serve``.
"""
