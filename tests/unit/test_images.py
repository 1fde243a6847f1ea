import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from edgelearn.data.images import load_image
from edgelearn.errors import ImageError, TooLargeError


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


# -- limits: what the station decodes, and at what cost ------------------------------------------------
def _claiming(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (valid CRC) over pixel data that does not fit."""
    data = bytearray(data)
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_over_budget_is_refused_from_the_header_before_decoding():
    # 5000 x 5000 is under Pillow's own bomb check: only our limit, read before load(), can refuse it;
    # decoding would fail differently ("truncated")
    data = _claiming(png_bytes(Image.new("L", (8, 8))), 5000, 5000)
    with pytest.raises(TooLargeError, match="5000x5000 pixels is more than the limit of 12,000,000"):
        load_image(data, name="big.png", max_pixels=12_000_000)


def test_sixteen_bit_and_float_images_are_refused_where_only_8_bit_is_accepted():
    sixteen = png_bytes(Image.fromarray(np.zeros((8, 64), np.uint16)))
    with pytest.raises(ImageError, match="deep.png: 16-bit or floating-point pixels .* 8-bit JPEG or PNG"):
        load_image(sixteen, name="deep.png", eight_bit_only=True)
    # refused from the header: a 16-bit file that could not even be decoded gets the same answer
    with pytest.raises(ImageError, match="16-bit"):
        load_image(sixteen[:60], name="deep.png", eight_bit_only=True)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.float32)).save(buf, "TIFF")
    with pytest.raises(ImageError, match="floating-point"):
        load_image(buf.getvalue(), name="float.tif", eight_bit_only=True)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA"])
def test_eight_bit_modes_are_accepted_where_only_8_bit_is_accepted(mode):
    image = load_image(png_bytes(Image.new("RGB", (30, 20), (200, 100, 50)).convert(mode)), eight_bit_only=True)
    assert image.mode == "RGB" and image.size == (30, 20)
    assert load_image(_jpeg(Image.new("CMYK", (30, 20))), eight_bit_only=True).mode == "RGB"


EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 10 10
%%EndComments
newpath 0 0 moveto 10 10 lineto stroke
showpage
%%EOF
"""


def test_eps_is_refused_without_running_its_decoder(monkeypatch):
    from PIL import EpsImagePlugin

    assert Image.open(io.BytesIO(EPS)).format == "EPS"  # Pillow alone would take it (and run Ghostscript)
    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(1))
    with pytest.raises(ImageError, match="drawing.eps: not an image file we can read"):
        load_image(EPS, name="drawing.eps")
    assert opened == []


@pytest.mark.parametrize("fmt", ["PCX", "ICO", "GIF", "TGA", "PPM"])
def test_formats_we_do_not_document_are_refused(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, fmt)
    assert Image.open(io.BytesIO(buf.getvalue())).format == fmt
    with pytest.raises(ImageError, match="not an image file we can read"):
        load_image(buf.getvalue(), name=f"x.{fmt.lower()}")


def test_big_jpegs_are_decoded_at_a_reduced_scale(monkeypatch):
    from PIL import JpegImagePlugin

    data = _jpeg(Image.new("RGB", (2000, 1500), (200, 100, 50)))
    drafts = []
    draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: drafts.append(size) or draft(self, mode, size))
    image = load_image(data, fit=100)
    assert drafts and image.size == (500, 375)  # the decoder's 1/4 scale: short side >= 2 x 100
    assert np.abs(np.asarray(image).astype(int) - (200, 100, 50)).max() <= 3
    assert load_image(data).size == (2000, 1500)  # no fit: full size, as before


def test_other_formats_are_box_reduced_to_about_twice_the_fit():
    image = load_image(png_bytes(Image.new("RGB", (1200, 900), "red")), fit=100)
    assert image.size == (300, 225) and image.mode == "RGB"
    assert load_image(png_bytes(Image.new("RGB", (300, 150), "red")), fit=100).size == (300, 150)
