"""`modelfab chat`: one question to a chat endpoint, answered whole or streamed.

stdout holds the answer only (so `modelfab chat ... > answer.txt` keeps just the text); the
dim line with the finish reason and the tokens goes to stderr."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from modelfab.cli.common import client
from modelfab.cli.output import Output, OutputOpt, emit_json, err_console
from modelfab.client import ApiError, Client
from modelfab.schemas.completions import ChatCompletion

CLI_NAMES = {
    "model": "ENDPOINT",
    "messages": "PROMPT",
    "max_tokens": "--max-tokens",
    "temperature": "--temperature",
    "seed": "--seed",
}
"""The API's parameter names as this command spells them, for the errors it prints."""


def chat(
    endpoint: Annotated[str, typer.Argument(help="A chat endpoint of yours")],
    prompt: Annotated[str, typer.Argument(help='The question; "-" reads it from stdin')],
    stream: Annotated[bool, typer.Option(help="Print the answer as it is generated")] = False,
    system: Annotated[
        str | None, typer.Option(help="A system message sent before the prompt")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="Most tokens to generate (the server's default if not given)")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="0 (greedy, repeatable) to 2; 1 if not given")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling, to repeat an answer")] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Ask a chat endpoint; prints the answer, then (dim, on stderr) why it stopped and the
    tokens in and out. `-o json` prints the whole chat.completion instead."""
    messages = [{"role": "user", "content": _prompt(prompt)}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    ask = Ask(endpoint, messages, max_tokens=max_tokens, temperature=temperature, seed=seed)
    try:
        with client() as c:
            if stream:
                answer = _streamed(c, ask, echo=output is Output.table)
            else:
                answer = c.chat(ask.endpoint, ask.messages, **ask.options())
                if output is Output.table:
                    sys.stdout.write(answer.choices[0].message.content + "\n")
    except ApiError as exc:
        exc.param = CLI_NAMES.get(exc.param or "", exc.param)
        raise
    if output is Output.json:
        emit_json(answer)
        return
    _stats(answer)


@dataclass(frozen=True)
class Ask:
    """One question, as `Client.chat` and `Client.chat_stream` take it."""

    endpoint: str
    messages: list[dict[str, str]]
    max_tokens: int | None
    temperature: float | None
    seed: int | None

    def options(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "seed": self.seed}


def _streamed(c: Client, ask: Ask, *, echo: bool) -> ChatCompletion:
    """Read the stream to its end, writing each piece as it arrives when `echo`; the
    answer as one completion. A stream that fails mid-answer leaves its text printed and
    raises (after a newline, so the error starts a line of its own)."""
    with c.chat_stream(ask.endpoint, ask.messages, **ask.options()) as answer:
        try:
            for piece in answer:
                if echo:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
        finally:
            if echo:
                sys.stdout.write("\n")
        return answer.completion()


def _prompt(prompt: str) -> str:
    """The prompt, or stdin's text for "-"; refuses an empty one (exit 2)."""
    text = sys.stdin.read() if prompt == "-" else prompt
    if not text.strip():
        where = "stdin" if prompt == "-" else "the prompt"
        raise typer.BadParameter(f"{where} is empty; ask something", param_hint="PROMPT")
    return text


def _stats(answer: ChatCompletion) -> None:
    usage = answer.usage
    err_console.print(
        f"[dim]finished: {answer.choices[0].finish_reason}, tokens: {usage.prompt_tokens} in, "
        f"{usage.completion_tokens} out[/dim]",
        highlight=False,
    )
