# The model child of toolkit.cluster.scoring: run as `python -I -c <this source>` inside the confinement launcher,
# so it imports nothing from the toolkit (the toolkit's files are out of its reach). It is untrusted the
# moment it imports candidate code; the trusted scorer checks everything it sends back.
import json
import mmap
import os
import sys
import traceback

import torch

DTYPES = {"int64": torch.int64, "int32": torch.int32}


def read_exact(f, n):
    data = b""
    while len(data) < n:
        chunk = f.read(n - len(data))
        if not chunk:
            raise EOFError("the scorer closed the pipe")
        data += chunk
    return data


def reply(out, header, payload=b"", shm=None):
    n = len(payload)
    if shm is not None and 0 < n <= len(shm):   # logits: through the scorer's shared buffer, not the pipe
        shm[:n] = payload
        out.write(json.dumps({**header, "nbytes": 0, "shm": True}).encode() + b"\n")
        return
    out.write(json.dumps({**header, "nbytes": n}).encode() + b"\n")
    out.write(payload)


def as_payload(value):
    logits = value[0] if isinstance(value, (tuple, list)) else value
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"forward(x) must return a tensor (or a tuple starting with one), got {type(logits).__name__}")
    logits = logits.detach().to("cpu")
    if logits.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        logits = logits.float()
    name = str(logits.dtype).replace("torch.", "")
    raw = logits.contiguous().view(torch.uint8).numpy().data.cast("B") if logits.numel() else b""
    return {"ok": True, "dtype": name, "shape": list(logits.shape)}, raw


def main():
    read_fd, write_fd, shm_fd = (int(v) for v in os.environ.pop("TOOLKIT_CHILD_FDS").split(","))
    inp, out = os.fdopen(read_fd, "rb", buffering=0), os.fdopen(write_fd, "wb", buffering=0)
    shm = mmap.mmap(shm_fd, os.fstat(shm_fd).st_size)
    namespace: dict = {}   # the loader's globals
    while True:
        line = inp.readline()
        if not line:
            return
        header = json.loads(line)
        payload = read_exact(inp, header["nbytes"]) if header["nbytes"] else b""
        try:
            if header["op"] == "load":
                sys.path.insert(0, header["code_dir"])
                exec(compile(header["loader"], "<scorer loader>", "exec"), namespace)
                reply(out, {"ok": True, "dtype": "float32", "shape": [0]})
            else:
                x = torch.frombuffer(bytearray(payload), dtype=DTYPES[header["dtype"]]).reshape(header["shape"])
                with torch.no_grad():
                    head, raw = as_payload(namespace["forward"](x))
                reply(out, head, raw, shm)
        except Exception:
            reply(out, {"ok": False, "error": traceback.format_exc()[-3000:]})


if __name__ == "__main__":
    main()
