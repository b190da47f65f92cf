"""``edgefleet infer DEVICE --prompt TEXT``: stream a language model's answer from a device.

Why the CLI talks to the device's own inference endpoint rather than through the coordinator:
the endpoint is where applications on the device get their answers (loopback gRPC,
``InferenceService.Generate``), so this is the same path, the same numbers (time to first
token, tokens/s) and the same refusals an application sees. DEVICE is the endpoint's
``HOST:PORT`` or the agent's state directory, whose ``inference.json`` the agent writes once
the endpoint listens (a simulated device's state dir, or ``/var/lib/edgefleet`` on a Pi).

The answer's bytes go to stdout as they arrive; one summary line (tokens, time to first token,
decode tokens/s, why it stopped) goes to stderr, so ``> answer.txt`` keeps only the text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import grpc
import typer

from edgefleet.cli.common import fail

__all__ = ["infer", "resolve_endpoint"]

_TIMEOUT_S = 600.0


def resolve_endpoint(device: str) -> str:
    """``HOST:PORT`` of the device's inference endpoint from an address or a state directory."""
    path = Path(device)
    if path.is_dir():
        info = path / "inference.json"
        try:
            address = json.loads(info.read_text())["address"]
        except FileNotFoundError:
            raise ValueError(
                f"{info} does not exist: the agent serves no inference endpoint "
                "(start it with --inference-port)"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{info} is not the agent's endpoint file: {exc}") from None
        return str(address)
    host, sep, port = device.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"DEVICE {device!r} is neither HOST:PORT nor an agent state directory")
    return device


def infer(
    device: Annotated[
        str, typer.Argument(help="the device's inference endpoint HOST:PORT or its state dir")
    ],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="text to continue")],
    max_tokens: Annotated[int, typer.Option(help="new tokens at most (1..4096)")] = 64,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    top_k: Annotated[int, typer.Option(help="sample among the k likeliest (0 = all)")] = 0,
    top_p: Annotated[float, typer.Option(help="nucleus probability (0, 1]")] = 1.0,
    stop: Annotated[
        list[str] | None, typer.Option(help="stop once the answer ends with this (repeatable)")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="same seed = same answer")] = None,
) -> None:
    """Stream a language model's answer to PROMPT from a device's inference endpoint."""
    from edgefleet.v1 import inference_pb2, inference_pb2_grpc

    if max_tokens < 0 or top_k < 0 or (seed is not None and seed < 0):
        raise fail("--max-tokens, --top-k and --seed must not be negative")
    try:
        address = resolve_endpoint(device)
    except ValueError as exc:
        raise fail(str(exc)) from None
    request = inference_pb2.GenerateRequest(
        text=prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop=[s.encode("utf-8") for s in stop or []],
    )
    if seed is not None:
        request.seed = seed
    out = sys.stdout.buffer
    last = None
    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        try:
            for chunk in stub.Generate(request, timeout=_TIMEOUT_S):
                out.write(chunk.data)
                out.flush()
                last = chunk
        except grpc.RpcError as exc:
            out.write(b"\n")
            out.flush()
            raise fail(f"{exc.code().name}: {exc.details()}") from None
    out.write(b"\n")
    out.flush()
    if last is not None:
        typer.echo(
            f"-- {last.index + 1} tokens after a {last.prompt_tokens}-token prompt; "
            f"first token {last.time_to_first_token_ms:.1f} ms, "
            f"{last.tokens_per_second:.1f} tok/s; stopped: {last.finish_reason}; "
            f"variant {last.variant_id[:12]} (context {last.context_limit})",
            err=True,
        )
