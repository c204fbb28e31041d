"""Creates a container in Azurite (the Azure Storage emulator), signed with its
well-known development account key. Usage: azure_container.py PORT CONTAINER"""
import base64
import hashlib
import hmac
import sys
import urllib.request
from email.utils import formatdate

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
VERSION = "2021-08-06"

port, container = sys.argv[1], sys.argv[2]
date = formatdate(usegmt=True)
# SharedKey string to sign: the verb, eleven empty standard headers, the x-ms- headers
# and the resource (Azurite's path-style URLs carry the account twice).
to_sign = (
    "PUT\n" + "\n" * 11
    + f"x-ms-date:{date}\nx-ms-version:{VERSION}\n"
    + f"/{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container"
)
signature = base64.b64encode(
    hmac.new(base64.b64decode(KEY), to_sign.encode(), hashlib.sha256).digest()
).decode()
request = urllib.request.Request(
    f"http://127.0.0.1:{port}/{ACCOUNT}/{container}?restype=container",
    method="PUT",
    headers={
        "x-ms-date": date,
        "x-ms-version": VERSION,
        "Authorization": f"SharedKey {ACCOUNT}:{signature}",
        "Content-Length": "0",
    },
)
urllib.request.urlopen(request)
