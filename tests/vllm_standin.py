"""A stand-in for vLLM's OpenAI-compatible server, for the tests of :class:`lmgraph.lm.vllm_server.VLLMServer`.

Run as a program with vLLM's command-line flags (``--model``, ``--host``, ``--port``,
``--served-model-name``...; others are accepted and ignored). It serves, on loopback:

* ``GET /health``: 503 for ``$STANDIN_WARMUP_S`` seconds after start (a model loading), then 200;
* ``GET /v1/models``: the served model name;
* ``POST /v1/chat/completions`` and ``/v1/completions``: a completion. With a ``response_format``
  of type ``json_schema`` the text is one JSON object with a value for each property of the schema
  (``"x"``; enums: their first value); otherwise ``"hello"``. Log-probabilities when asked.

``$STANDIN_MODE``: ``ok`` (default), ``exit`` (prints a few lines and exits with code 3 before
serving, as vLLM does when the model does not load), ``hang`` (``/health`` never turns 200).
``$STANDIN_RECORD``: a file that gets one JSON line per event (``{"argv": [...]}`` at start, then
``{"path": ..., "body": {...}}`` per request), for the tests to read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def record(event: dict) -> None:
    path = os.environ.get("STANDIN_RECORD")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event) + "\n")


def value_for(schema: dict) -> object:
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: value_for(v) for k, v in (schema.get("properties") or {}).items()}
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    return "x"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", default=None)
    args, _unknown = parser.parse_known_args()
    record({"argv": sys.argv[1:]})
    mode = os.environ.get("STANDIN_MODE", "ok")
    print(f"INFO stand-in vLLM: loading {args.model}", flush=True)
    if mode == "exit":
        print("ERROR stand-in vLLM: CUDA out of memory while loading the model", file=sys.stderr, flush=True)
        return 3
    warmup = float(os.environ.get("STANDIN_WARMUP_S", "0"))
    started = time.monotonic()
    name = args.served_model_name or args.model

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:  # quiet
            pass

        def send(self, status: int, payload: object) -> None:
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            ready = mode == "ok" and time.monotonic() - started >= warmup
            if self.path == "/health":
                self.send(200 if ready else 503, {})
            elif self.path == "/v1/models":
                self.send(200, {"object": "list", "data": [{"id": name, "object": "model"}]})
            else:
                self.send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            record({"path": self.path, "body": body})
            if self.path not in ("/v1/chat/completions", "/v1/completions"):
                self.send(404, {"error": {"message": "not found"}})
                return
            if body.get("model") != name:
                self.send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
                return
            fmt = body.get("response_format") or {}
            if fmt.get("type") == "json_schema":
                text = json.dumps(value_for(fmt["json_schema"]["schema"]))
            else:
                text = "hello"
            chat = self.path.endswith("/chat/completions")
            choice: dict = {"index": 0, "finish_reason": "stop"}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            if body.get("logprobs"):
                toks = [text[:1], text[1:]]
                if chat:
                    choice["logprobs"] = {"content": [
                        {"token": t, "logprob": -0.5, "top_logprobs": [{"token": t, "logprob": -0.5}]}
                        for t in toks]}
                else:
                    choice["logprobs"] = {"tokens": toks, "token_logprobs": [-0.5, -0.5],
                                          "top_logprobs": [{t: -0.5} for t in toks]}
            self.send(200, {"id": "cmpl-1", "object": "chat.completion" if chat else "text_completion",
                            "model": name, "choices": [choice],
                            "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}})

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"INFO stand-in vLLM: serving on {args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # pragma: no cover
        pass
    return 0


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.exit(main())
