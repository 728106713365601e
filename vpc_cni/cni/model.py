"""The base of every CNI JSON model: camelCase keys, unknown keys ignored, null = absent.

Runtimes are written in Go, where a nil slice or map marshals as ``null``: containerd
(through go-cni) can pass ``"portMappings": null`` for a pod without hostPorts, and Go
readers take ``null`` as the zero value. Treating it as an absent key gives every field its default
(or a "field required" error) instead of a type error on valid input.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel


class CniModel(BaseModel):
    """Parent of the config and result models."""

    model_config = ConfigDict(populate_by_name=True, alias_generator=to_camel, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_means_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data
