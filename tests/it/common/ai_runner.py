#!/usr/bin/env python3
"""An independent ai-runner-compatible HTTP runner for comine's tests.

Implements the part of livepeer/ai-runner's API (runner/openapi.yaml, 0.14) that comine's
HTTP-runner backend uses, over Python onnxruntime and Pillow, with no code shared with
comine:
  GET  /health         {"status": "LOADING"} until the model is loaded, then {"status": "OK"}
  GET  /version        {"pipeline", "model_id", "version"}
  GET  /hardware/info  {"pipeline", "model_id", "gpu_info": {}}
  POST /upscale        multipart: image, model_id, ... -> ImageResponse with a data: URL PNG
Errors are HTTPError {"detail": {"msg": ...}}. With AUTH_TOKEN set, requests need
`Authorization: Bearer <token>`.

Usage: ai_runner.py MODEL.onnx MODEL_ID [--load-delay S] [--garbage] [--threads N]
Prints "PORT <n>" on stdout once it listens on 127.0.0.1 (port from $PORT, default 0).
"""
import base64
import email.parser
import email.policy
import io
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnxruntime as ort
from PIL import Image

VERSION = "0.14.1-comine-test"


def main():
    args = sys.argv[1:]
    if len(args) < 2:
        sys.exit("usage: ai_runner.py MODEL.onnx MODEL_ID [--load-delay S] [--garbage] [--threads N]")
    model_path, model_id = args[0], args[1]
    delay = float(args[args.index("--load-delay") + 1]) if "--load-delay" in args else 0.0
    threads = int(args[args.index("--threads") + 1]) if "--threads" in args else 1
    garbage = "--garbage" in args
    token = os.environ.get("AUTH_TOKEN")
    state = {"session": None}
    lock = threading.Lock()

    def load():
        time.sleep(delay)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        state["session"] = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])

    threading.Thread(target=load, daemon=True).start()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def send_json(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def error(self, code, msg):
            self.send_json(code, {"detail": {"msg": msg}})

        def authorised(self):
            if token and self.headers.get("Authorization") != f"Bearer {token}":
                self.error(401, "Invalid bearer token")
                return False
            return True

        def do_GET(self):
            if not self.authorised():
                return
            if self.path == "/health":
                self.send_json(200, {"status": "OK" if state["session"] else "LOADING"})
            elif self.path == "/version":
                self.send_json(200, {"pipeline": "upscale", "model_id": model_id, "version": VERSION})
            elif self.path == "/hardware/info":
                self.send_json(200, {"pipeline": "upscale", "model_id": model_id, "gpu_info": {}})
            else:
                self.error(404, "Not Found")

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if not self.authorised():
                return
            if self.path != "/upscale":
                self.error(404, "Not Found")
                return
            if garbage:
                raw = b"<html>502 upstream says hello</html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
                return
            ctype = self.headers.get("Content-Type", "")
            if not ctype.startswith("multipart/form-data"):
                self.error(400, "expected multipart/form-data")
                return
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {ctype}\r\n\r\n".encode() + body
            )
            fields, image = {}, None
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if name == "image":
                    image = part.get_payload(decode=True)
                else:
                    fields[name] = part.get_content()
            if fields.get("model_id", "") not in ("", model_id):
                self.error(400, f"pipeline configured with {model_id} but called with {fields['model_id']}")
                return
            if image is None:
                self.error(400, "image is required")
                return
            if state["session"] is None:
                self.error(503, "pipeline is loading")
                return
            try:
                rgb = Image.open(io.BytesIO(image)).convert("RGB")
            except Exception as e:  # noqa: BLE001 - any decoder failure is the client's input
                self.error(400, f"cannot read the image: {e}")
                return
            x = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
            with lock:
                y = state["session"].run(None, {"input": x})[0]
            out = (np.clip(y[0], 0.0, 1.0) * 255.0).round().astype(np.uint8).transpose(1, 2, 0)
            buf = io.BytesIO()
            Image.fromarray(out).save(buf, format="PNG")
            url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
            self.send_json(200, {"images": [{"url": url, "seed": int(fields.get("seed", "0") or 0), "nsfw": False}]})

    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "0"))), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
