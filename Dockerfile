# medimg's model server on the CPU (docs/serving.md):
#
#   docker build -t medimg-serve .
#   docker run --rm -p 8000:8000 -v /path/to/run/checkpoints:/models:ro medimg-serve
#   docker run --rm -p 8000:8000 -v /path/to/run/checkpoints:/models:ro medimg-serve engine=onnx threads=4
#
# The folder mounted at /models holds best.ckpt (and model.onnx for engine=onnx, written by
# `python -m medimg.export`); arguments after the image name are more `key=value` overrides of conf/serve.yaml
# (the last value of a key wins), e.g. ckpt_path=/models/other.ckpt. The page is at http://localhost:8000/.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU builds of torch and torchvision (the versions pyproject.toml pins) from the PyTorch CPU index: a layer of
# its own, so that changing medimg's code does not download them again.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

# medimg itself: conf/ lives beside the package (medimg.cli.CONF_DIR), so the source tree is installed in place.
WORKDIR /app
COPY pyproject.toml README.md ./
COPY conf ./conf
COPY medimg ./medimg
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -e . \
    && python -c "import medimg.serving.app"

# A user without privileges; everything it writes (the server's log folder, library caches) goes to its home.
RUN useradd --create-home --uid 10001 medimg
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
