# syntax=docker/dockerfile:1
#
# Flightline's four images from one Dockerfile, one target each:
#
#   docker buildx build --target operator -t ghcr.io/flightline/flightline-operator:dev .
#   docker buildx build --target ingest   -t ghcr.io/flightline/flightline-ingest:dev .   # serve and sink roles
#   docker buildx build --target query    -t ghcr.io/flightline/flightline-query:dev .
#   docker buildx build --target predict  -t ghcr.io/flightline/flightline-predict:dev .
#
# (buildah: `buildah bud --target predict -f Dockerfile .`; both honour the cache mounts below. Image
# names are fully qualified, as buildah/podman want them without a registries.conf search list.)
#
# One builder stage compiles the four binaries together (`--workspace`: the crates share most of
# their dependencies, so building them apart would compile those four times); each final stage
# copies one binary into a distroless image: no shell, no package manager, user 65532 (nonroot).
#
# Why glibc + distroless/cc and not a fully static musl binary:
#   * `rdkafka` compiles the bundled librdkafka (C, mklove ./configure + make) and `ring` compiles C
#     and assembly: both need a C toolchain for the target. With musl that means musl-gcc (apt
#     musl-tools) and a musl build of librdkafka, which is known to be fragile (and musl's malloc
#     slows librdkafka's many small allocations); the glibc build is the one the project tests.
#   * A static glibc binary (`+crt-static`) is no option: librdkafka resolves broker names with
#     getaddrinfo, which under static glibc needs the same glibc's NSS modules at run time.
#   So the binaries link glibc, libm and libgcc_s dynamically — exactly what
#   gcr.io/distroless/cc-debian12 ships — and everything else statically: zlib (rdkafka's `libz`
#   feature) is built from libz-sys's bundled source (LIBZ_SYS_STATIC=1), so that no libz.so is
#   needed at run time (checked: built so, flightline-ingest NEEDs only libc, libm, libgcc_s and the
#   loader; without it, it NEEDs libz.so.1, which distroless/cc does not promise).
#   The builder is Debian 12 (bookworm) like the runtime, so the glibc versions match.
#
# Base images are referenced by tag, not digest: this Dockerfile was written on a machine that cannot
# reach any registry, so no digest could be resolved. Pin them with `@sha256:...` (and let Dependabot
# or Renovate bump them) once a registry is reachable: `docker buildx imagetools inspect <image>`.

# checkov:skip=CKV_DOCKER_2:No HEALTHCHECK: the images run on Kubernetes, which ignores it and probes /healthz and /readyz itself; distroless has no shell or curl to run one.

# ---- builder ---------------------------------------------------------------------------------------
FROM docker.io/library/rust:1.95-bookworm AS builder
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    CARGO_NET_RETRY=5 \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_PROFILE_RELEASE_DEBUG=0 \
    LIBZ_SYS_STATIC=1
# Only what the build reads (see .dockerignore): manifests, lock file, sources, the model the
# predict binary embeds (services/predict/model/) and the dashboards the operator embeds (grafana/).
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY operator ./operator
COPY services ./services
COPY grafana ./grafana
# The registry and the target dir are BuildKit/buildah cache mounts: they survive between builds on
# the same builder but never end up in a layer. The binaries are copied out of the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && cp target/release/flightline-operator target/release/flightline-ingest \
       target/release/flightline-query target/release/flightline-predict /out/

# ---- runtime base ------------------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.source="https://github.com/flightline/flightline" \
      org.opencontainers.image.url="https://github.com/flightline/flightline" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Flightline" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
# distroless' nonroot user; numeric so that runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
WORKDIR /

# ---- operator ----------------------------------------------------------------------------------------
FROM runtime AS operator
LABEL org.opencontainers.image.title="flightline-operator" \
      org.opencontainers.image.description="Kubernetes operator that reconciles FlightPipeline resources"
COPY --from=builder --chown=0:0 --chmod=0755 /out/flightline-operator /usr/local/bin/flightline-operator
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/flightline-operator"]
CMD ["run"]

# ---- ingest (roles `serve` and `sink`) ------------------------------------------------------------------
# The operator's Deployments run `flightline-ingest serve|sink` (found on PATH: /usr/local/bin).
FROM runtime AS ingest
LABEL org.opencontainers.image.title="flightline-ingest" \
      org.opencontainers.image.description="Flight records over HTTP into Kafka, and the sink from Kafka into ClickHouse"
COPY --from=builder --chown=0:0 --chmod=0755 /out/flightline-ingest /usr/local/bin/flightline-ingest
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/flightline-ingest"]
CMD ["serve"]

# ---- query -----------------------------------------------------------------------------------------------
FROM runtime AS query
LABEL org.opencontainers.image.title="flightline-query" \
      org.opencontainers.image.description="Stored flights and delay statistics over HTTP"
COPY --from=builder --chown=0:0 --chmod=0755 /out/flightline-query /usr/local/bin/flightline-query
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/flightline-query"]

# ---- predict (the model is built into the binary) -----------------------------------------------------------
FROM runtime AS predict
LABEL org.opencontainers.image.title="flightline-predict" \
      org.opencontainers.image.description="Flight-delay predictions over HTTP"
COPY --from=builder --chown=0:0 --chmod=0755 /out/flightline-predict /usr/local/bin/flightline-predict
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/flightline-predict"]
