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


class HealthResponse(BaseModel):
    status: Literal["ok"]
    backend: Literal["torch", "onnx"]
    method: str
    model_id: str
    uptime_s: float
    requests_served: int
    requests_rejected: int = Field(description="requests answered with a 4xx")
    requests_failed: int = Field(description="requests the model failed on (500)")
    images_scored: int
    batching: Batching
