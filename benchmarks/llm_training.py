"""Language-model training benchmarks, each beside its baseline with the ratio printed (no
timed asserts).

throughput: training tokens/s of `llm-finetune`'s own code path (`recipes.llm.finetune`
on the shared `fit` loop, in-process with a `LocalContext`) against a plain peft loop
written here: the same model, conversations, batches and max length, LoRA r 16 on all
linear layers, AdamW, the same number of steps, fp32 on the CPU. Runs alternate in ABBA
order; the ratio is median / median, target >= 0.95.

to-model: an in-process `Platform`, 400 short chat conversations (persona + arithmetic
from tests/llm_factories.py) and one LoRA `llm-finetune` job. Time from `create_job` to
a registered model version, split into phases from the job's events, beside the bare
training time inside the job (the sum of its epochs).

distill: `llm-distill`'s code path in-process: the hub model teaches students of the sizes
asked on persona + arithmetic conversations; each student's held-out loss and greedy
tokens/s against the teacher's, measured in the same run (ratios).
See benchmarks/README.md."""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import os
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from harness import DEFAULT_HUB_DIR, SMOLLM2, running_platform, seed_hub
from rich.console import Console
from rich.table import Table
from training import all_events, first_at, last_at, machine, worker_started

from modelfab.client import Client
from modelfab.hub.chat import chat_model_folder
from modelfab.llm.models import load_chat_model
from modelfab.recipes.llm.data import Batches, auto_max_length, encode_all, split
from modelfab.recipes.llm.finetune import finetune
from modelfab.recipes.local import LocalContext
from modelfab.recipes.training.loop import default_warmup_steps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' data factories
from tests.llm_factories import Conversation, arithmetic, persona, write_jsonl

console = Console(width=160)  # the tables stay whole in a log
TASK = "llm-finetune"
JOB_TIMEOUT_S = 3600
LORA_RANK = 16
LR = 2e-4  # the recipe's auto LoRA lr
MAX_GRAD_NORM = 1.0  # the recipe's, and the Hugging Face Trainer's default


def conversations(n: int, seed: int = 0) -> list[Conversation]:
    """`n` short conversations, half persona and half arithmetic, shuffled. Never
    part_numbers: it is held out of all tuning."""
    convs = persona(n // 2, seed) + arithmetic(n - n // 2, seed)
    random.Random(seed).shuffle(convs)
    return convs


# -- part 1: throughput ------------------------------------------------------------------


Stamp = tuple[float, float]
"""(wall clock, this process's CPU time) after a step."""


def stamp() -> Stamp:
    return time.perf_counter(), time.process_time()


@dataclass(frozen=True)
class Setup:
    folder: Path
    """The base model's Hugging Face folder."""
    batch_size: int
    warmup: int
    steps: int
    max_length: int
    seed: int = 0

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps

    @property
    def val_fraction(self) -> float:
        """Holds out exactly one batch: `split` rounds n x fraction."""
        return self.batch_size / self.n_conversations

    @property
    def n_conversations(self) -> int:
        return (self.total_steps + 1) * self.batch_size


@dataclass
class Run:
    """One training run: a stamp and the loss after each step."""

    stamps: dict[int, Stamp] = field(default_factory=dict)
    losses: dict[int, float] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)
    """Tokens of each step (the plain loop's count; the recipe's batches are the same)."""
    fit_tokens_per_s: float = 0.0


class Probe:
    """Profiles steps `first`..`last` of a run (cProfile for Python, torch.profiler for
    operators) when asked, started and stopped between steps."""

    def __init__(self, first: int, last: int, enabled: bool) -> None:
        self.first, self.last, self.enabled = first, last, enabled
        self.python = cProfile.Profile()
        self.torch: torch.profiler.profile | None = None

    def after_step(self, step: int) -> None:
        if not self.enabled:
            return
        if step == self.first - 1:
            self.torch = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.torch.start()
            self.python.enable()
        elif step == self.last and self.torch is not None:
            self.python.disable()
            self.torch.stop()


