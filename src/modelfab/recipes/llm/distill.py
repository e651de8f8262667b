"""Distil a chat model into smaller students on the shared `fit` loop.

`distill` holds the whole run and no platform: a teacher (loaded model and tokenizer) and
conversations in, one folder per student out (`StudentOutput`). A student starts as
`prune_layers` of the teacher (evenly spaced decoder layers, first and last kept; the same
tokenizer, embeddings, final norm and head) and learns, on assistant tokens only, the
teacher's temperature-softened token distributions (forward KL or JSD, x T²), mixed with
the plain next-token loss on the answers by `alpha`. The teacher runs under no_grad inside
the step. Each student's report stands beside the teacher's: held-out loss, agreement of
greedy answers on held-out prompts, parameters and greedy tokens/s on this machine.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from modelfab.errors import InvalidRequest
from modelfab.llm.encoding import IGNORE_INDEX, render_chat
from modelfab.llm.models import save_chat_model
from modelfab.llm.tokenizer import ChatTokenizer
from modelfab.recipes.base import Reporter
from modelfab.recipes.llm.data import (
    Batches,
    Conversation,
    auto_batch_size,
    auto_epochs,
    auto_max_length,
    encode_split,
    last_answer,
    split,
)
from modelfab.recipes.llm.finetune import CONTRACT_FORMAT, MODEL_JSON, evaluate
from modelfab.recipes.training.loop import (
    FitResult,
    StepFn,
    StepOptions,
    cosine_with_warmup,
    default_warmup_steps,
    fit,
    make_optimizer,
)

ANSWER_TOKENS = 128
"""Greedy tokens per answer, by default (the recipe passes its `answer_tokens`)."""


@dataclass(frozen=True)
class DistillConfig:
    """Every "auto" of the params resolved."""

    loss: str
    temperature: float
    alpha: float
    teacher_answers: bool
    epochs: int
    lr: float
    batch_size: int
    max_length: int
    val_fraction: float
    seed: int
    patience: int
    samples: int
    answer_tokens: int
    device: str


@dataclass
class StudentOutput:
    layers: int
    kept_layers: list[int]
    folder: Path
    """A full chat-model folder with `model.json`: what to register."""
    metrics: dict[str, Any]
    samples: list[dict[str, str]]
    fit: FitResult


@dataclass
class DistillOutput:
    config: DistillConfig
    teacher: dict[str, Any]
    """The teacher's held-out loss, token accuracy, parameters, layers and greedy
    generation tokens/s (`generate_tokens_per_s`)."""
    students: list[StudentOutput]


# --------------------------------------------------------------------------- pruning


def kept_layer_indices(total: int, keep: int) -> list[int]:
    """`keep` evenly spaced indices of `total` layers, the first and last among them (one
    layer keeps the first). Raises ValueError unless 1 <= keep <= total."""
    if not 1 <= keep <= total:
        raise ValueError(f"cannot keep {keep} of {total} layers")
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def prune_layers(teacher: PreTrainedModel, keep: int) -> tuple[PreTrainedModel, list[int]]:
    """A new model of the teacher's architecture with `keep` decoder layers, holding copies
    of the teacher's evenly spaced layers and all of its other weights (embeddings, final
    norm, head); and the indices kept. The teacher is left as it was. Works for the models
    whose layers live under `model.layers.<i>.` (Llama, Qwen, Mistral, SmolLM...)."""
    total = int(teacher.config.num_hidden_layers)
    kept = kept_layer_indices(total, keep)
    settings = teacher.config.to_dict()
    for key in ("_name_or_path", "transformers_version"):
        settings.pop(key, None)
    settings["num_hidden_layers"] = keep
    if isinstance(settings.get("layer_types"), list):
        settings["layer_types"] = [settings["layer_types"][i] for i in kept]
    config = AutoConfig.for_model(**settings)
    student = AutoModelForCausalLM.from_config(config, dtype=next(teacher.parameters()).dtype)
    renamed = {old: new for new, old in enumerate(kept)}
    state = {}
    for name, tensor in teacher.state_dict().items():
        parts = name.split(".")
        if len(parts) > 2 and parts[0] == "model" and parts[1] == "layers":
            index = int(parts[2])
            if index not in renamed:
                continue
            name = ".".join(["model", "layers", str(renamed[index]), *parts[3:]])
        state[name] = tensor.detach().clone()
    student.load_state_dict(state, strict=True)
    student.tie_weights()
    student.generation_config = teacher.generation_config
    return student.to(next(teacher.parameters()).device), kept


# --------------------------------------------------------------------------- losses


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, kind: str, temperature: float
) -> torch.Tensor:
    """Mean over rows (tokens) of forward KL(teacher || student) or of the Jensen-Shannon
    divergence between the two distributions softened by `temperature`, times T² (so its
    gradients keep their scale whatever T). Logits are (tokens, vocab)."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if kind == "forward_kl":
        per_token = (log_t.exp() * (log_t - log_s)).sum(-1)
    elif kind == "jsd":
        log_m = torch.logsumexp(torch.stack([log_s, log_t]), dim=0) - math.log(2)
        per_token = 0.5 * (log_t.exp() * (log_t - log_m)).sum(-1) + 0.5 * (
            log_s.exp() * (log_s - log_m)
        ).sum(-1)
    else:
        raise ValueError(f"unknown distillation loss {kind!r}")
    return per_token.mean() * temperature**2


