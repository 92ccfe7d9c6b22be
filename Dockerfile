# Multi-stage build of one imserver node: a static binary on a distroless,
# non-root base.
FROM golang:1.25 AS build
WORKDIR /src
# The node is built from the library module alone, not the workspace that
# also holds the example.
ENV GOWORK=off
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The version shown by `imserver -version`, the startup log and
# im_build_info: docker build --build-arg VERSION=v0.5.0 .
ARG VERSION=devel
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false \
    -ldflags="-s -w -X github.com/imbroker/imbroker/internal/version.Version=${VERSION}" \
    -o /out/imserver ./imserver/cmd/imserver
# imctl rides along so an operator can run it inside a pod:
# kubectl exec imserver-0 -- /imctl nodes
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false \
    -ldflags="-s -w -X github.com/imbroker/imbroker/internal/version.Version=${VERSION}" \
    -o /out/imctl ./imctl

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/imserver /imserver
COPY --from=build /out/imctl /imctl
USER nonroot:nonroot
EXPOSE 6001
# Configure with IM_* variables, e.g. IM_REDIS_URL, IM_PUBLIC_URL, IM_NODE_ID.
ENV IM_LISTEN=:6001
ENTRYPOINT ["/imserver"]
