"""`ChatModel`: the served-model kind of the `chat` task. A registered chat version runs in
one `TransformersEngine` (continuous batching) stepped by an `EngineDriver` thread:

- kind "full" (model.json): the version's own weights are the engine's base;
- kind "lora": its hub base (`base_model.hub`, from this node's hub folder) is the base and
  the version is registered as a pinned adapter, named by the version id.

A chat model answers `generate` (the replica's `/models/{version}/generate` route streams
it); the image path of the protocol (`prepare`/`infer`/`result`) refuses with a pointer to
`/v1/chat/completions`. Torch and transformers: replicas only.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from modelfab.errors import InvalidRequest
from modelfab.hub.chat import chat_model_folder
from modelfab.llm.encoding import render_chat
from modelfab.llm.engine import (
    BadParameter,
    EngineConfig,
    EngineDriver,
    Finished,
    RequestStream,
    SamplingParams,
    TransformersEngine,
)
from modelfab.schemas.endpoints import AdapterStats, ModelStats
from modelfab.schemas.generation import (
    GenerateDelta,
    GenerateEvent,
    GenerateFinished,
    GenerateRequest,
    GenerateStarted,
)
from modelfab.serving.protocol import LoadOptions, ModelFiles, invalid
from modelfab.tasks.chat import NAME as CHAT

logger = logging.getLogger(__name__)

MODEL_JSON = "model.json"
ADAPTER_BUDGET_BYTES = 256 << 20
"""LoRA weights kept loaded per engine (one pinned adapter per version today)."""
WARM_TOKENS = 1


class ChatModel:
    """A chat model version ready to generate. Thread-safe: `generate` and `cancel` may be
    called from any thread (the driver steps the engine in its own)."""

    task = CHAT
    slow_results = False

    def __init__(
        self,
        version_id: str,
        engine: TransformersEngine,
        *,
        adapter: str | None,
        size_bytes: int,
        max_batch_size: int,
    ):
        self.version_id = version_id
        self.engine = engine
        self.adapter = adapter
        self.size_bytes = size_bytes
        self.max_batch_size = max_batch_size
        self.driver = EngineDriver(engine, name=f"llm-{version_id}").start()

    @classmethod
    def load(cls, files: ModelFiles, options: LoadOptions) -> ChatModel:
        """The engine over the version's weights, or over its hub base with the version as
        an adapter. Blocks (loads weights). Raises ModelfabError "model_invalid" when
        model.json is missing or names a base this node's hub lacks."""
        folder = _folder_of(files)
        contract = _contract(files, folder)
        config = EngineConfig(
            max_concurrency=options.max_batch_size, adapter_budget_bytes=ADAPTER_BUDGET_BYTES
        )
        device = "cuda" if options.use_cuda else "cpu"
        if contract.get("kind") == "full":
            engine = TransformersEngine.load(folder, config=config, device=device)
            return cls(
                files.version_id,
                engine,
                adapter=None,
                size_bytes=_weights_bytes(folder),
                max_batch_size=options.max_batch_size,
            )
        base = _hub_base(files, contract, options.hub_dir)
        engine = TransformersEngine.load(
            base, base_name=base.parent.name, config=config, device=device
        )
        engine.register_adapter(files.version_id, folder, pinned=True)
        return cls(
            files.version_id,
            engine,
            adapter=files.version_id,
            size_bytes=_weights_bytes(base) + _weights_bytes(folder),
            max_batch_size=options.max_batch_size,
        )

    # generation

    def generate(self, request: GenerateRequest) -> tuple[str, AsyncIterator[GenerateEvent]]:
        """Queue `request`: its request id and its events (GenerateStarted, deltas, then
        one GenerateFinished with the engine's counts). Raises the engine's errors at once:
        BadParameter / ContextTooLong / AdapterRefused (400), AdapterNotFound (404),
        EngineOverloaded (429)."""
        prompt = self._prompt_ids(request)
        stream = self._submit(prompt, request)
        return stream.request_id, _wire_events(len(prompt), stream)

    def _prompt_ids(self, request: GenerateRequest) -> list[int]:
        """The prompt's token ids: raw text encoded, or the chat rendered with the model's
        template and its generation prompt (what the engine does with messages; done here
        so the count is known before the first token)."""
        tokenizer = self.engine.tokenizer
        if request.prompt is not None:
            return tokenizer.encode(request.prompt)
        try:
            text = render_chat(tokenizer, request.messages or [], add_generation_prompt=True)
        except ValueError as exc:
            raise BadParameter(
                f"the model's chat template refuses the messages: {exc}", "messages"
            ) from exc
        return tokenizer.encode(text)

    def _submit(self, prompt: list[int], request: GenerateRequest) -> RequestStream:
        params = SamplingParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=tuple(request.stop),
            seed=request.seed,
        )
        return self.driver.submit(prompt_ids=prompt, params=params, adapter=self.adapter)

    def cancel(self, request_id: str) -> bool:
        """End the request now (the client left): its slot frees at the next step. False
        when it had ended already."""
        return self.driver.cancel(request_id)

    def stats(self) -> ModelStats:
        """The engine's figures (`EngineStats`) as the replica reports them. Never blocks
        on a step."""
        now = self.driver.stats()
        return ModelStats(
            version_id=self.version_id,
            queue_depth=now.queue_depth,
            running=now.running,
            max_concurrency=now.max_concurrency,
            tokens_per_s=round(now.tokens_per_s, 3),
            window_s=now.window_s,
            generated_tokens=now.generated_tokens,
            prompt_tokens=now.prompt_tokens,
            adapter_budget_bytes=now.adapter_budget_bytes,
            adapters=[
                AdapterStats(
                    name=a.name, loaded=a.loaded, pinned=a.pinned, bytes=a.bytes, running=a.running
                )
                for a in now.adapters
            ],
        )

    def warm(self) -> None:
        """One token through the engine (and the adapter's first load). Blocks."""
        warm = GenerateRequest(prompt="hi", max_tokens=WARM_TOKENS, temperature=0.0)
        self._submit(self._prompt_ids(warm), warm).wait(timeout=120)

    def close(self) -> None:
        """Stop the step thread; live requests end with "error"."""
        self.driver.stop()

    # the image path of the protocol: not for chat models

    def check_options(self, options: Mapping[str, str]) -> None:
        raise _not_predict()

    def prepare(self, item: Any) -> Any:
        raise _not_predict()

    def infer(self, items: Sequence[Any]) -> list[Any]:
        raise _not_predict()

    def result(self, raw: Any, options: Mapping[str, str]) -> dict[str, Any]:
        raise _not_predict()