def _answer_logits(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits predicting each assistant token, those tokens): rows of (tokens, vocab)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    return logits[:, :-1][mask], labels[mask]


def kd_step(teacher: nn.Module, cfg: DistillConfig) -> StepFn:
    """The loop's step: alpha x next-token loss on the answers + (1 - alpha) x the
    distillation loss against the teacher (run under no_grad); counts every real token."""

    def step(model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, int]:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.no_grad():
            teacher_logits, _ = _answer_logits(teacher, batch)
        logits, labels = _answer_logits(model, batch)
        kd = distillation_loss(logits, teacher_logits, kind=cfg.loss, temperature=cfg.temperature)
        loss = (1 - cfg.alpha) * kd
        if cfg.alpha > 0:
            loss = loss + cfg.alpha * F.cross_entropy(logits.float(), labels)
        return loss, int(batch["attention_mask"].sum())

    return step


def kd_evaluate(teacher: nn.Module, cfg: DistillConfig) -> Any:
    """The loop's eval_fn: `evaluate`'s held-out loss and token accuracy, and `val_kd`, the
    held-out distillation loss (the score monitored: lower is better)."""

    @torch.inference_mode()
    def evaluate_kd(
        model: nn.Module, loader: Iterable[Any], device: torch.device
    ) -> dict[str, float]:
        total, rows = 0.0, 0
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            teacher_logits, _ = _answer_logits(teacher, batch)
            logits, _ = _answer_logits(model, batch)
            n = len(logits)
            if n:
                kd = distillation_loss(
                    logits, teacher_logits, kind=cfg.loss, temperature=cfg.temperature
                )
                total, rows = total + float(kd) * n, rows + n
        return {
            **evaluate(model, loader, device),
            "val_kd": round(total / rows, 6) if rows else math.nan,
        }

    return evaluate_kd


# --------------------------------------------------------------------------- answers


def _prompt(conversation: Conversation) -> tuple[Conversation, int]:
    """The messages before the last assistant turn, and that turn's index."""
    last = last_answer(conversation)
    return conversation[:last], last


@torch.inference_mode()
def greedy_answers(
    model: PreTrainedModel,
    tokenizer: ChatTokenizer,
    prompts: Sequence[Conversation],
    max_new_tokens: int = ANSWER_TOKENS,
) -> tuple[list[str], float]:
    """The model's greedy answers to `prompts` and its generation speed in new tokens per
    second (one prompt at a time, as a chat is answered; after one untimed warm-up
    generation, so one-time costs do not count against whichever model is measured
    first). Blocks while generating."""
    model.eval()
    device = next(model.parameters()).device
    answers, tokens, seconds = [], 0, 0.0
    for i, messages in enumerate([*prompts[:1], *prompts]):
        prompt = tokenizer.encode(render_chat(tokenizer, messages, add_generation_prompt=True))
        input_ids = torch.tensor([prompt], device=device)
        started = time.perf_counter()
        out = model.generate(  # type: ignore[operator]
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
        )
        if i == 0:  # the warm-up
            continue
        seconds += time.perf_counter() - started
        new = out[0, len(prompt) :].tolist()
        tokens += len(new)
        answers.append(tokenizer.decode(new).strip())
    return answers, round(tokens / seconds, 2) if seconds > 0 else 0.0


def with_teacher_answers(
    teacher: PreTrainedModel,
    tokenizer: ChatTokenizer,
    conversations: Sequence[Conversation],
    max_new_tokens: int,
) -> tuple[list[Conversation], int]:
    """`conversations` with each last assistant turn replaced by the teacher's greedy
    answer (kept as it was where the teacher answers nothing); and how many changed."""
    out, changed = [], 0
    prompts = [_prompt(c) for c in conversations]
    answers, _ = greedy_answers(teacher, tokenizer, [p for p, _ in prompts], max_new_tokens)
    for conversation, (_, last), answer in zip(conversations, prompts, answers, strict=True):
        if answer:
            conversation = [*conversation[:last], {"role": "assistant", "content": answer},
                            *conversation[last + 1 :]]  # fmt: skip
            changed += 1
        out.append(conversation)
    return out, changed


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- the run


