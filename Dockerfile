# SendInChat gRPC server. Build: docker build -t sendinchat .
# Run:   docker run -p 50051:50051 -e DATABASE_URL=postgresql://... -e SENDINCHAT_JWT_SECRET=... sendinchat
# Without DATABASE_URL the server starts its embedded PostgreSQL under /data (a volume).

FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"
# Dependencies are pinned in pyproject.toml; copy only what the install needs.
COPY pyproject.toml README.md ./
COPY server ./server
COPY clients ./clients
RUN pip install --no-cache-dir .


FROM python:3.11-slim-bookworm AS runtime

ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SENDINCHAT_ADDRESS=0.0.0.0:50051 \
    SENDINCHAT_METRICS_ADDRESS=0.0.0.0:9464 \
    SENDINCHAT_DATA_DIR=/data

RUN groupadd --system --gid 10001 sendinchat \
    && useradd --system --uid 10001 --gid sendinchat --home-dir /app --shell /usr/sbin/nologin sendinchat \
    && mkdir -p /data \
    && chown sendinchat:sendinchat /data

# The venv holds the installed server and stubs (migrations and the descriptor set are package
# data); no source is copied, so there is exactly one copy of the code in the image.
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app

USER 10001:10001
VOLUME ["/data"]
EXPOSE 50051 9464

# grpc.health.v1 Check on the local port, plaintext or TLS as the server is configured: exit 0
# only when the server says SERVING. With a CA-issued certificate, override it with
# `python -m server healthcheck --ca-file CA.pem --server-name NAME`.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "server", "healthcheck"]

CMD ["python", "-m", "server"]
