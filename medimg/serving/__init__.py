"""The HTTP server of ``python -m medimg.serve``: the FastAPI app (app.py), its response models (schemas.py),
upload limits (uploads.py), the model behind it (service.py), micro-batching (batching.py), the web page
(static/index.html), and a launcher for scripts and tests (process.py)."""
