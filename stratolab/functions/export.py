"""Export a bundle as a directory that builds into an image serving the function anywhere.

The directory holds the bundle, the few modules of this package that load a bundle, a stdlib HTTP
server (`serve.py`: POST / with JSON or bytes, GET /healthz) and a Dockerfile that installs the
bundle's pinned requirements. No Stratolab installation is needed where it runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from stratolab.functions.bundle import Manifest

RUNTIME_MODULES = ["errors.py", "functions/__init__.py", "functions/analysis.py", "functions/bundle.py",
                   "functions/requirements.py", "functions/serializers.py", "platform/__init__.py",
                   "platform/archive.py", "functions/runtime/__init__.py", "functions/runtime/arrays.py",
                   "functions/runtime/batching.py", "functions/runtime/payloads.py"]

SERVE_PY = '''"""Serve the exported function: POST / (JSON or bytes) -> the handler's answer; GET /healthz."""
import json
import os
import sys
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from stratolab.functions.bundle import load_handler  # noqa: E402
from stratolab.functions.runtime.arrays import ArrayInput, array_kind  # noqa: E402

HANDLER = load_handler(Path(__file__).parent / "bundle")
KIND = array_kind(HANDLER)
#: a handler annotated numpy.ndarray or torch.Tensor gets its input as one (as on the platform)
ARRAYS = ArrayInput(KIND) if KIND else None


class Handler(BaseHTTPRequestHandler):
    def _send(self, status, body, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/healthz":
            self._send(200, b'{"ok": true}')
        else:
            self._send(404, b'{"error": "POST / to invoke"}')

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ctype = self.headers.get("Content-Type", "application/json")
        if ARRAYS is not None:  # its array straight from the text where it can be (arrays.py)
            try:
                payload = ARRAYS.to_handler(ARRAYS.from_body(ctype, body))
            except ValueError as e:
                return self._send(400, json.dumps({"error": str(e)}).encode())
        else:
            try:
                payload = json.loads(body) if ctype.startswith("application/json") else body
            except ValueError as e:
                return self._send(400, json.dumps({"error": f"invalid JSON: {e}"}).encode())
        try:
            result = HANDLER(payload)
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            print(f"[error {error_id}]", file=sys.stderr)
            traceback.print_exc()
            return self._send(500, json.dumps({"error": "the function raised an error", "error_id": error_id}).encode())
        if isinstance(result, (bytes, bytearray)):
            return self._send(200, bytes(result), "application/octet-stream")
        self._send(200, json.dumps(result, default=lambda v: v.tolist()).encode())


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
'''

DOCKERFILE = """FROM python:{python}-slim
WORKDIR /app
COPY bundle/requirements.txt /app/bundle/requirements.txt
RUN pip install --no-cache-dir cloudpickle numpy orjson pysimdjson -r /app/bundle/requirements.txt
COPY . /app
ENV PORT=8080
EXPOSE 8080
USER 65534
CMD ["python", "/app/serve.py"]
"""


def export_bundle(bundle: Path, target: Path) -> Path:
    """Write `target/` (must not exist) from a bundle directory."""
    target = Path(target)
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    manifest = Manifest.read(bundle)
    shutil.copytree(bundle, target / "bundle")
    for path in [target / "bundle", *(target / "bundle").rglob("*")]:  # an image's user may not be root
        path.chmod(0o755 if path.is_dir() else 0o644)
    package = Path(__file__).resolve().parent.parent
    for rel in RUNTIME_MODULES:
        dest = target / "stratolab" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(package / rel, dest)
    (target / "stratolab" / "__init__.py").write_text('"""Stratolab function runtime (exported)."""\n')
    (target / "serve.py").write_text(SERVE_PY)
    (target / "Dockerfile").write_text(DOCKERFILE.format(python=manifest.python))
    (target / "README.md").write_text(
        f"# {manifest.handler}\n\n`docker build -t fn . && docker run -p 8080:8080 fn`, then "
        "`curl -X POST -H 'Content-Type: application/json' -d '...' localhost:8080/`.\n"
        "Without Docker: `pip install -r bundle/requirements.txt cloudpickle numpy orjson pysimdjson && python serve.py`.\n"
    )
    return target
