#!/usr/bin/env python3
"""A mail server for the tests (aiosmtpd): STARTTLS required, then AUTH (PLAIN or LOGIN)
with one user and password; each message accepted is written to DIR/N.eml.

usage: smtp_sink.py PORT DIR CERT KEY USER PASSWORD
"""
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

port, directory, cert, key, user, password = sys.argv[1:7]
count = 0
lock = threading.Lock()


class Save:
    async def handle_DATA(self, server, session, envelope):
        global count
        with lock:
            count += 1
            path = f"{directory}/{count}.eml"
        with open(path + ".tmp", "wb") as f:
            f.write(envelope.original_content)
        import os
        os.rename(path + ".tmp", path)
        return "250 OK"


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login.decode() == user and auth_data.password.decode() == password
    return AuthResult(success=ok)


context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
controller = Controller(
    Save(),
    hostname="127.0.0.1",
    port=int(port),
    tls_context=context,
    require_starttls=True,
    auth_require_tls=True,
    authenticator=authenticate,
)
controller.start()
print("ready", flush=True)
threading.Event().wait()
