# Switchyard's container image: a release build on Debian 12 (bookworm), run on
# distroless cc-debian12 (glibc + libgcc, no shell, no package manager) as uid 65532.
#
#   docker build -t switchyard .
#   docker run --rm -p 8080:8080 -p 9901:9901 \
#     -v "$PWD/my-config:/etc/switchyard:ro" switchyard
#
# The builder and the runtime are both Debian 12, so the binary links against the same
# glibc it runs with.

# --- builder ---------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
# No extra packages: rustls' crypto provider is aws-lc-rs, and aws-lc-sys (0.47, in
# Cargo.lock) builds with the `cc` crate and ships pre-generated bindings for x86_64 and
# aarch64 Linux, so the image's gcc is all it needs: no cmake, no clang/bindgen. (A FIPS
# build, another target or AWS_LC_SYS_CMAKE_BUILDER=1 would need `apt-get install cmake
# clang` here.)
WORKDIR /src

# Dependencies in a layer of their own: the manifest and lock file, and stub targets
# (Cargo.toml names the benches, so they must exist too). This layer is rebuilt only when
# Cargo.toml or Cargo.lock change. A stub build rather than BuildKit cache mounts because
# it caches in the image layers themselves: it works on any builder (the classic one,
# BuildKit, Buildah/Podman, kaniko) and a CI can share it with --cache-from, where a cache
# mount lives only on the machine that made it.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/pick.rs \
 && echo 'fn main() {}' > benches/reload.rs \
 && cargo build --release --locked \
 && rm -rf src benches \
 # Forget the stub's own crate (its fingerprints too), so the real sources always
 # rebuild it whatever their file times.
 && rm -rf target/release/switchyard target/release/deps/switchyard-* \
      target/release/deps/libswitchyard-* target/release/.fingerprint/switchyard-*

# The real build: only the sources reach this layer (see .dockerignore).
COPY src src
COPY benches benches
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/switchyard /out/switchyard

# --- runtime ---------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/switchyard /usr/local/bin/switchyard
# A default config for a lone container (0.0.0.0, admin on 9901); mount your own over
# /etc/switchyard (the folder: hot reload watches it, see docs/deploy.md).
COPY deploy/routes.container.yaml /etc/switchyard/routes.yaml
# The distroless `nonroot` user, by number so that runAsNonRoot checks can see it.
USER 65532:65532
# web (HTTP), websecure (HTTPS, with a mounted certificate), admin (/healthz, /ready,
# /metrics, /status).
EXPOSE 8080 8443 9901
# No curl in a distroless image: the binary probes its own admin /healthz (2s timeout).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/switchyard", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/switchyard"]
CMD ["run", "--config", "/etc/switchyard/routes.yaml"]
