FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY registry registry
COPY templates templates
COPY deploy deploy
RUN pip install --no-cache-dir .

# The gateway listens on every interface inside the container; Redis comes from the env.
ENV GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8007 \
    GATEWAY_DATA_DIR=/data
EXPOSE 8007
CMD ["llm-gateway", "serve"]
