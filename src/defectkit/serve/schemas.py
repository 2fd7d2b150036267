"""Response shapes of the service, for validation and the OpenAPI docs (pydantic, imported by create_app)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field


class Result(BaseModel):
    filename: str
    score: float = Field(description="the method's score: a defect probability (methods with a logit) or an anomaly score")
    decision: Literal["defective", "good"]
    defective: bool
    threshold: float = Field(description="decision threshold in the units of score")
    logit: Optional[float] = Field(None, description="the decision logit (the decision compares it with the raw threshold); null for methods without one")
    width: int
    height: int
    heatmap_png: Optional[str] = Field(None, description="base64 PNG at the image's size, when heatmap=overlay or map was asked")


class PredictResponse(BaseModel):
    model_id: str = Field(description="first 16 hex digits of the sha256 of the weights file")
    backend: Literal["torch", "onnx"]
    method: str
    threshold: float
    results: list[Result]


class Batching(BaseModel):
    max_batch: int
    batch_wait_ms: float
    batches: int
    images: int
    largest_batch: int
    mean_batch: float
    batch_sizes: dict[str, int] = Field(description="batch size -> how many batches of that size ran")


class Pixels(BaseModel):
    in_flight: int = Field(description="decoded pixels reserved by requests now")
    max_in_flight: int = Field(description="the budget (max_pixels_in_flight); a request that does not fit waits, then gets 503 busy")
    peak_in_flight: int = Field(description="the most pixels reserved at once since the start")
    requests_waiting: int = Field(description="requests waiting for room in the budget now")


class HealthResponse(BaseModel):
    status: Literal["ok", "unhealthy"] = Field(description="ok (HTTP 200), or unhealthy (HTTP 503) once the model gave a non-finite score")
    problem: Optional[str] = Field(None, description="why the service is unhealthy; null when ok")
    backend: Literal["torch", "onnx"]
    method: str
    model_id: str
    uptime_s: float
    requests_served: int
    requests_rejected: int = Field(description="requests answered with a 4xx")
    requests_busy: int = Field(description="requests answered 503 busy: no room in the pixel budget in time")
    requests_failed: int = Field(description="requests the model failed on (500, or 503 for a non-finite score)")
    requests_timed_out: int = Field(description="requests whose body did not arrive in time (408)")
    clients_disconnected: int = Field(description="requests whose client went away before the answer")
    images_scored: int
    pixels: Pixels
    batching: Batching
