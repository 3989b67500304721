"""latency target: the HTTP server around handler.py (LOCKED).

    python server.py [--port N]     serve on 127.0.0.1 (N = 0: a free port); prints `port: N`

A threading HTTP/1.1 server (keep-alive). Every GET is passed to handler.handle(path, query);
its (status, body) is sent as JSON. An exception in the handler is a 500.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import handler


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True     # no 40 ms Nagle + delayed-ACK stalls on keep-alive

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            status, body = handler.handle(url.path, query)
            data = json.dumps(body, separators=(",", ":")).encode()
        except Exception as e:  # the handler's bug is the experiment's crash, not the server's
            status, data = 500, json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main(argv: list[str]) -> int:
    port = int(argv[argv.index("--port") + 1]) if "--port" in argv else 0
    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    httpd.daemon_threads = True
    print(f"port: {httpd.server_address[1]}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
