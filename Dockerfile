# The image every task of `movierec export-dag kubeflow` runs in (and a self-contained
# `movierec` CLI). Build from the repository root:
#   docker build -t movierec:0.1.0 .
# It installs exactly requirements/lock.txt, then this repository at /opt/movierec
# (pipeline.kubeflow.IMAGE_PACKAGE_ROOT: the exported spec's schema files are under it).
# Nothing is downloaded when it runs.

ARG PYTHON_IMAGE=python:3.10-slim-bookworm

# ---- builder: the locked environment (a few locked packages build from sdists and
# need a compiler, which the final image does not carry)
FROM ${PYTHON_IMAGE} AS builder
ARG UV_VERSION=0.13.9
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
COPY requirements/lock.txt /tmp/lock.txt
RUN python -m venv --without-pip /opt/venv \
 && uv pip sync --no-cache --compile-bytecode --python /opt/venv/bin/python /tmp/lock.txt

# ---- the image
FROM ${PYTHON_IMAGE}
# A MovieLens dataset to ship in the image at /opt/movierec/data/<name> (fetched from
# GroupLens at build time; export-dag's default --data-dir); empty: none.
ARG MOVIELENS_DATASET=ml-100k
ENV TF_USE_LEGACY_KERAS=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /usr/local/bin/uv /usr/local/bin/uv
WORKDIR /opt/movierec
COPY . /opt/movierec
# The package itself, editable, so its code and schema files stay at /opt/movierec;
# setuptools (the build backend) is in the lock, hence no build isolation, no download.
RUN uv pip install --no-cache --no-deps --no-build-isolation --python /opt/venv/bin/python \
      -e /opt/movierec \
 && rm /usr/local/bin/uv \
 && if [ -n "${MOVIELENS_DATASET}" ]; then \
      python -c "import sys; from components.movielens_example_gen import movielens; \
print(movielens.fetch_dataset(sys.argv[1], '/opt/movierec/data'))" "${MOVIELENS_DATASET}"; \
    fi \
 && python -c "import tfx, tensorflow, kfp.pipeline_spec, pipeline.kubeflow, trainer.run"

# TFX's Kubeflow V2 runner sets each task's command (python -m
# tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor); by hand:
#   docker run --rm movierec:0.1.0 movierec run \
#     --data-dir /opt/movierec/data/ml-100k --output-dir /tmp/output
CMD ["movierec", "--help"]
