"""The peer of ``benchmarks/hub_requests.py``: a bare FastAPI endpoint, as FastAPI's own
tutorial writes one (a plain ``def`` returning a dict)."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
def health() -> dict:
    return {"status": "ok"}
