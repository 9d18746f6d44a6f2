"""The GPU cold-start bench's synthetic checkpoint and the baselines zeroserve is measured against.

Used by bench/gpu_cold_start.py (not run on its own): a random Llama checkpoint in safetensors
shards, the page cache warmed over it, the naive path (a fresh process, ``from_pretrained``, one
token), in-process read throughput (this repository's loader vs a plain ``preadv`` vs
``safetensors.torch.load_file``) and pinned host-to-device copy throughput.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "3.6b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                 num_key_value_heads=8, vocab_size=128256),
    "small": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12,
                  num_key_value_heads=4, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
}

NAIVE = r"""
import sys, time
import torch
from transformers import AutoModelForCausalLM
device = "cuda" if torch.cuda.is_available() else "cpu"
try:
    import accelerate  # noqa: F401  (device_map loads straight to the GPU; without it, load then move)
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16, device_map=device)
    how = "device_map"
except ImportError:
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16).to(device)
    how = "to(device)"
out = model.generate(torch.tensor([[104, 105]], device=device), max_new_tokens=1, min_new_tokens=1,
                     do_sample=False)
if device == "cuda":
    torch.cuda.synchronize()
print("token", int(out[0, -1]), how, flush=True)
"""



def make_checkpoint(workdir: Path, preset: str, cuda: bool) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = workdir / f"llama-{preset}"
    if (path / "done").exists():
        return path
    config = LlamaConfig(**PRESETS[preset], max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model: Any = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16)
    sizes = [p.numel() * p.element_size() for p in model.parameters()]
    # The first shard fills past half, the second takes the rest: two shards.
    model.save_pretrained(path, max_shard_size=sum(sizes) // 2 + max(sizes))
    (path / "done").write_text("")
    del model
    return path


def warm_page_cache(model_dir: Path) -> int:
    total = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with f.open("rb") as fh:
            while chunk := fh.read(64 << 20):
                total += len(chunk)
    return total


def run_naive(model_dir: Path) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", NAIVE, str(model_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - started
    proc.wait()
    if not line.startswith("token"):
        raise RuntimeError(f"naive path failed (exit {proc.returncode})")
    return elapsed, line.split()[-1]


def reader_comparison(model_dir: Path, device: str) -> dict[str, float]:
    """GB/s of this repository's loader vs safetensors.torch.load_file, same files, same process."""
    import safetensors.torch
    import torch

    from runtime.shard_reader import Loader
    from runtime.shards import read_header, shard_files

    files = shard_files(model_dir)
    shards = [read_header(f) for f in files]
    loader = Loader()
    loader.warm(torch.device(device))
    best_ours, best_ref, best_plain = 0.0, 0.0, 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for f in files:   # the baseline: one thread, one preadv per shard into a fresh host buffer
            buf = bytearray(f.stat().st_size)
            fd = os.open(f, os.O_RDONLY)
            try:
                os.preadv(fd, [buf], 0)
            finally:
                os.close(fd)
            del buf
        best_plain = max(best_plain, sum(f.stat().st_size for f in files) / (time.perf_counter() - t0) / 1e9)
        dest = loader.allocate(shards, torch.device(device))
        stats = loader.read(shards, dest)
        best_ours = max(best_ours, stats.gbps)
        del dest
        t0 = time.perf_counter()
        ref = [safetensors.torch.load_file(f, device=device) for f in files]
        if device != "cpu":
            torch.cuda.synchronize()
        best_ref = max(best_ref, stats.bytes_read / (time.perf_counter() - t0) / 1e9)
        del ref
    return {"loader_GBps": best_ours, "plain_pread_GBps": best_plain, "safetensors_load_file_GBps": best_ref,
            "readers": loader.readers}


def h2d_pinned_gbps() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    n = 1 << 30
    host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(n, dtype=torch.uint8, device="cuda")
    dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        best = max(best, n / (time.perf_counter() - t0) / 1e9)
    del host, dev
    torch.cuda.empty_cache()
    return best
