"""The fast loader's tensors equal safetensors' bit for bit; the model it builds equals from_pretrained's."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("safetensors")

import safetensors.torch as st
import torch

from runtime.loader import load_model
from runtime.shard_reader import Loader, load_file, plan_chunks
from runtime.shards import LoaderError, read_header, shard_files

CPU = torch.device("cpu")


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert _bits(a[name]) == _bits(b[name]), name


def _mixed_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {
        "f32": torch.randn(33, 17, generator=g),
        "f16": torch.randn(5, 300, generator=g).half(),
        "bf16": torch.randn(129, 65, generator=g).to(torch.bfloat16),
        "f64": torch.randn(7, generator=g).double(),
        "i64": torch.randint(-(2**40), 2**40, (11,), generator=g),
        "i32": torch.randint(-5, 5, (3, 3), dtype=torch.int32, generator=g),
        "i8": torch.randint(-128, 127, (19,), dtype=torch.int8, generator=g),
        "u8": torch.randint(0, 255, (23,), dtype=torch.uint8, generator=g),
        "bool": torch.rand(13, generator=g) > 0.5,
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "nan_inf": torch.tensor([float("nan"), float("inf"), -0.0], dtype=torch.bfloat16),
    }


@pytest.mark.parametrize("chunk_bytes", [64, 4096, 64 << 20])
@pytest.mark.parametrize("readers", [1, 3])
def test_mixed_dtypes_bit_exact(tmp_path: Path, chunk_bytes: int, readers: int) -> None:
    path = tmp_path / "mixed.safetensors"
    st.save_file(_mixed_tensors(), path, metadata={"format": "pt"})
    ours = load_file(path, loader=Loader(readers=readers, chunk_bytes=chunk_bytes))
    _same(ours, st.load_file(path))


def test_chunks_cover_every_byte_once(tmp_path: Path) -> None:
    path = tmp_path / "mixed.safetensors"
    st.save_file(_mixed_tensors(), path)
    shard = read_header(path)
    entries = {e.name: e for e in shard.entries}
    chunks = plan_chunks([shard], chunk_bytes=100)
    assert all(c.nbytes <= 100 for c in chunks)
    seen: dict[str, list[tuple[int, int]]] = {}
    for c in chunks:
        assert sum(p.nbytes for p in c.pieces) == c.nbytes
        for p in c.pieces:
            # the byte read from the file is the byte the tensor holds at that offset
            assert c.file_offset + p.chunk_offset == entries[p.name].offset_bytes + p.dest_offset
            seen.setdefault(p.name, []).append((p.dest_offset, p.nbytes))
    for name, e in entries.items():
        spans = sorted(seen.get(name, []))
        assert [s for s, _ in spans] == [sum(n for _, n in spans[:i]) for i in range(len(spans))]
        assert sum(n for _, n in spans) == e.nbytes, name


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_llama_untied"])
def test_checkpoint_shards_bit_exact(fixture: str, request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(fixture)
    files = shard_files(model_dir)
    if fixture == "tiny_llama":
        assert len(files) >= 2, "the fixture is meant to have several shards"
    reference: dict[str, torch.Tensor] = {}
    for f in files:
        reference.update(st.load_file(f))
    loader = Loader(readers=2, chunk_bytes=8192)
    shards = [read_header(f) for f in files]
    ours = loader.allocate(shards, CPU)
    stats = loader.read(shards, ours)
    assert stats.bytes_read == sum(t.numel() * t.element_size() for t in reference.values())
    _same(ours, reference)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_llama_untied"])
def test_model_matches_from_pretrained(fixture: str, request: pytest.FixtureRequest) -> None:
    from transformers import AutoModelForCausalLM

    model_dir: Path = request.getfixturevalue(fixture)
    dtype = torch.bfloat16 if fixture == "tiny_llama" else torch.float32
    reference: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    reference.eval()
    loaded = load_model(model_dir, CPU, loader=Loader(readers=2, chunk_bytes=4096))
    model = loaded.model
    tied = fixture == "tiny_llama"
    assert (model.lm_head.weight is model.model.embed_tokens.weight) is tied
    if tied:
        assert "lm_head.weight" not in loaded.tensors    # the checkpoint has one copy; the model shares it
    ref_state, our_state = reference.state_dict(), model.state_dict()
    assert ref_state.keys() == our_state.keys()
    for name, t in ref_state.items():
        assert _bits(t) == _bits(our_state[name]), name
    assert not [n for n, p in model.named_parameters() if p.device.type == "meta"]
    ids = torch.tensor([[5, 17, 200, 3]])
    with torch.inference_mode():
        assert torch.equal(reference(ids).logits, model(ids).logits)


def test_parked_cpu_weights_are_used_in_place(tiny_llama: Path) -> None:
    first = load_model(tiny_llama, CPU, loader=Loader())
    again = load_model(tiny_llama, CPU, loader=Loader(), parked=first.tensors)
    assert again.source == "parked"
    assert again.bytes_loaded == first.bytes_loaded
    for name, t in first.tensors.items():
        assert again.tensors[name].data_ptr() == t.data_ptr()     # on CPU: no copy at all
    embed = "model.embed_tokens.weight"
    assert again.model.state_dict()[embed].data_ptr() == first.tensors[embed].data_ptr()
    ids = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        assert torch.equal(first.model(ids).logits, again.model(ids).logits)


def test_a_stripped_skeleton_is_reused(tiny_llama: Path) -> None:
    from runtime.loader import strip_weights

    first = load_model(tiny_llama, CPU, loader=Loader())
    ids = torch.tensor([[4, 8, 15, 16]])
    with torch.inference_mode():
        expected = first.model(ids).logits
    parked = dict(first.tensors)
    module = first.model
    strip_weights(module)
    assert all(p.device.type == "meta" for p in module.parameters())
    again = load_model(tiny_llama, CPU, loader=Loader(), parked=parked, skeleton=module)
    assert again.model is module
    assert again.model.lm_head.weight is again.model.model.embed_tokens.weight   # re-tied
    with torch.inference_mode():
        assert torch.equal(again.model(ids).logits, expected)


def _write_raw(path: Path, header: object, payload: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + payload)
    return path


@pytest.mark.parametrize(
    ("header", "payload", "message"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "do not hold"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8, "do not hold"),
        ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2, "dtype"),
        ({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
          "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, b"\0" * 6, "overlap"),
        (["not", "an", "object"], b"", "not a JSON object"),
    ],
)
def test_malformed_headers_are_rejected(tmp_path: Path, header: object, payload: bytes, message: str) -> None:
    path = _write_raw(tmp_path / "bad.safetensors", header, payload)
    with pytest.raises(LoaderError, match=message):
        read_header(path)


def test_truncated_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(LoaderError, match="header length"):
        read_header(path)


def test_missing_weights_are_reported(tmp_path: Path, tiny_llama_untied: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_untied, broken)
    tensors = st.load_file(broken / "model.safetensors")
    del tensors["lm_head.weight"]
    st.save_file(tensors, broken / "model.safetensors")
    with pytest.raises(LoaderError, match=r"lm_head\.weight"):
        load_model(broken, CPU, loader=Loader())
