# The image the Kubernetes install runs (autoscaler, activator, node cache, storage-init and the
# built-in model server): `docker build -t ghcr.io/zeroserve/zeroserve:0.1.0 .`
# For the hf runtime on GPUs, build FROM a CUDA PyTorch image instead and install '.[llm]'.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/zeroserve
COPY pyproject.toml README.md ./
COPY zeroserve ./zeroserve
COPY activator ./activator
COPY autoscaler ./autoscaler
COPY runtime ./runtime
COPY sim ./sim
COPY manifests ./manifests
COPY examples ./examples
RUN pip install -e . && useradd --uid 65532 --no-create-home zeroserve
USER 65532
ENTRYPOINT ["zeroserve"]
