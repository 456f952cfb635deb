# JupyterLab with the course installed by the README's own set-up (make setup).
# It runs as the non-root user "student": Jupyter refuses to start as root.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make git \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 student && install -d -o student -g student /course
USER student
WORKDIR /course
COPY --chown=student:student requirements.txt pyproject.toml Makefile ./
COPY --chown=student:student autograder ./autograder
COPY --chown=student:student eurosat ./eurosat
RUN make setup
COPY --chown=student:student . .
# data/ exists in the image, so the named volume mounted on it starts out owned by the student too.
RUN make setup && mkdir -p data
ENV PATH=/course/.venv/bin:$PATH
EXPOSE 8888
CMD ["make", "lab", "LAB_IP=0.0.0.0"]
