"""Serve a trained model over HTTP: ``python -m medimg.serve ckpt_path=<ckpt> [engine=onnx] [port=8000]``.

Reads top to bottom: read the settings (conf/serve.yaml); load the model once (a bad checkpoint stops here
with one error line, before any port is opened); build the FastAPI app (medimg/serving/app.py) and run it
on uvicorn until Ctrl-C / SIGTERM. ``limits.max_connections`` is uvicorn's ``limit_concurrency``: requests
beyond it get 503 at once. The web page is at ``http://<host>:<port>/``, the API's documentation at ``/docs``.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
import uvicorn
from omegaconf import DictConfig, OmegaConf

from medimg.cli import CONF_DIR, run_task
from medimg.config.overrides import guard_command_line
from medimg.config.schema import read
from medimg.config.serve import ServeSettings
from medimg.serving.app import create_app
from medimg.serving.service import ServedModel

log = logging.getLogger("medimg.serve")


def serve(cfg: dict[str, Any]) -> None:
    """Run the server of a serve config (see conf/serve.yaml) until it is stopped."""
    s = read(ServeSettings, cfg, "")
    model = ServedModel(s)
    app = create_app(s, model)
    log.info("serving %s: %d classes, %s engine, on http://%s:%d/ (API documentation: /docs); probabilities: %s",
             s.ckpt_path or s.onnx_path, len(model.class_names), model.engine.name, s.host, s.port,
             model.engine.calibration_note)
    uvicorn.run(app, host=s.host, port=s.port, log_level=s.log_level, limit_concurrency=s.limits.max_connections,
                server_header=False)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="serve")
def main(cfg: DictConfig) -> None:
    run_task(serve, OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    guard_command_line("serve")  # an unknown key: one line, before any work
    main()
