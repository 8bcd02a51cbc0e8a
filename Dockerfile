# mirrord-operator image: `mirrord-operator` for every subcommand (certs, webhook, agent) and the
# agent-only `mirrord-agent` that `mirrord-operator agent` execs (~2 MiB less resident per pod).
#
#   docker build -t mirrord-operator:dev .
#
# Build stage: musl target, so the binary is fully static (ring's C/asm builds with musl-gcc).
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin mirrord-operator --bin mirrord-agent \
    && strip target/release/mirrord-operator target/release/mirrord-agent

# Runtime: Alpine because the agent's iptables mode runs `iptables`/`ip6tables` (nf_tables
# backend), and the coordinator's HTTPS clients (SQS queue splitting) trust the system CA bundle.
FROM alpine:3.22
RUN apk add --no-cache iptables ip6tables ca-certificates \
    && addgroup -g 30777 mirrord-agent
COPY --from=build /src/target/release/mirrord-operator /src/target/release/mirrord-agent /usr/local/bin/
# uid 0 with only the capabilities the pod grants (the webhook drops ALL and adds NET_ADMIN for
# iptables mode): Kubernetes gives a non-root process no effective capabilities, and
# allowPrivilegeEscalation=false blocks file capabilities. The group is the agent's dedicated gid
# (owner-gid exemption of its own traffic). Without iptables the webhook sets runAsNonRoot.
USER 0:30777
ENTRYPOINT ["/usr/local/bin/mirrord-operator"]
