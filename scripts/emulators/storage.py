#!/usr/bin/env python3
"""Cloud Storage emulator for DevGem's tests: PyPI `gcp-storage-emulator`, patched in-process so that
the official Rust client (`google-cloud-storage`) works against it. Nothing in site-packages is
edited; everything below only wraps the package's objects at start-up.

    python3 scripts/emulators/storage.py --port 9023 --bucket devgem-test

Serves http://127.0.0.1:PORT until killed, or until its standard input closes (the parent that
started it went away), in memory. What the Rust client needs beyond the package (the shims):

1. gRPC on the same port. `StorageControl` (list, delete) speaks gRPC (google.storage.v2.Storage)
   while `Storage` (read, write) speaks the JSON API over HTTP/1.1; both get one endpoint. A
   connection that opens with the HTTP/2 preface is piped to a small grpcio server that answers
   ListObjects and DeleteObject from the emulator's own storage (protobuf encoded by hand below,
   because no Python package ships the storage v2 protos).
2. Media downloads carry `x-goog-generation` (and the metageneration and stored length): the Rust
   reader refuses a response without it, since it pins the generation when it resumes a read.
3. One thread per connection (the package serves one request at a time, so a piped gRPC
   connection would block HTTP forever), with a lock around every storage operation: the package's
   storage is not thread-safe, and a reader must see a whole object, old or new, never a mix.
4. In memory, the package still serialises the metadata of every object to JSON after each write;
   that makes each write O(objects) and is skipped.
5. The bucket has soft delete off, so a delete frees the object at once (the package keeps a copy
   of every deleted object for 7 days otherwise).
6. The Host header gets its port back: the Rust client sends only the host of a custom endpoint,
   and the package builds the resumable-upload session URL from that header.
"""

import argparse
import os
import socket
import sys
import threading
from concurrent import futures
from functools import partial
from http import server as http_server

try:
    import grpc
    from gcp_storage_emulator import server as emulator
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import buckets, objects
    from gcp_storage_emulator.storage import Storage
except ImportError as missing:  # pragma: no cover - depends on the machine
    sys.stderr.write(
        f"the Cloud Storage emulator needs Python packages gcp-storage-emulator and grpcio "
        f"({missing}); run scripts/install-tools.sh\n"
    )
    sys.exit(3)

HTTP2_PREFACE = b"PRI * HTTP/2.0"
BUCKET_PREFIX = "projects/_/buckets/"
DEFAULT_PAGE_SIZE = 1000

# Shim 3: one lock for all storage access, HTTP and gRPC alike.
STORAGE_LOCK = threading.Lock()


# --- protobuf wire format, just what the storage v2 messages below need -----------------------


def _varint(value):
    value &= (1 << 64) - 1  # negative int64 values are ten-byte varints
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number, wire_type):
    return _varint((number << 3) | wire_type)


def _enc_string(number, text):
    data = text.encode("utf-8")
    return _field(number, 2) + _varint(len(data)) + data if data else b""


def _enc_message(number, data):
    return _field(number, 2) + _varint(len(data)) + data


def _enc_int(number, value):
    return _field(number, 0) + _varint(int(value)) if value else b""


def _decode(data):
    """Message bytes -> {field number: [values]}; varints as int, length-delimited as bytes."""
    fields = {}
    pos = 0

    def read_varint():
        nonlocal pos
        shift = result = 0
        while True:
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    while pos < len(data):
        key = read_varint()
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value = read_varint()
        elif wire_type == 2:
            length = read_varint()
            value = data[pos : pos + length]
            pos += length
        elif wire_type == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire_type == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        fields.setdefault(number, []).append(value)
    return fields


def _text(fields, number):
    return fields.get(number, [b""])[-1].decode("utf-8")


def _int(fields, number):
    return fields.get(number, [0])[-1]


# --- shim 1: the gRPC side (google.storage.v2.Storage) ----------------------------------------


def _bucket_id(context, name):
    if not name.startswith(BUCKET_PREFIX):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bucket must be {BUCKET_PREFIX}NAME: {name!r}")
    return name[len(BUCKET_PREFIX) :]


def _object_message(resource, bucket_name):
    """A storage v2 Object (name 1, bucket 2, generation 3, metageneration 4, storage_class 5,
    size 6, content_type 13, etag 27) from the package's JSON resource."""
    return b"".join(
        [
            _enc_string(1, resource.get("name") or ""),
            _enc_string(2, BUCKET_PREFIX + bucket_name),
            _enc_int(3, resource.get("generation") or 0),
            _enc_int(4, resource.get("metageneration") or 0),
            _enc_string(5, resource.get("storageClass") or ""),
            _enc_int(6, resource.get("size") or 0),
            _enc_string(13, resource.get("contentType") or ""),
            _enc_string(27, resource.get("etag") or ""),
        ]
    )


