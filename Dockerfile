# Portcullis: a static, stripped binary on an empty base.
#
#   docker build -t portcullis .        (or podman build --format docker -t portcullis .)
#
# Where no base image can be pulled, deploy/build-image.sh builds the binary on the host and
# assembles the same final stage from it: it hands its own folder in as the `rootfs` stage
# (`--build-context rootfs=...`), so the `build` stage below never runs.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The commit for `portcullis --version` (there is no .git in the build context).
ARG PORTCULLIS_COMMIT=unknown
ENV PORTCULLIS_COMMIT=${PORTCULLIS_COMMIT}
# glibc, statically linked: the project's one toolchain target, no C cross-toolchain, and
# glibc's own resolver (since 2.34 its files and dns lookups are part of libc, so a static
# binary resolves `postgres` in compose or a Service name in Kubernetes with nothing else).
RUN RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --profile dist --locked --target x86_64-unknown-linux-gnu --bin portcullis
# The final stage's files, laid out as deploy/build-image.sh lays them out.
RUN mkdir -p /rootfs/etc/ssl/certs /rootfs/data \
    && cp target/x86_64-unknown-linux-gnu/dist/portcullis /rootfs/portcullis \
    && cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ \
    && cp deploy/image/passwd deploy/image/group /rootfs/etc/

FROM scratch AS rootfs
COPY --from=build /rootfs/ /

FROM scratch AS runtime
ARG VERSION=0.2.0
ARG PORTCULLIS_COMMIT=unknown
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="Portcullis" \
      org.opencontainers.image.description="Email/password authentication service: JWT access tokens, refresh-token sessions, roles, TOTP and passkeys" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${PORTCULLIS_COMMIT}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
COPY --from=rootfs /portcullis /portcullis
COPY --from=rootfs /etc /etc
# /data belongs to the service's user: the SQLite default lives there.
COPY --from=rootfs --chown=10001:10001 /data /data
USER 10001:10001
WORKDIR /data
ENV PORTCULLIS_PROFILE=production \
    HOST=0.0.0.0 \
    PORT=8000 \
    DATABASE_URL="sqlite:///data/portcullis.db?mode=rwc" \
    DATA_DIR=/data \
    METRICS_LISTEN=0.0.0.0:9464 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/portcullis", "health", "--ready"]
ENTRYPOINT ["/portcullis"]
CMD ["serve"]