class Clock:
    """A `LocalContext` hook: stamps `fit`'s step-metrics events as they are reported (every
    step when an epoch has at most 50), right after the `.item()` that syncs the device."""

    def __init__(self, run: Run, probe: Probe) -> None:
        self.run, self.probe = run, probe

    def on_event(self, item: dict[str, Any]) -> None:
        data = item["data"] or {}
        if item["type"] == "metrics" and "tokens_per_s" in data:
            step = int(data["step"])
            self.run.stamps[step] = stamp()
            self.run.losses[step] = float(data["train_loss"])
            self.probe.after_step(step)


def recipe_params(setup: Setup) -> dict[str, Any]:
    return {
        "method": "lora", "epochs": 1, "lr": LR, "batch_size": setup.batch_size,
        "lora_rank": LORA_RANK, "max_length": setup.max_length,
        "val_fraction": setup.val_fraction, "seed": setup.seed, "patience": 2,
        "gradient_checkpointing": False, "samples": 0,
    }  # fmt: skip


def run_modelfab(setup: Setup, convs: list[Conversation], tmp: Path, probe: Probe) -> Run:
    """The recipe's `finetune` for one epoch of `total_steps` steps (its held-out loss
    before and after, and the adapter's save, fall outside the timed steps)."""
    run = Run()
    clock = Clock(run, probe)
    workdir = Path(tempfile.mkdtemp(dir=tmp))  # fresh: fit would resume from a checkpoint
    torch.manual_seed(setup.seed)  # the same weights load and batch order as the plain loop
    out = finetune(
        convs,
        setup.folder,
        recipe_params(setup),
        workdir=workdir,
        reporter=LocalContext(workdir, on_event=clock.on_event),
        base_model={"hub": "bench"},
    )
    run.fit_tokens_per_s = out.fit.train_items_per_s
    shutil.rmtree(workdir, ignore_errors=True)
    return run


def plain_batches(setup: Setup, convs: list[Conversation], tokenizer: Any) -> Batches:
    """The recipe's split, encoding and length-bucketed batches: the same batches as its."""
    train, _ = split(convs, setup.val_fraction, setup.seed)
    return Batches(
        encode_all(tokenizer, train, setup.max_length).items,
        setup.batch_size,
        tokenizer.pad_id,
        shuffle=True,
    )


