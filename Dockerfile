# One image for both services and the standalone dispatcher; the command picks the role.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
RUN pip install --no-cache-dir . && useradd --system --uid 10001 cicatrix
USER cicatrix
EXPOSE 8081 8082
# Production applies migrations explicitly (`cicatrix migrate`) before the services start.
ENV CATALOG_AUTO_MIGRATE=false CAREPLAN_AUTO_MIGRATE=false
CMD ["cicatrix", "serve", "catalog"]
