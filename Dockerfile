# Build: a full Rust toolchain; run: a small Debian image, non-root.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin strangler

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/strangler strangler \
    && mkdir -p /etc/strangler/routes /var/lib/strangler \
    && chown strangler /var/lib/strangler
COPY --from=build /src/target/release/strangler /usr/local/bin/strangler
COPY routes /etc/strangler/routes
USER strangler
ENV STRANGLER_ROUTES=/etc/strangler/routes \
    STRANGLER_LISTEN=0.0.0.0:8080 \
    STRANGLER_ADMIN=0.0.0.0:9090 \
    STRANGLER_STATE_DIR=/var/lib/strangler \
    STRANGLER_LOG_FORMAT=json
# Routes are meant to be mounted over /etc/strangler/routes (a ConfigMap).
VOLUME ["/etc/strangler/routes", "/var/lib/strangler"]
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=2s CMD curl -fsS http://127.0.0.1:9090/healthz || exit 1
ENTRYPOINT ["strangler"]
CMD ["run"]
