# The image students get: built from the student pack (`course student-pack`), so it holds no
# solutions, hidden tests or reference implementations. Stage 1 makes the pack from this
# repository; stage 2 starts from a clean base and installs only the pack (no layer of it
# ever held source/). It runs as the non-root user "student": Jupyter refuses to start as root.
FROM python:3.11-slim AS pack
RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make setup && .venv/bin/course student-pack /pack

FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 student && install -d -o student -g student /course
USER student
WORKDIR /course
COPY --from=pack --chown=student:student /pack .
# data/ exists in the image, so the named volume mounted on it starts out owned by the student too.
RUN make setup && mkdir -p data
ENV PATH=/course/.venv/bin:$PATH
EXPOSE 8888
CMD ["make", "lab", "LAB_IP=0.0.0.0"]
