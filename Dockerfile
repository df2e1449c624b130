# One trusted-space connector node: `trusted-space node serve`, its directory in a volume.
#
#   docker build -t trusted-space .
#   docker run -e NODE_NAME=city-centre -e NODE_ROLES=operator \
#       -e PUBLIC_URL=https://ts.city.example -p 8700:8700 -v ts-node:/var/lib/trusted-space \
#       trusted-space
#
# The first start creates the node directory (`node init`, see deploy/entrypoint.sh); later starts
# reuse it. Dependencies are installed at the exact versions of constraints.txt, as `make` does.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/trusted-space
COPY pyproject.toml constraints.txt README.md ./
COPY crypto ./crypto
COPY trusted_space ./trusted_space
COPY connectors ./connectors
RUN python -m pip install -c constraints.txt . \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/trusted-space \
        trusted-space
COPY --chmod=0755 deploy/entrypoint.sh /usr/local/bin/trusted-space-entrypoint

USER trusted-space
ENV NODE_DIR=/var/lib/trusted-space/node
VOLUME ["/var/lib/trusted-space"]
EXPOSE 8700

# GET /healthz on the node's own port, with the node's own TLS settings when it has them.
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=5 \
    CMD ["trusted-space-entrypoint", "health"]

ENTRYPOINT ["trusted-space-entrypoint"]
CMD ["serve"]
