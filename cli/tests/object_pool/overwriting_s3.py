#!/usr/bin/env python3
"""A store that accepts the create-only header and overwrites anyway.

Some S3-compatible stores take `If-None-Match: *` on a PUT and ignore it. On such a
store two machines could not be kept from writing one pool, and `dfs add-disk` must
refuse it by name. This is the smallest S3 endpoint the object-disk client needs (list,
put, get, delete; no signatures checked), kept in memory, with exactly that defect.

Usage: overwriting_s3.py PORT_FILE   (listens on 127.0.0.1, an ephemeral port written
to PORT_FILE once it listens; serves until killed).
"""
import email.utils
import hashlib
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

OBJECTS = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def split(self):
        url = urlsplit(self.path)
        parts = url.path.lstrip("/").split("/", 1)
        return parts[0], unquote(parts[1]) if len(parts) > 1 else "", parse_qs(url.query)

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def meta(self, data, stamp):
        return [("ETag", '"%s"' % hashlib.md5(data).hexdigest()),
                ("Last-Modified", email.utils.formatdate(stamp, usegmt=True))]

    def do_PUT(self):
        bucket, key, _ = self.split()
        data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        OBJECTS[(bucket, key)] = (data, time.time())  # If-None-Match ignored: the defect
        self.reply(200, headers=self.meta(data, time.time()))

    def do_GET(self):
        bucket, key, query = self.split()
        if not key:
            prefix = query.get("prefix", [""])[0]
            keys = sorted(k for (b, k) in OBJECTS if b == bucket and k.startswith(prefix))
            items = "".join(
                "<Contents><Key>%s</Key><Size>%d</Size><LastModified>%s</LastModified><ETag>\"%s\"</ETag></Contents>"
                % (escape(k), len(OBJECTS[(bucket, k)][0]),
                   time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(OBJECTS[(bucket, k)][1])),
                   hashlib.md5(OBJECTS[(bucket, k)][0]).hexdigest())
                for k in keys)
            body = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>%s</Name><Prefix>%s</Prefix>'
                    "<KeyCount>%d</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>%s"
                    "</ListBucketResult>" % (escape(bucket), escape(prefix), len(keys), items)).encode()
            self.reply(200, body, [("Content-Type", "application/xml")])
            return
        found = OBJECTS.get((bucket, key))
        if found is None:
            body = b'<?xml version="1.0"?><Error><Code>NoSuchKey</Code><Message>none</Message></Error>'
            self.reply(404, body, [("Content-Type", "application/xml")])
            return
        self.reply(200, found[0], self.meta(*found))

    do_HEAD = do_GET

    def do_DELETE(self):
        bucket, key, _ = self.split()
        OBJECTS.pop((bucket, key), None)
        self.reply(204)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[1] + ".tmp", "w") as out:
    out.write(str(server.server_address[1]))
import os
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
server.serve_forever()
