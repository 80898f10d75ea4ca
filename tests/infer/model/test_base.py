"""Loading the base model: the embedded GGUF's conversion parses the file once."""

import pytest

from infer.model import base


def test_the_gguf_file_is_parsed_once_while_the_embedded_model_converts(tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = str(tmp_path / "tiny.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    original = gguf.GGUFReader, gguf.get_tensor_name_map
    assert gguf.GGUFReader(path) is not gguf.GGUFReader(path)  # outside: a new parse each time
    with base._gguf_parsed_once():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(path) is first and "token_embd.weight" in {t.name for t in first.tensors}
        arch = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == original  # restored
