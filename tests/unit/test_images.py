import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from edgelearn.data.images import load_image
from edgelearn.errors import ImageError


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_corrupt_truncated_and_non_images_name_the_file(tmp_path):
    good = png_bytes(Image.new("RGB", (64, 64), "red"))
    cases = {"truncated.png": good[: len(good) // 2], "text.jpg": b"hello, not an image", "empty.png": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError, match=name):
            load_image(tmp_path / name)
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_decompression_bomb_is_refused_before_decoding():
    data = bytearray(png_bytes(Image.new("L", (8, 8))))
    # rewrite the IHDR chunk to claim 100000 x 100000 pixels, with a valid CRC
    ihdr = bytes(data[12:16]) + struct.pack(">II", 100_000, 100_000) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    with pytest.raises(ImageError, match="pixels"):
        load_image(bytes(data), name="bomb.png")
    with pytest.raises(ImageError, match="limit"):
        load_image(png_bytes(Image.new("RGB", (20, 20))), max_pixels=100)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "1"])
def test_odd_modes_become_rgb(mode):
    image = load_image(png_bytes(Image.new("RGB", (30, 20), (200, 100, 50)).convert(mode))
                       if mode != "CMYK" else _jpeg(Image.new("CMYK", (30, 20))))
    assert image.mode == "RGB" and image.size == (30, 20)


def _jpeg(image):
    buf = io.BytesIO()
    image.save(buf, "JPEG")
    return buf.getvalue()


def test_sixteen_bit_grey_keeps_its_range():
    ramp = np.linspace(0, 65535, 64 * 8, dtype=np.uint16).reshape(8, 64)
    image = load_image(png_bytes(Image.fromarray(ramp)))
    pixels = np.asarray(image)[..., 0]
    assert pixels.min() == 0 and pixels.max() == 255  # not clipped to white as a plain convert would


def test_transparent_pixels_are_put_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(load_image(png_bytes(rgba)))[0, 0].tolist() == [255, 255, 255]
