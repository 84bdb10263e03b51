# A stand-in for python:3.11-slim where no image registry is reachable: Debian bookworm's own
# Python 3.11 (apt) in a virtual environment on PATH, so `python` and `pip` behave as in the
# official image. The Debian root file system comes from debootstrap (scripts/docker_local.sh):
#     docker build -f docker/base.Dockerfile --build-arg DEBIAN_IMAGE=local/bookworm:min \
#         -t local/python:3.11-slim docker
# then docker/Dockerfile builds on it with --build-arg BASE_IMAGE=local/python:3.11-slim.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
ENV PATH=/usr/local/python/bin:$PATH LANG=C.UTF-8
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && python3.11 -m venv /usr/local/python \
    && ln -s /usr/local/python/bin/python /usr/local/bin/python
CMD ["python3"]
