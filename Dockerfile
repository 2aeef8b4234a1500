# syntax=docker/dockerfile:1
# Automa: one image for `automa serve` and `automa agent`. Build: docker build -t automa .
# The sandbox needs more than Docker's defaults allow; see docs/deployment.md ("Containers") before running
# the embedded agent or `automa agent` in a container.

FROM rust:1.95-slim-bookworm AS build
# aws-lc-sys (rustls' crypto) builds C with cmake; the rest is pure Rust.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake make perl pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p automa \
 && install -m 0755 target/release/automa /usr/local/bin/automa

FROM debian:bookworm-slim
# python3: what runs execute. slirp4netns: networked runs in the strict sandbox. tini: PID 1 that forwards
# SIGTERM to automa (which hands its runs back) and reaps orphans.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 slirp4netns tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 automa \
 && useradd --system --uid 10001 --gid automa --home-dir /var/lib/automa --create-home automa
COPY --from=build /usr/local/bin/automa /usr/local/bin/automa
USER automa
WORKDIR /var/lib/automa
ENV AUTOMA_DATA_DIR=/var/lib/automa \
    AUTOMA_BIND=0.0.0.0:8080 \
    AUTOMA_PYTHON=/usr/bin/python3
VOLUME ["/var/lib/automa"]
EXPOSE 8080
# /ready checks the database too; python3 is in the image anyway, curl is not.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python3", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/ready', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/automa"]
CMD ["serve"]
