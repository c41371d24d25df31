"""Test helper: damage a saved torch file the way a bad disk or transfer does."""
import struct
import zipfile


def flip_bytes_in_tensor(path, tensor, n=64):
    """Flip ``n`` bytes inside ``tensor``'s stored data in ``path``; return the zip member."""
    data = bytearray(path.read_bytes())
    raw = tensor.detach().contiguous().numpy().tobytes()
    at = data.find(raw)
    assert at > 0 and len(raw) > n
    for i in range(at, at + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:
                                                           info.header_offset + 30])
            start = info.header_offset + 30 + name_len + extra_len
            if start <= at < start + info.file_size:
                return info.filename
    raise AssertionError("tensor bytes not inside a member")
