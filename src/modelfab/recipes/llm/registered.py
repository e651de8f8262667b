"""A registered chat model version as a loadable model: its artifacts fetched (each
sha256-checked, by `modelfab.artifacts.fetch_folder`) into a folder under their names,
then loaded whole (kind "full") or as its hub base model with the LoRA adapter merged in
(kind "lora"), as its `model.json` says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from modelfab.errors import ChatModelInvalid
from modelfab.hub.chat import chat_model_folder
from modelfab.llm.models import load_chat_model
from modelfab.llm.tokenizer import ChatTokenizer, load_tokenizer
from modelfab.recipes.llm.finetune import MODEL_JSON


def load_registered(
    folder: Path, *, hub_dir: Path | None, device: str | torch.device = "cpu", param: str
) -> tuple[PreTrainedModel, ChatTokenizer, dict[str, Any]]:
    """The model (eval mode, on `device`), tokenizer and `model.json` of a registered chat
    model's folder. A LoRA version is its hub base model (`base_model.hub`) with the adapter
    merged. Raises ChatModelInvalid (param `param`) for a folder that is not a chat model or
    whose base model is not in this node's hub."""
    try:
        contract = json.loads((folder / MODEL_JSON).read_text())
    except (OSError, ValueError) as exc:
        raise ChatModelInvalid(
            f"the registered model has no readable {MODEL_JSON}; register it again from "
            "llm-finetune or llm-distill",
            param=param,
        ) from exc
    kind = contract.get("kind")
    if kind == "full":
        model, tokenizer = load_chat_model(folder, device=device)
        return model, tokenizer, contract
    base = (contract.get("base_model") or {}).get("hub")
    if kind != "lora" or not isinstance(base, str) or hub_dir is None:
        raise ChatModelInvalid(
            f"the registered model's {MODEL_JSON} says kind {kind!r} with base model "
            f"{contract.get('base_model')!r}; only full models and LoRA adapters of a hub "
            "model load here",
            param=param,
        )
    from peft import PeftModel

    model, _ = load_chat_model(chat_model_folder(hub_dir, base), device=device)
    merged = PeftModel.from_pretrained(model, folder).merge_and_unload()
    merged.eval()
    return merged, load_tokenizer(folder), contract
