"""Seed example `example_stream_as_infer.py`: stream an inference over HTTP (`/v1/infer/stream`,
SSE) and assemble the events into the same JSON `/v1/infer` answers, which keeps a long
inference from an idle-timeout at a proxy. `--compare` also calls `/v1/infer` and checks that
the two are the same. GATEWAY is the gateway's URL (default http://127.0.0.1:8001)."""

import json
import os
import sys

import httpx

from agentmesh.runtime import InferenceResult, StreamEvent


def request_body() -> dict:
    return {
        "model_id": os.environ.get("MODEL", "echo"),
        "tool_ids": ["time_get_current_time"],
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What time is it in UTC?"},
        ],
        "stream": True,
        "max_tool_rounds": 10,
    }


def stream_as_infer(client: httpx.Client) -> dict:
    events = []
    with client.stream("POST", "/v1/infer/stream", json=request_body()) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: "):
                event = StreamEvent.model_validate_json(line[6:])
                if event.type == "error":
                    raise SystemExit(f"the inference failed: {event.error}")
                if event.content:
                    print(event.content, end="", flush=True)
                events.append(event)
    print()
    return InferenceResult.assemble(events).model_dump(mode="json")


def main() -> None:
    base = os.environ.get("GATEWAY", "http://127.0.0.1:8001")
    with httpx.Client(base_url=base, timeout=600) as client:
        assembled = stream_as_infer(client)
        print(json.dumps(assembled, indent=2, ensure_ascii=False))
        if "--compare" in sys.argv:
            direct = client.post("/v1/infer", json=request_body()).json()
            # The same result, field for field (the JSON may leave out empty fields).
            same = InferenceResult.model_validate(direct) == InferenceResult.model_validate(
                assembled
            )
            print("identical to /v1/infer" if same else "DIFFERENT from /v1/infer")
            if not same:
                raise SystemExit(1)


if __name__ == "__main__":
    main()
