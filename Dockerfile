# syntax=docker/dockerfile:1
# The relay's container image. Build: docker build -t outbox-relay .
#
# Build stage: the release binary, exactly as locked.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p outbox-relay --bin outbox-relay

# Runtime stage: a small Debian with the binary, its settings, the
# certificate authorities for TLS, and curl for the health check.
FROM debian:bookworm-slim
# Versions are not pinned: bookworm's security updates replace them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin relay
COPY --from=build /src/target/release/outbox-relay /usr/local/bin/outbox-relay
COPY config/outbox-relay.example.toml /etc/outbox-relay/config.toml

# Settings: the file above, then OUTBOX_RELAY__<SECTION>__<KEY> variables.
# Logs are JSON lines for the container's log collector.
ENV OUTBOX_RELAY_CONFIG=/etc/outbox-relay/config.toml \
    OUTBOX_RELAY__LOG__FORMAT=json \
    OUTBOX_RELAY__HTTP__LISTEN=0.0.0.0:9187

USER 10001
EXPOSE 9187

# Healthy means ready: subscribed to the consumer group and PostgreSQL
# reachable. The port is the default http.listen; change both together.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9187/health/ready"]

ENTRYPOINT ["outbox-relay"]
CMD ["run"]