def resolve(params: dict[str, Any], n_conversations: int, device: torch.device) -> dict[str, Any]:
    """The params with "auto" replaced, except max_length (it needs the tokenizer)."""
    out = dict(params)
    if out["epochs"] == "auto":
        out["epochs"] = auto_epochs(n_conversations)
    if out["lr"] == "auto":
        out["lr"] = 1e-4
    if out["batch_size"] == "auto":
        out["batch_size"] = auto_batch_size(device)
    return out


def distill(
    conversations: Sequence[Conversation],
    teacher: PreTrainedModel,
    tokenizer: ChatTokenizer,
    params: dict[str, Any],
    *,
    workdir: Path,
    reporter: Reporter,
    teacher_ref: dict[str, Any],
) -> DistillOutput:
    """Distil `teacher` into one student per `params["student_layers"]` (the recipe's params,
    autos unresolved) on `conversations`; `teacher_ref` is its lineage for `model.json`.
    Each student trains on the shared loop and resumes from its own checkpoint in `workdir`
    after a crash. Blocks for the run.

    Raises InvalidRequest (params.student_layers) for a student not smaller than the
    teacher, DatasetInvalid when no conversation has an answer within max_length."""
    device = next(teacher.parameters()).device
    teacher.eval()
    total_layers = int(teacher.config.num_hidden_layers)
    too_big = [n for n in params["student_layers"] if n >= total_layers]
    if too_big:
        raise InvalidRequest(
            f"the teacher has {total_layers} layers; students must have fewer, not "
            f"{', '.join(map(str, too_big))}: pass --param student_layers=N with N < "
            f"{total_layers}",
            param="params.student_layers",
        )
    cfg, train, val, val_convs = _prepare(conversations, teacher, tokenizer, params, reporter)
    val_loader = Batches(val.items or train.items[:1], cfg.batch_size, tokenizer.pad_id,
                         shuffle=False)  # fmt: skip
    prompts = [_prompt(c)[0] for c in val_convs[: cfg.samples]] or [_prompt(conversations[0])[0]]
    teacher_eval = evaluate(teacher, val_loader, device)
    teacher_replies, teacher_speed = greedy_answers(teacher, tokenizer, prompts, cfg.answer_tokens)
    teacher_report = {
        "eval_loss": teacher_eval["val_loss"],
        "token_accuracy": teacher_eval["val_token_accuracy"],
        "params": parameter_count(teacher),
        "layers": total_layers,
        "generate_tokens_per_s": teacher_speed,
        **teacher_ref,
    }
    reporter.event("Teacher measured on the held-out split", data={"teacher": teacher_report})
    students = []
    for layers in params["student_layers"]:
        if reporter.cancelled():
            break
        students.append(
            _train_student(
                layers,
                teacher,
                tokenizer,
                cfg,
                train,
                val_loader,
                workdir=workdir,
                reporter=reporter,
                teacher_report=teacher_report,
                prompts=prompts,
                teacher_replies=teacher_replies,
                teacher_ref=teacher_ref,
            )
        )
    return DistillOutput(config=cfg, teacher=teacher_report, students=students)


def _prepare(
    conversations: Sequence[Conversation],
    teacher: PreTrainedModel,
    tokenizer: ChatTokenizer,
    params: dict[str, Any],
    reporter: Reporter,
) -> tuple[DistillConfig, Any, Any, list[Conversation]]:
    """The resolved config, the encoded training and held-out conversations, and the
    held-out conversations themselves (their answers always the dataset's)."""
    device = next(teacher.parameters()).device
    train_convs, val_convs = split(conversations, params["val_fraction"], params["seed"])
    raw = resolve(params, len(conversations), device)
    context = int(getattr(teacher.config, "max_position_embeddings", 2048))
    if raw["max_length"] == "auto":
        raw["max_length"] = auto_max_length(tokenizer, train_convs, context)
    raw["max_length"] = min(int(raw["max_length"]), context)
    cfg = DistillConfig(
        **{k: raw[k] for k in DistillConfig.__dataclass_fields__ if k != "device"},
        device=device.type,
    )
    if cfg.teacher_answers:
        train_convs, changed = with_teacher_answers(
            teacher, tokenizer, train_convs, cfg.answer_tokens
        )
        reporter.event(f"The teacher answered {changed} of {len(train_convs)} training prompts")
    train, val = encode_split(tokenizer, train_convs, val_convs, cfg.max_length)
    reporter.event(
        f"{len(train.items)} conversations to distil on ({train.tokens} tokens), "
        f"{len(val.items)} held out",
        data={"config": vars(cfg)},
    )
    return cfg, train, val, val_convs


