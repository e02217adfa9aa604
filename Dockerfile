# One image for every fedcredit organisation; the command picks the role.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/fedcredit
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY common ./common
COPY world ./world
COPY node ./node
COPY consent ./consent
COPY ledger ./ledger
COPY coordinator ./coordinator
COPY training ./training
COPY clients ./clients
COPY fedcredit ./fedcredit
RUN pip install . && useradd --system --uid 10001 fedcredit
USER fedcredit
WORKDIR /srv
ENTRYPOINT ["fedcredit"]
CMD ["--help"]