async def _wire_events(prompt_tokens: int, stream: RequestStream) -> AsyncIterator[GenerateEvent]:
    """The engine's events as the replica sends them to the gateway."""
    yield GenerateStarted(prompt_tokens=prompt_tokens)
    async for event in stream:
        if isinstance(event, Finished):
            yield GenerateFinished(
                finish_reason=event.finish_reason,
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                error=event.error,
            )
        else:
            yield GenerateDelta(text=event.text, tokens=len(event.token_ids))


def _not_predict() -> InvalidRequest:
    return InvalidRequest(
        "this endpoint serves a chat model: send POST /v1/chat/completions or /v1/completions "
        'with "model" set to the endpoint\'s name',
        param="model",
    )


def _folder_of(files: ModelFiles) -> Path:
    """The version's artifacts under their names in one folder (symlinks to the verified
    files), as transformers and peft load a folder."""
    folder = Path(tempfile.mkdtemp(prefix=f"chat-{files.version_id}-"))
    for name, path in files.paths.items():
        if "/" in name or name.startswith("."):
            raise invalid(files, f"its artifact name {name!r} is not a plain file name")
        (folder / name).symlink_to(path.resolve())
    return folder


def _contract(files: ModelFiles, folder: Path) -> dict[str, Any]:
    try:
        contract = json.loads((folder / MODEL_JSON).read_text())
    except (OSError, ValueError) as exc:
        raise invalid(files, f"it has no readable {MODEL_JSON}") from exc
    if not isinstance(contract, dict) or contract.get("kind") not in ("full", "lora"):
        raise invalid(files, f"its {MODEL_JSON} names no kind full or lora")
    return contract


def _hub_base(files: ModelFiles, contract: dict[str, Any], hub_dir: Path | None) -> Path:
    """The folder of a LoRA version's hub base model on this node."""
    lineage = contract.get("base_model")
    base = lineage.get("hub") if isinstance(lineage, dict) else None
    if not isinstance(base, str) or not base:
        raise invalid(files, f"its {MODEL_JSON} names no hub base model (base_model.hub)")
    if hub_dir is None:
        raise invalid(files, f"this replica has no hub folder to load its base {base!r} from")
    return chat_model_folder(hub_dir, base)


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))
