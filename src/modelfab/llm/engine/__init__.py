"""The language-model engine of a replica: continuous batching, many LoRA adapters on one
base, token streams with exact counts. `Engine` is the seam; `TransformersEngine` runs
on a CPU (and CUDA); `EngineDriver` runs any engine's steps in a background thread for an
asyncio server. Torch and transformers: replicas only."""

from modelfab.llm.engine.base import (
    ENGINE_KINDS,
    Engine,
    SupportsAdapters,
    load_engine,
    register_engine,
)
from modelfab.llm.engine.driver import EngineDriver
from modelfab.llm.engine.stream import RequestStream
from modelfab.llm.engine.transformers_engine import EngineConfig, TransformersEngine
from modelfab.llm.engine.types import (
    AdapterNotFound,
    AdapterRefused,
    AdapterResidency,
    BadParameter,
    ContextTooLong,
    EngineOverloaded,
    EngineStats,
    Finished,
    FinishReason,
    SamplingParams,
    StreamEvent,
    TokenDelta,
)

register_engine("transformers", TransformersEngine.load)

__all__ = [
    "ENGINE_KINDS",
    "AdapterNotFound",
    "AdapterRefused",
    "AdapterResidency",
    "BadParameter",
    "ContextTooLong",
    "Engine",
    "EngineConfig",
    "EngineDriver",
    "EngineOverloaded",
    "EngineStats",
    "FinishReason",
    "Finished",
    "RequestStream",
    "SamplingParams",
    "StreamEvent",
    "SupportsAdapters",
    "TokenDelta",
    "TransformersEngine",
    "load_engine",
    "register_engine",
]
