# redis-cache-plugin container image.
#
#   podman build --target production -t redis-cache-plugin .        # default
#   podman build --target debug -t redis-cache-plugin:debug .       # + busybox shell
#
# Both run as the distroless nonroot user (65532), listen on 9092 and read
# /etc/prism/plugin.yaml (mount your own over it, or set REDIS_* / VAULT_*).
# The binary is its own health probe: there is no shell, curl or grpcurl.

ARG RUST_VERSION=1.90

# --- builder: the release binary, dependencies cached in their own layer ---
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# Dependencies change less often than the code: build them against stub
# sources first, so a change under src/ reuses this layer. protoc is vendored
# (protoc-bin-vendored), so no system package is needed.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
# COPY keeps the files' old mtimes; touch so cargo rebuilds the crate itself.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && install -D -m 0755 target/release/redis-cache-plugin /out/redis-cache-plugin

# --- debug: the same, on the :debug-nonroot variant with a busybox shell ---
FROM gcr.io/distroless/cc-debian12:debug-nonroot AS debug
COPY --from=builder /out/redis-cache-plugin /usr/local/bin/redis-cache-plugin
COPY config.yaml /etc/prism/plugin.yaml
ENV PRISM_PLUGIN_CONFIG=/etc/prism/plugin.yaml
USER 65532:65532
EXPOSE 9092
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/redis-cache-plugin", "health"]
ENTRYPOINT ["/usr/local/bin/redis-cache-plugin"]
CMD ["serve"]

# --- production (the default target): distroless, nonroot, no shell ---
FROM gcr.io/distroless/cc-debian12:nonroot AS production
COPY --from=builder /out/redis-cache-plugin /usr/local/bin/redis-cache-plugin
COPY config.yaml /etc/prism/plugin.yaml
ENV PRISM_PLUGIN_CONFIG=/etc/prism/plugin.yaml
USER 65532:65532
EXPOSE 9092
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/redis-cache-plugin", "health"]
ENTRYPOINT ["/usr/local/bin/redis-cache-plugin"]
CMD ["serve"]