def make_grpc_handler(storage):
    def list_objects(request, context):
        # ListObjectsRequest: parent 1, page_size 2, page_token 3, delimiter 4, prefix 6.
        fields = _decode(request)
        bucket_name = _bucket_id(context, _text(fields, 1))
        page_size = _int(fields, 2) or DEFAULT_PAGE_SIZE
        page_token = _text(fields, 3)
        delimiter = _text(fields, 4) or None
        prefix = _text(fields, 6) or None
        with STORAGE_LOCK:
            try:
                items, prefixes = storage.get_file_list(bucket_name, prefix, delimiter)
            except NotFound:
                context.abort(grpc.StatusCode.NOT_FOUND, f"bucket {bucket_name} not found")
        # The page token is the last name of the previous page: names are unique and sorted.
        items = [item for item in items if not page_token or item["name"] > page_token]
        page, rest = items[:page_size], items[page_size:]
        # ListObjectsResponse: objects 1, prefixes 2, next_page_token 3.
        out = [_enc_message(1, _object_message(item, bucket_name)) for item in page]
        if not page_token:
            out += [_enc_string(2, p) for p in prefixes]
        if rest:
            out.append(_enc_string(3, page[-1]["name"]))
        return b"".join(out)

    def delete_object(request, context):
        # DeleteObjectRequest: bucket 1, object 2. The answer is google.protobuf.Empty.
        fields = _decode(request)
        bucket_name = _bucket_id(context, _text(fields, 1))
        name = _text(fields, 2)
        with STORAGE_LOCK:
            try:
                storage.delete_file(bucket_name, name)
            except NotFound:
                context.abort(grpc.StatusCode.NOT_FOUND, f"No such object: {bucket_name}/{name}")
        return b""

    # No (de)serializers: the handlers take and return the raw message bytes.
    return grpc.method_handlers_generic_handler(
        "google.storage.v2.Storage",
        {
            "ListObjects": grpc.unary_unary_rpc_method_handler(list_objects),
            "DeleteObject": grpc.unary_unary_rpc_method_handler(delete_object),
        },
    )


def _pipe(source, sink):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --- shims 2 and 3: the HTTP side ---------------------------------------------------------------


class Handler(emulator.RequestHandler):
    grpc_port = None
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm can hold
    # the second one until the client's delayed ACK (up to 40 ms).
    disable_nagle_algorithm = True

    def handle(self):
        # MSG_PEEK leaves the bytes for whoever handles the connection.
        try:
            head = self.connection.recv(len(HTTP2_PREFACE), socket.MSG_PEEK)
        except OSError:
            return
        if head.startswith(b"PRI "):
            with socket.create_connection(("127.0.0.1", self.grpc_port)) as upstream:
                # Small HTTP/2 frames both ways: without this, Nagle's algorithm meets delayed ACKs
                # and a gRPC call takes 40 ms instead of one.
                for sock in (upstream, self.connection):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                back = threading.Thread(target=_pipe, args=(upstream, self.connection), daemon=True)
                back.start()
                _pipe(self.connection, upstream)
                back.join()
            return
        super().handle()

    def parse_request(self):
        ok = super().parse_request()
        # Shim 6: the Rust client sends `Host: 127.0.0.1` without the port (it only keeps the
        # host of a custom endpoint), and the package builds the resumable upload URL from the
        # Host header: put the port back, or the client would upload to port 80.
        host = self.headers.get("Host")
        if ok and host and ":" not in host.rsplit("]", 1)[-1]:
            del self.headers["Host"]
            self.headers["Host"] = f"{host}:{self.server.server_address[1]}"
        return ok


def _locked(route):
    def run(request, response, storage, *args, **kwargs):
        with STORAGE_LOCK:
            return route(request, response, storage, *args, **kwargs)

    return run


def _download_with_generation(request, response, storage, *args, **kwargs):
    objects.download(request, response, storage, *args, **kwargs)
    if response.status.value >= 300:
        return
    try:
        resource = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except NotFound:
        return
    response["x-goog-generation"] = str(resource.get("generation") or 0)
    response["x-goog-metageneration"] = str(resource.get("metageneration") or 1)
    response["x-goog-stored-content-length"] = str(resource.get("size") or 0)
    response["x-goog-stored-content-encoding"] = "identity"


def patch_routes():
    # The routes table holds the handler functions themselves, so patching the module attribute
    # would not reach them: swap them in the table.
    for _regex, methods in emulator.HANDLERS:
        for method, route in list(methods.items()):
            if route is objects.download:
                route = _download_with_generation
            elif route is objects.get:
                # `get` with alt=media serves the data: route it through the download shim.
                route = _get_or_download
            methods[method] = _locked(route)


def _get_or_download(request, response, storage, *args, **kwargs):
    if request.query.get("alt") and request.query.get("alt")[0] == "media":
        return _download_with_generation(request, response, storage, *args, **kwargs)
    return objects.get(request, response, storage, *args, **kwargs)


def _exit_when_stdin_closes():
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, ValueError):
        pass
    os._exit(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket (repeatable)")
    parser.add_argument(
        "--no-stdin-watch",
        action="store_true",
        help="keep running when standard input closes (for running it by hand in the background)",
    )
    args = parser.parse_args()

    storage = Storage(use_memory_fs=True)
    storage._write_config_to_file = lambda: None  # shim 4
    for name in args.bucket:
        bucket = buckets.create_bucket(name, storage)
        if bucket:
            bucket["softDeletePolicy"] = {"retentionDurationSeconds": "0"}  # shim 5

    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    grpc_server.add_generic_rpc_handlers((make_grpc_handler(storage),))
    Handler.grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()

    patch_routes()
    httpd = http_server.ThreadingHTTPServer((args.host, args.port), partial(Handler, storage))
    httpd.daemon_threads = True
    if not args.no_stdin_watch:
        threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()
    print(f"Cloud Storage emulator on http://{args.host}:{httpd.server_address[1]}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        grpc_server.stop(0)


if __name__ == "__main__":
    main()
