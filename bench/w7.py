"""W7: 20,000 unary gRPC calls, 64 in flight, to etcd's KV/Range (serializable,
one small key) with python3-grpcio's grpc.aio; messages from the same .proto
through protoc and python3-protobuf. Args: TARGET PROTO [N [K]]. Prints calls
per second."""
import asyncio
import os
import subprocess
import sys
import tempfile
import time

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def messages(proto):
    out = tempfile.mktemp(suffix=".pb")
    subprocess.run(["protoc", "--include_imports", "--descriptor_set_out=" + out,
                    "--proto_path=" + os.path.dirname(os.path.abspath(proto)), proto], check=True)
    fds = descriptor_pb2.FileDescriptorSet.FromString(open(out, "rb").read())
    os.unlink(out)
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        pool.Add(fd)
    f = message_factory.MessageFactory(pool)
    get = lambda n: f.GetPrototype(pool.FindMessageTypeByName(n))  # noqa: E731
    return get("etcdserverpb.RangeRequest"), get("etcdserverpb.RangeResponse")


async def main():
    target, proto = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 20000
    k = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    Req, Resp = messages(proto)
    async with grpc.aio.insecure_channel(target) as ch:
        rng = ch.unary_unary("/etcdserverpb.KV/Range", request_serializer=Req.SerializeToString,
                             response_deserializer=Resp.FromString)
        req = Req(key=b"w7", serializable=True)
        state = {"next": 0, "bad": 0}

        async def worker():
            while state["next"] < n:
                state["next"] += 1
                r = await rng(req)
                if r.kvs[0].value != b"value":
                    state["bad"] += 1

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(k)))
        dt = time.monotonic() - t0
    if state["bad"]:
        raise SystemExit(f"{state['bad']} calls returned a wrong value")
    print(f"RESULT calls_per_s={n / dt:.1f} n={n} wall_s={dt:.4f}")


asyncio.run(main())
