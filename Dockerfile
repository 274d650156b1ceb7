# syntax=docker/dockerfile:1
# Build stage: the release binary, exactly as locked.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin outbox-relay

# Runtime stage: a small Debian with only the binary and its settings.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home relay
COPY --from=build /src/target/release/outbox-relay /usr/local/bin/outbox-relay
COPY config/outbox-relay.example.toml /etc/outbox-relay/config.toml
ENV OUTBOX_RELAY_CONFIG=/etc/outbox-relay/config.toml \
    OUTBOX_RELAY__LOG__FORMAT=json
USER relay
ENTRYPOINT ["outbox-relay"]
CMD ["run"]
