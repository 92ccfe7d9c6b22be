# The example chat service (webapi-example) for docker-compose.yml and
# deploy/k8s. Build from the repository root:
#   docker build -f deploy/webapi-example.Dockerfile -t imbroker/webapi-example .
# The root Dockerfile builds the imserver node.
FROM golang:1.25 AS build
WORKDIR /src
# The example is a module of its own whose go.mod replaces the library with
# ../ (the repository root), so it builds from its own directory without
# the workspace.
ENV GOWORK=off
COPY go.mod go.sum ./
COPY webapi-example/go.mod webapi-example/go.sum ./webapi-example/
RUN cd webapi-example && go mod download
COPY . .
RUN cd webapi-example && CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags="-s -w" -o /out/webapi-example .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/webapi-example /webapi-example
USER nonroot:nonroot
EXPOSE 8080
# The default, 127.0.0.1:8080, is unreachable from outside the container.
# With IM_REDIS_URL unset it starts its own in-memory Redis and node (a
# demo in one container); the compose file and the manifests set it.
ENV WEBAPI_ADDR=:8080
ENTRYPOINT ["/webapi-example"]