def _train_student(
    layers: int,
    teacher: PreTrainedModel,
    tokenizer: ChatTokenizer,
    cfg: DistillConfig,
    train: Any,
    val_loader: Batches,
    *,
    workdir: Path,
    reporter: Reporter,
    teacher_report: dict[str, Any],
    prompts: list[Conversation],
    teacher_replies: list[str],
    teacher_ref: dict[str, Any],
) -> StudentOutput:
    device = next(teacher.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        student, kept = prune_layers(teacher, layers)
    eval_fn = kd_evaluate(teacher, cfg)
    before = eval_fn(student, val_loader, device)
    reporter.event(
        f"Student of {layers} layers (teacher's {kept}): {parameter_count(student):,} "
        f"parameters; held-out distillation loss {before['val_kd']:.4f} before training",
        data={"layers": layers, "kept_layers": kept, "before": before},
    )
    torch.manual_seed(cfg.seed)  # the batch order: the same run gives the same student
    train_loader = Batches(train.items, cfg.batch_size, tokenizer.pad_id, shuffle=True)
    optimizer = make_optimizer(student, cfg.lr, weight_decay=0.01)
    steps = cfg.epochs * len(train_loader)
    result = fit(
        student, train_loader, val_loader, epochs=cfg.epochs, optimizer=optimizer,
        scheduler=cosine_with_warmup(optimizer, steps, default_warmup_steps(steps)),
        device=device, amp=True, channels_last=False, patience=cfg.patience,
        checkpoint_path=workdir / f"distill-{layers}l.pt", reporter=reporter,
        eval_fn=eval_fn, monitor="val_kd",
        options=StepOptions(step_fn=kd_step(teacher, cfg), unit="tokens",
                            higher_is_better=False, max_grad_norm=1.0),
    )  # fmt: skip
    after = eval_fn(student, val_loader, device) if result.best_epoch else before
    answers, speed = greedy_answers(student, tokenizer, prompts, cfg.answer_tokens)
    agree = sum(a == b for a, b in zip(answers, teacher_replies, strict=True))
    metrics = _metrics(layers, before, after, result, student, speed, teacher_report)
    metrics["answer_agreement"] = round(agree / len(prompts), 4)
    samples = [
        {"prompt": p[-1]["content"] if p else "", "teacher": t, "student": s}
        for p, t, s in list(zip(prompts, teacher_replies, answers, strict=True))[:3]
    ]
    folder = workdir / f"student-{layers}l"
    _save(student, tokenizer, cfg, folder, teacher_ref, metrics, kept)
    return StudentOutput(layers, kept, folder, metrics, samples, result)


def _metrics(
    layers: int,
    before: dict[str, float],
    after: dict[str, float],
    result: FitResult,
    student: nn.Module,
    speed: float,
    teacher: dict[str, Any],
) -> dict[str, Any]:
    params = parameter_count(student)
    return {
        "layers": layers,
        "eval_loss": after["val_loss"],
        "token_accuracy": after["val_token_accuracy"],
        "eval_kd": after["val_kd"],
        "eval_kd_before": before["val_kd"],
        "eval_loss_before": before["val_loss"],
        "params": params,
        "generate_tokens_per_s": speed,
        "teacher_eval_loss": teacher["eval_loss"],
        "teacher_token_accuracy": teacher["token_accuracy"],
        "teacher_params": teacher["params"],
        "teacher_layers": teacher["layers"],
        "teacher_generate_tokens_per_s": teacher["generate_tokens_per_s"],
        "eval_loss_ratio": _ratio(after["val_loss"], teacher["eval_loss"]),
        "params_ratio": _ratio(params, teacher["params"]),
        "speedup": _ratio(speed, teacher["generate_tokens_per_s"]),
        "tokens_trained": result.items_run,
        "tokens_per_s": result.train_items_per_s,
        "epochs_done": result.epochs_done,
        "best_epoch": result.best_epoch,
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b and math.isfinite(a) and math.isfinite(b) else None


def _save(
    model: PreTrainedModel,
    tokenizer: ChatTokenizer,
    cfg: DistillConfig,
    out: Path,
    teacher_ref: dict[str, Any],
    metrics: dict[str, Any],
    kept: list[int],
) -> None:
    """The whole student (a chat-model folder) and its `model.json`."""
    save_chat_model(model, tokenizer, out)
    contract = {
        "format": CONTRACT_FORMAT,
        "task": "chat",
        "kind": "full",
        "base_model": {"distilled_from": teacher_ref},
        "kept_layers": kept,
        "max_length": cfg.max_length,
        "dtype": "float32",
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "metrics": {k: metrics[k] for k in ("eval_loss", "token_accuracy", "eval_kd")},
        "files": [*sorted(p.name for p in out.iterdir() if p.is_file()), MODEL_JSON],
    }
    (out / MODEL_JSON).write_text(json.dumps(contract, indent=2) + "\n")
