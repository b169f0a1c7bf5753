# The FCP container: a static flarego on an empty base, the job with only
# its encrypted architecture, no key (FCP mounts it at run time), non-root.
#
# Built by `make image KEY=FILE [SPEC=FILE] [IMAGE=NAME:TAG]` (scripts/image.sh),
# which encrypts the architecture with the key, builds the binary with the
# local Go and stages the build context (out/image/); nothing is pulled.
# Dockerfile.multistage builds the binary in golang:1.26 instead, for
# machines with a registry.
FROM scratch
ARG VERSION=dev
ARG SOURCE=https://github.com/flarego/flarego
LABEL org.opencontainers.image.title="flarego" \
      org.opencontainers.image.description="Federated pneumonia model with an encrypted architecture and weights (NVFlare-compatible)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}"
COPY flarego /flarego
COPY job/pneumonia/config /app/config
COPY job/pneumonia/custom/network.json.enc /app/custom/network.json.enc
USER 5642:5642
WORKDIR /app
# unseal checks every *.enc against the FCP key (in memory, nothing written),
# then runs the FCP command.
ENTRYPOINT ["/flarego", "unseal", "/app", "--"]
CMD ["/flarego", "client", "-m", "/workspace", "-s", "fed_client.json", "--job", "/app", "--set", "secure_train=true"]
