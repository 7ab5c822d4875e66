import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TODOS = []


class Handler(BaseHTTPRequestHandler):
    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/todos":
            self._send(200, TODOS)
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        try:
            item = json.loads(self.rfile.read(length))
        except json.JSONDecodeError:
            return self._send(400, {"error": "body is not JSON"})
        TODOS.append(item)
        self._send(201, item)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", 8000), Handler).serve_forever()
