# Builds the liaotian service binaries. Used by docker-compose.yml.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p auth -p gateway -p persister -p admin

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/auth /src/target/release/gateway /src/target/release/persister /src/target/release/admin /usr/local/bin/
