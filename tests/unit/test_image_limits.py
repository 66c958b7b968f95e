"""Decompression bombs: every path that decodes an image refuses a small file that claims a huge size,
before decoding it."""
import struct
import zlib

import pytest
from PIL import Image

from core.data.images import MAX_PIXELS, ImageProblem, decode_image
from core.models.vision import open_image


def real_bomb_png(path, side=13_000):
    """A genuine, valid PNG of side x side black grey pixels that compresses to about 170 KB: what a
    hostile upload looks like (not just a lying header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + one byte per pixel
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    return real_bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png")


def test_the_bomb_is_small_on_disk_and_huge_in_pixels(bomb):
    assert bomb.stat().st_size < 1_000_000
    assert 13_000 * 13_000 > 10 * MAX_PIXELS


def test_pillow_global_limit_is_the_workbench_cap(bomb):
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)  # what Gradio's own upload handling does


def test_decode_image_refuses_the_bomb_from_a_path_and_from_bytes(bomb):
    for source in (bomb, str(bomb), bomb.read_bytes()):
        with pytest.raises(ImageProblem, match="over the limit of 16 Mpx"):
            decode_image(source)


def test_decode_image_refuses_a_decoded_image_over_the_cap():
    with pytest.raises(ImageProblem):
        decode_image(Image.new("L", (5_000, 4_000)))


def test_vision_tower_input_skips_the_bomb(bomb):
    assert open_image(bomb) is None
    assert open_image(str(bomb)) is None


def test_a_normal_image_still_decodes(tmp_path):
    path = tmp_path / "ok.png"
    Image.new("RGBA", (300, 200), (255, 0, 0, 0)).save(path)
    picture = decode_image(path)
    assert picture.mode == "RGB" and picture.size == (300, 200)
    assert picture.getpixel((0, 0)) == (255, 255, 255)  # transparency on white
    assert open_image(path).size == (300, 200)


def test_app_thumbnail_and_composed_query_refuse_the_bomb(bomb):
    pytest.importorskip("gradio")
    from app.render import thumb
    from app.tabs.common import compose_note
    from core.errors import WorkbenchError

    assert thumb(str(bomb)) is None
    with pytest.raises(WorkbenchError, match="query image cannot be used"):
        compose_note("t", "c", "", str(bomb))
    ok = Image.new("RGB", (2_000, 1_000), (0, 128, 0))
    note = compose_note("t", "", "", ok)
    assert max(note.image.size) == 512


def test_a_composed_query_image_over_the_byte_limit_is_refused(tmp_path):
    pytest.importorskip("gradio")
    from app.tabs.common import compose_note
    from core.errors import WorkbenchError

    big = tmp_path / "big.png"
    Image.new("RGB", (8, 8)).save(big)
    with open(big, "ab") as out:
        out.write(b"\0" * (21 * 1024 * 1024))  # trailing bytes: a valid header, a 21 MB file
    with pytest.raises(WorkbenchError, match="over the limit"):
        compose_note("t", "", "", str(big))
