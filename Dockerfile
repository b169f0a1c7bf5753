# The FCP container: a static flarego on an empty base, the job with only
# its encrypted architecture, no key (FCP mounts it at run time), non-root.
#
# Before building, encrypt the architecture with the job's key:
#   flarego encrypt testdata/pneumonia_spec.json KEYFILE job/pneumonia/custom/network.json.enc
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOEXPERIMENT=simd go build -trimpath -ldflags "-s -w" -o /out/flarego ./worker

FROM scratch
COPY --from=build /out/flarego /flarego
COPY job/pneumonia/config /app/config
COPY job/pneumonia/custom/network.json.enc /app/custom/network.json.enc
USER 5642:5642
WORKDIR /app
# unseal checks every *.enc against the FCP key (in memory, nothing written),
# then runs the FCP command.
ENTRYPOINT ["/flarego", "unseal", "/app", "--"]
CMD ["/flarego", "client", "-m", "/workspace", "-s", "fed_client.json", "--job", "/app", "--set", "secure_train=true"]