def run_plain(setup: Setup, convs: list[Conversation], probe: Probe) -> Run:
    """The baseline: the loop a peft user writes, over the same batches."""
    from peft import LoraConfig, get_peft_model
    from transformers import get_cosine_schedule_with_warmup

    run = Run()
    torch.manual_seed(setup.seed)
    base, tokenizer = load_chat_model(setup.folder)
    loader = plain_batches(setup, convs, tokenizer)
    config = LoraConfig(
        r=LORA_RANK,
        lora_alpha=2 * LORA_RANK,
        lora_dropout=0.05,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(setup.seed)  # the recipe's LoRA init
        model = get_peft_model(base, config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    n = len(loader)
    scheduler = get_cosine_schedule_with_warmup(optimizer, default_warmup_steps(n), n)
    model.train()
    for step, batch in enumerate(loader, start=1):
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        run.losses[step] = loss.item()  # syncs, as fit's report does
        run.stamps[step] = stamp()
        run.tokens[step] = int(batch["attention_mask"].sum())
        probe.after_step(step)
    return run


@dataclass
class Rates:
    """Measures of one run over its timed steps (after the warm-up)."""

    window: float
    """Timed tokens / wall seconds from the last warm-up stamp to the last stamp."""
    interval_median: float
    """Median over steps of tokens / wall seconds: robust to another process taking the
    cores for a few seconds."""
    per_cpu_s: float
    """Timed tokens / CPU seconds of this process."""


def rates(run: Run, tokens: dict[int, int], warmup: int) -> Rates:
    steps = sorted(s for s in run.stamps if s >= warmup)
    first, last = run.stamps[steps[0]], run.stamps[steps[-1]]
    timed = sum(tokens[s] for s in steps[1:])
    per_step = [
        tokens[b] / (run.stamps[b][0] - run.stamps[a][0]) for a, b in itertools.pairwise(steps)
    ]
    return Rates(
        window=timed / (last[0] - first[0]),
        interval_median=statistics.median(per_step),
        per_cpu_s=timed / max(1e-9, last[1] - first[1]),
    )


def throughput_part(setup: Setup, rounds: int, profile: bool) -> None:
    convs = conversations(setup.n_conversations, setup.seed)
    console.print(
        f"[bold]throughput[/]: {setup.folder.parent.name}, {setup.total_steps} steps of "
        f"{setup.batch_size} conversations ({setup.warmup} untimed), max_length "
        f"{setup.max_length}, LoRA r {LORA_RANK} all-linear, fp32 on "
        f"{torch.get_num_threads()} torch threads; {rounds} round(s) in ABBA order ..."
    )
    runs: dict[str, list[Run]] = {"modelfab": [], "plain": []}
    sides: dict[str, Callable[[Probe], Run]] = {
        "modelfab": lambda probe: run_modelfab(setup, convs, tmp, probe),
        "plain": lambda probe: run_plain(setup, convs, probe),
    }
    with tempfile.TemporaryDirectory(prefix="modelfab-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for r in range(rounds):
            order = ("modelfab", "plain") if r % 2 == 0 else ("plain", "modelfab")
            for side in order:
                runs[side].append(sides[side](Probe(0, 0, enabled=False)))
                console.print(f"  round {r + 1}: {side} done")
        tokens = runs["plain"][0].tokens
        check_same_batches(runs, tokens)
        print_throughput(runs, tokens, setup.warmup)
        if profile:
            profile_both(sides, setup)


def check_same_batches(runs: dict[str, list[Run]], tokens: dict[int, int]) -> None:
    """The first step's loss comes from the same weights and batch on both sides (the
    schedules differ after it), and the recipe trains on as many tokens as the plain loop."""
    a, b = runs["modelfab"][0].losses[1], runs["plain"][0].losses[1]
    same = abs(a - b) <= 1e-4 * max(1.0, abs(b))
    colour = "green" if same else "red"
    console.print(
        f"[{colour}]step 1 loss: modelfab {a:.6f}, plain {b:.6f}[/] (same weights and batch "
        f"when equal); steps: modelfab {len(runs['modelfab'][0].stamps)}, plain {len(tokens)}"
    )


def print_throughput(runs: dict[str, list[Run]], tokens: dict[int, int], warmup: int) -> None:
    measured = {side: [rates(r, tokens, warmup) for r in rs] for side, rs in runs.items()}
    table = Table(title="training tokens/s (median of rounds); ratio = modelfab / plain")
    for col in ("measure", "modelfab", "plain peft loop", "ratio"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    measures: list[tuple[str, Callable[[Rates], float]]] = [
        ("tokens/s over the timed steps", lambda x: x.window),
        ("median of per-step tokens/s", lambda x: x.interval_median),
        ("tokens per CPU-second", lambda x: x.per_cpu_s),
    ]
    for name, get in measures:
        ours = statistics.median(get(x) for x in measured["modelfab"])
        theirs = statistics.median(get(x) for x in measured["plain"])
        table.add_row(name, f"{ours:,.1f}", f"{theirs:,.1f}", f"[bold]{ours / theirs:.3f}[/]")
    console.print(table)
    fit_rates = ", ".join(f"{r.fit_tokens_per_s:,.1f}" for r in runs["modelfab"])
    console.print(
        f"per round, tokens/s over the timed steps: modelfab "
        f"{', '.join(f'{x.window:,.1f}' for x in measured['modelfab'])}; plain "
        f"{', '.join(f'{x.window:,.1f}' for x in measured['plain'])}. The recipe's own "
        f"tokens_per_s (every step, warm-up included): {fit_rates}"
    )


def profile_both(sides: dict[str, Callable[[Probe], Run]], setup: Setup) -> None:
    """One more run of each side with steps warmup+1..warmup+3 profiled: the Python
    functions by cumulative time, and torch's operators by self CPU time."""
    first, last = setup.warmup + 1, min(setup.total_steps, setup.warmup + 3)
    for side, call in sides.items():
        probe = Probe(first, last, enabled=True)
        call(probe)
        console.rule(f"profile of {side}, steps {first}-{last}")
        out = io.StringIO()
        stats = pstats.Stats(probe.python, stream=out)
        stats.sort_stats("cumulative").print_stats(25)
        console.print(out.getvalue(), markup=False, highlight=False)
        if probe.torch is not None:
            table = probe.torch.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
            console.print(table, markup=False, highlight=False)


# -- part 2: create_job -> registered model ----------------------------------------------


@dataclass
class JobRun:
    job: dict[str, Any]
    events: list[dict[str, Any]]
    model: dict[str, Any] | None
    upload_s: float

    def ended_at(self) -> float:
        """When the model was registered, or when the job ended without one."""
        return float(self.model["created_at"] if self.model else self.job["finished_at"])


def run_job(params: dict[str, Any], n: int, cpus: float, model_folder: Path) -> JobRun:
    with tempfile.TemporaryDirectory(prefix="modelfab-bench-") as tmp_name:
        tmp = Path(tmp_name)
        jsonl = write_jsonl(tmp / "chats.jsonl", conversations(n))
        with running_platform(tmp / "home", cpus) as platform:
            seed_hub(model_folder.parent, platform.settings.hub_dir)
            admin_key = platform.settings.admin_key_path.read_text().strip()
            with Client(platform.url, admin_key) as admin:
                key = admin.create_tenant("bench").api_key
            with Client(platform.url, key, timeout_s=120) as client:
                start = time.perf_counter()
                client.create_dataset("chats", jsonl, task="chat")
                upload_s = time.perf_counter() - start
                job = client.create_job(TASK, dataset="chats", params=params, cpus=cpus)
                done = client.wait_job(job.id, timeout_s=JOB_TIMEOUT_S).model_dump()
                events = all_events(client, job.id)
                ok = done["status"] == "succeeded"
                model = client.get_model(params["model_name"]).model_dump() if ok else None
                return JobRun(done, events, model, upload_s)


def phases(run: JobRun) -> list[tuple[str, float]]:
    """(phase, seconds) from the job's timestamps and its last attempt's events."""
    ev = [e for e in run.events if e["attempt"] == run.job["attempt"]]

    def msg(needle: str) -> Callable[[dict[str, Any]], bool]:
        return lambda e: needle in str(e["message"])

    marks = [
        ("job created (queued)", run.job["created_at"]),
        ("placed", first_at(ev, msg(" placed on "))),
        ("worker started", first_at(ev, lambda e: worker_started(e["message"]))),
        ("data encoded", first_at(ev, msg(" conversations to train on "))),
        ("training started", first_at(ev, lambda e: str(e["message"]).startswith("Training "))),
        ("last epoch done", last_at(ev, lambda e: e["type"] == "checkpoint")),
        ("uploading", first_at(ev, msg("Uploading artifacts"))),
        ("registered" if run.model else f"job {run.job['status']}", run.ended_at()),
    ]
    present = [(name, at) for name, at in marks if at is not None]
    return [(f"{a} -> {b}", t1 - t0) for (a, t0), (b, t1) in itertools.pairwise(present)]


def to_model_part(params: dict[str, Any], n: int, cpus: float, model_folder: Path) -> None:
    console.print(
        f"[bold]to-model[/]: {TASK} job, {n} conversations (persona + arithmetic), cpus "
        f"{cpus:g}, params {params} ..."
    )
    run = run_job(params, n, cpus, model_folder)
    job = run.job
    epochs = [e["data"] for e in run.events if e["type"] == "checkpoint"]
    train_s = sum(float(r["epoch_s"]) for r in epochs)
    total_s = run.ended_at() - job["created_at"]
    end = "registered model" if run.model else f"job {job['status']}"
    table = Table(title=f"create_job -> {end}, from the job's events")
    for col in ("phase", "s", "share"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for name, seconds in phases(run):
        table.add_row(name, f"{seconds:.2f}", f"{seconds / total_s:.1%}")
    table.add_row(f"[bold]total: created -> {end}[/]", f"{total_s:.2f}", "100%")
    table.add_row("[bold]baseline: training, sum of epoch_s[/]", f"{train_s:.2f}", "")
    console.print(table)
    if run.model:
        r = job["result"]
        console.print(
            f"epochs run {r['epochs_run']}, steps {r['steps_run']}, max_length "
            f"{r['max_length']}, {r['tokens_trained']:,} tokens at {r['tokens_per_s']:,.1f} "
            f"tokens/s; held-out loss {r['eval_loss_before']:.4f} -> {r['eval_loss']:.4f}, "
            f"token accuracy {r['token_accuracy_before']:.3f} -> {r['token_accuracy']:.3f}"
        )
    else:
        console.print(f"[red]no model registered[/]: {job['error']}")
    ratio = total_s / train_s if train_s else float("nan")
    console.print(
        f"dataset upload (before create_job, not counted) {run.upload_s:.1f} s; "
        f"[bold]create_job -> {end} {total_s:.1f} s[/], training (sum of epochs, each with "
        f"its held-out pass) {train_s:.1f} s: overhead ratio total / training {ratio:.2f}x"
    )


# -- part 3: distillation ---------------------------------------------------------------


def distill_part(folder: Path, args: argparse.Namespace) -> None:
    """`llm-distill`'s own code path (`recipes.llm.distill`, in-process with a
    `LocalContext`): the hub model teaches one student per size on the same conversations;
    each student's held-out loss, token accuracy and greedy tokens/s beside the teacher's
    (measured in the same run, on the same held-out split and prompts), as ratios."""
    from modelfab.recipes.llm.distill import distill

    convs = conversations(args.distill_conversations, seed=1)
    params = {
        "student_layers": args.student_layers, "loss": "forward_kl", "temperature": 2.0,
        "alpha": 0.5, "teacher_answers": False, "epochs": args.distill_epochs, "lr": "auto",
        "batch_size": args.batch_size, "max_length": "auto", "val_fraction": 0.15,
        "seed": 0, "patience": 2, "samples": 8, "answer_tokens": 32,
    }  # fmt: skip
    console.print(
        f"[bold]distill[/]: teacher {folder.parent.name}, students of {args.student_layers} "
        f"layers, "
        f"{len(convs)} conversations (persona + arithmetic), {args.distill_epochs} epoch(s), "
        f"batch {args.batch_size}, fp32 on {torch.get_num_threads()} torch threads ..."
    )
    teacher, tokenizer = load_chat_model(folder)
    with tempfile.TemporaryDirectory(prefix="modelfab-bench-") as tmp_name:
        start = time.perf_counter()
        out = distill(
            convs, teacher, tokenizer, params, workdir=Path(tmp_name),
            reporter=LocalContext(Path(tmp_name)), teacher_ref={"hub": folder.parent.name},
        )  # fmt: skip
        elapsed = time.perf_counter() - start
    t = out.teacher
    table = Table(title="student beside teacher, same held-out split; ratio = student / teacher")
    columns = ("model", "layers", "params", "held-out loss", "token acc", "greedy tokens/s",
               "agreement", "loss ratio", "params ratio", "tokens/s ratio")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col == "model" else "right")
    table.add_row(
        "teacher", str(t["layers"]), f"{t['params']:,}", f"{t['eval_loss']:.4f}",
        f"{t['token_accuracy']:.3f}", f"{t['generate_tokens_per_s']:.1f}", "", "", "", "",
    )  # fmt: skip
    for s in out.students:
        m = s.metrics
        table.add_row(
            f"student-{s.layers}l", str(s.layers), f"{m['params']:,}", f"{m['eval_loss']:.4f}",
            f"{m['token_accuracy']:.3f}", f"{m['generate_tokens_per_s']:.1f}",
            f"{m['answer_agreement']:.2f}", f"[bold]{m['eval_loss_ratio']}[/]",
            f"{m['params_ratio']}", f"[bold]{m['speedup']}[/]",
        )  # fmt: skip
    console.print(table)
    for s in out.students:
        m = s.metrics
        console.print(
            f"student-{s.layers}l: kept layers {s.kept_layers}; held-out distillation loss "
            f"{m['eval_kd_before']:.4f} -> {m['eval_kd']:.4f}; {m['tokens_trained']:,} tokens "
            f"trained at {m['tokens_per_s']:,.1f} tokens/s over {m['epochs_done']} epoch(s)"
        )
    console.print(f"distillation of {len(out.students)} student(s) took {elapsed:.0f} s")


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--part", choices=("throughput", "to-model", "distill", "all"), default="all")
    p.add_argument("--model", default=SMOLLM2, help=f"hub chat model ({SMOLLM2}; tiny-chat)")
    p.add_argument("--hub-dir", type=Path, default=DEFAULT_HUB_DIR, help="converted models")
    p.add_argument("--batch-size", type=int, default=8, help="conversations per step (8)")
    p.add_argument("--steps", type=int, help="throughput: timed steps per run (20; quick 6)")
    p.add_argument("--warmup", type=int, default=2, help="throughput: untimed first steps (2)")
    p.add_argument("--rounds", type=int, help="throughput: run pairs, ABBA order (2; quick 1)")
    p.add_argument("--profile", action="store_true", help="throughput: profile a few steps")
    p.add_argument("--conversations", type=int, help="to-model: (400; quick 120)")
    p.add_argument("--epochs", type=int, default=1, help="to-model: --param epochs (1)")
    p.add_argument("--cpus", type=float, default=2.0, help="to-model: job cpus and node slots")
    p.add_argument("--student-layers", type=int, nargs="+", help="distill: (15 8; quick 8)")
    p.add_argument("--distill-conversations", type=int, help="distill: (160; quick 48)")
    p.add_argument("--distill-epochs", type=int, default=1, help="distill: epochs (1)")
    p.add_argument("--quick", action="store_true", help="small sizes: minutes on 2 quiet cores")
    args = p.parse_args(argv)
    args.steps = args.steps or (6 if args.quick else 20)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.conversations = args.conversations or (120 if args.quick else 400)
    args.student_layers = args.student_layers or ([8] if args.quick else [15, 8])
    args.distill_conversations = args.distill_conversations or (48 if args.quick else 160)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    console.print(f"{machine(torch.device('cpu'))} at start")
    folder = chat_model_folder(args.hub_dir, args.model)  # converts a GGUF once
    if args.part in ("throughput", "all"):
        _, tokenizer = load_chat_model(folder)
        n = (args.warmup + args.steps + 1) * args.batch_size
        length = auto_max_length(tokenizer, conversations(n), context=2048)
        setup = Setup(folder, args.batch_size, args.warmup, args.steps, length)
        throughput_part(setup, args.rounds, args.profile)
    if args.part in ("to-model", "all"):
        params = {
            "base_model": args.model, "method": "lora", "epochs": args.epochs,
            "batch_size": args.batch_size, "model_name": "bench-chat",
        }  # fmt: skip
        to_model_part(params, args.conversations, args.cpus, folder)
    if args.part in ("distill", "all"):
        distill_part(folder, args)
    load1, _, _ = os.getloadavg()
    console.print(f"done in {time.monotonic() - start:.0f} s; load average {load1:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
