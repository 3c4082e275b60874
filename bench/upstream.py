"""A minimal OpenAI-compatible upstream for the streaming bench (bench/stream.py).

    .venv/bin/python bench/upstream.py --port 8765

POST /v1/chat/completions streams `chunks=N` chunks (N read from the last message's
content, e.g. "chunks=10000"), each one `CHUNK_TEXT` of content in OpenAI's chunk
format, then a finish chunk, a usage chunk (prompt 16 tokens, completion N) and
`[DONE]`, as an OpenAI-style server does with `stream_options.include_usage`. Without
`stream` it answers the same text in one JSON completion.

Every chunk is written (and so sent) on its own, as a model writes tokens; the bytes are
built once, so the upstream's own cost per chunk is one socket write. It runs in its own
process, so it does not share the bench's or the server's interpreter. HTTP/1.0: the body
ends when the connection closes, which any HTTP client reads.
"""

from __future__ import annotations

import argparse
import json
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK_TEXT = "lorem "
PROMPT_TOKENS = 16
_CHUNKS = re.compile(r"chunks=(\d+)")


def _chunk(model: str, delta: dict[str, str], finish: str | None) -> bytes:
    payload = {
        "id": "chatcmpl-upstream",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *_args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        model = body.get("model", "bench/stream")
        found = _CHUNKS.search(str(body["messages"][-1].get("content", "")))
        chunks = int(found.group(1)) if found else 100
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": chunks,
            "total_tokens": PROMPT_TOKENS + chunks,
        }
        if not body.get("stream"):
            answer = {
                "id": "chatcmpl-upstream",
                "object": "chat.completion",
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": CHUNK_TEXT * chunks},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        piece = _chunk(model, {"content": CHUNK_TEXT}, None)
        try:
            self.wfile.write(_chunk(model, {"role": "assistant", "content": ""}, None))
            for _ in range(chunks):
                self.wfile.write(piece)
            self.wfile.write(_chunk(model, {}, "stop"))
            tail = {"id": "chatcmpl-upstream", "object": "chat.completion.chunk", "created": 0}
            tail |= {"model": model, "choices": [], "usage": usage}
            self.wfile.write(f"data: {json.dumps(tail)}\n\ndata: [DONE]\n\n".encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client (the engine, cutting a stream) went away


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
