# The allocator's image: the package and its console script, pinned to the tested versions.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY schemas ./schemas
COPY eventlog ./eventlog
COPY governors ./governors
COPY book ./book
COPY allocator ./allocator
COPY cli ./cli
COPY projections ./projections
COPY migrations ./migrations
COPY simulation ./simulation
RUN pip install --no-cache-dir -c constraints.txt . && useradd --uid 1000 --create-home allocator
USER allocator
ENTRYPOINT ["allocator"]
