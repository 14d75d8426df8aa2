# medimg's model server on the CPU (docs/serving.md):
#
#   docker build -t medimg-serve .
#   docker run --rm -p 8000:8000 -v /path/to/run/checkpoints:/models:ro medimg-serve
#   docker run --rm -p 8000:8000 -v /path/to/run/checkpoints:/models:ro medimg-serve engine=onnx threads=4
#
# The folder mounted at /models holds best.ckpt (and model.onnx for engine=onnx, written by
# `python -m medimg.export`); arguments after the image name are more `key=value` overrides of conf/serve.yaml
# (the last value of a key wins), e.g. ckpt_path=/models/other.ckpt. The page is at http://localhost:8000/.
#
# Build arguments:
#   BASE_IMAGE  a Debian bookworm image with Python 3.11: the official python:3.11-slim-bookworm (its Python in
#               /usr/local) or Debian's own python3 + python3-venv (`make docker-base` builds one with
#               mmdebstrap). Either way medimg goes into a virtual environment at /opt/venv, first on PATH.
#   WHEELS      empty (the default): torch and torchvision from the PyTorch CPU index (TORCH_INDEX_URL), the
#               rest from PyPI. A folder: install from the wheels in it only (`pip --no-index --find-links`),
#               for builds without network, e.g.
#               buildah bud --volume "$PWD/build/docker/wheels:/wheels:ro" --build-arg WHEELS=/wheels ...
# Every version comes from requirements.lock (pip-compile's lock of pyproject.toml), used as constraints: the
# image holds medimg's runtime dependencies at the locked versions and none of the dev extra. The lock's hashes
# are left out of the constraints: pip's hash-checking mode would demand one for medimg's own editable install.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG WHEELS=
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# A user without privileges (the server runs as it, see USER below); everything it writes (the server's log
# folder, library caches) goes to its home.
RUN useradd --create-home --uid 10001 medimg

# torch and torchvision (the versions pyproject.toml pins) in a layer of their own, so that changing medimg's
# code does not install them again.
WORKDIR /app
COPY requirements.lock ./
RUN sed -e '/--hash=/d' -e 's/ \\$//' requirements.lock > /opt/constraints.txt \
    && python3 -m venv /opt/venv \
    && if [ -n "$WHEELS" ]; then set -- --no-index --find-links "$WHEELS"; \
       else set -- --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple; fi \
    && pip install "$@" -c /opt/constraints.txt torch==2.14.1 torchvision==0.29.1

# medimg itself: conf/ lives beside the package (medimg.cli.CONF_DIR), so the source tree is installed in place.
# .dockerignore admits only pyproject.toml, requirements.lock, README.md, conf/ and medimg/: one layer.
COPY . ./
RUN if [ -n "$WHEELS" ]; then set -- --no-index --find-links "$WHEELS"; \
    else set -- --extra-index-url "$TORCH_INDEX_URL"; fi \
    && pip install "$@" -c /opt/constraints.txt -e . \
    && python -c "import medimg.serving.app"

USER 10001
ENV MEDIMG_ROOT=/home/medimg/work \
    MPLCONFIGDIR=/home/medimg/.cache/matplotlib \
    TORCH_HOME=/home/medimg/.cache/torch

VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
ENTRYPOINT ["python", "-m", "medimg.serve", "ckpt_path=/models/best.ckpt", "host=0.0.0.0", "port=8000"]
CMD []
