"""Folders nobody curated: links out of the tree, special files, files built to make decoding slow or huge,
names built to attack spreadsheets. Every file gets a row, in bounded time and memory, and no row echoes
the bytes of a file it failed on."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import resource
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import bomb_png, png_chunk, write_image
from dgs_sdk import Detector, ImageTooLarge, UnreadableImage
from dgs_sdk.cli import main
from dgs_sdk.image import MemoryBudget, decode_bytes, load_image
from dgs_sdk.limits import MAX_DECODED_BYTES
from dgs_sdk.results import read_rows


def scan(*args):
    result = CliRunner().invoke(main, ["scan", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result


def rows_of(path: Path) -> dict[str, dict]:
    return {row["path"]: row for row in read_rows(path, "csv" if path.suffix == ".csv" else "jsonl").rows}


def dgs_process(*args: str, timeout: float = 300, limits=None, peak_file: Path | None = None):
    """``dgs ARGS`` in a real process (its own resource limits applied), with a timeout as a hang guard. With
    ``peak_file``, the process writes its peak resident memory there (VmHWM, in kB) as it exits."""
    code = ("import atexit, os, sys\n"
            "def peak():\n"
            "    with open('/proc/self/status') as f, open(os.environ['DGS_TEST_PEAK'], 'w') as out:\n"
            "        out.write(next(line.split()[1] for line in f if line.startswith('VmHWM')))\n"
            "if os.environ.get('DGS_TEST_PEAK'):\n"
            "    atexit.register(peak)\n"
            "from dgs_sdk.cli import main; sys.argv[0] = 'dgs'; main()\n")
    env = {**os.environ, "DGS_TEST_PEAK": str(peak_file or "")}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=timeout,
                          preexec_fn=limits, env=env)


# --- symbolic links and special files ---------------------------------------------------------------------------


@pytest.fixture
def linked_folder(tmp_path, photos) -> tuple[Path, Path]:
    """A scanned folder whose links lead out of it: to a photo, a folder of photos, a FIFO and a device."""
    outside = tmp_path / "outside"
    write_image(outside / "secret.png", photos["coffee"])
    write_image(outside / "album" / "private.jpg", photos["rocket"])
    os.mkfifo(outside / "pipe.png")
    folder = tmp_path / "scanned"
    write_image(folder / "inside.png", photos["chelsea"])
    (folder / "to secret.png").symlink_to(outside / "secret.png")
    (folder / "to album").symlink_to(outside / "album", target_is_directory=True)
    (folder / "to pipe.png").symlink_to(outside / "pipe.png")
    (folder / "to zero.png").symlink_to("/dev/zero")
    (folder / "to inside.png").symlink_to("inside.png")  # stays in the tree: followed
    return folder, outside


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_links_out_of_the_scanned_folder_are_not_followed_by_default(tmp_path, linked_folder, clip_package):
    folder, outside = linked_folder
    out = tmp_path / "r.csv"
    result = scan(folder, "--model", clip_package, "--out", out)
    assert result.exit_code == 1, result.output
    rows = rows_of(out)
    assert set(rows) == {str(folder / n) for n in ("inside.png", "to inside.png", "to secret.png", "to album",
                                                    "to pipe.png", "to zero.png")}
    assert rows[str(folder / "inside.png")]["probability"] == rows[str(folder / "to inside.png")]["probability"]
    for name in ("to secret.png", "to album", "to pipe.png", "to zero.png"):
        error = rows[str(folder / name)]["error"]
        assert "outside the scanned folder" in error and "--follow-symlinks" in error, error
        assert rows[str(folder / name)]["probability"] is None


def test_a_chain_of_thousands_of_links_is_an_error_row_not_a_crash(tmp_path, linked_folder, clip_package):
    folder, outside = linked_folder
    (folder / "link0").symlink_to(outside / "secret.png")
    for i in range(1, 3000):  # far past the kernel's 40 and os.path.realpath's recursion
        (folder / f"link{i}").symlink_to(f"link{i - 1}")
    (folder / "chain.png").symlink_to("link2999")
    out = tmp_path / "r.csv"
    result = scan(folder, "--model", clip_package, "--out", out)
    assert result.exit_code == 1, result.output
    error = rows_of(out)[str(folder / "chain.png")]["error"]
    assert error == f"{folder / 'chain.png'}: symbolic link that cannot be resolved (Too many levels of symbolic " \
                    "links); not followed"
    assert rows_of(out)[str(folder / "inside.png")]["probability"] is not None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_follow_symlinks_follows_them_and_still_never_opens_special_files(tmp_path, linked_folder, clip_package):
    folder, outside = linked_folder
    out = tmp_path / "r.csv"
    result = dgs_process("scan", str(folder), "--model", str(clip_package), "--out", str(out), "--follow-symlinks",
                         timeout=120)  # the FIFO would block an open() forever
    assert result.returncode == 1, result.stderr
    rows = rows_of(out)
    assert rows[str(folder / "to secret.png")]["probability"] is not None
    assert rows[str(folder / "to album" / "private.jpg")]["probability"] is not None
    for name in ("to pipe.png", "to zero.png"):
        assert "is not a regular file" in rows[str(folder / name)]["error"]


def test_glob_matches_that_link_out_of_the_pattern_folder_are_not_followed(tmp_path, linked_folder, clip_package):
    folder, _ = linked_folder
    out = tmp_path / "r.csv"
    assert scan(str(folder / "*.png"), "--model", clip_package, "--out", out).exit_code == 1
    rows = rows_of(out)
    assert rows[str(folder / "inside.png")]["error"] is None
    assert "outside the scanned folder" in rows[str(folder / "to secret.png")]["error"]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_pseudo_files_that_claim_to_be_empty_are_not_read():
    """/proc files say they are 0 bytes; some (/proc/kmsg) block when read. Nothing is read from them."""
    for path in ("/proc/self/status", "/proc/kmsg"):
        if os.path.exists(path) and os.access(path, os.R_OK):
            with pytest.raises(UnreadableImage, match=f"{path}: empty file"):
                load_image(path)


# --- decoding cost ------------------------------------------------------------------------------------------------


def jpeg_with_fill(photo: np.ndarray, fill: int) -> bytes:
    """A valid JPEG with ``fill`` 0xFF fill bytes before its first marker after SOI (allowed by the standard)."""
    ok, jpeg = cv2.imencode(".jpg", photo)
    assert ok
    data = jpeg.tobytes()
    return data[:2] + b"\xff" * fill + data[2:]


def test_fill_bytes_are_walked_in_bulk_and_a_file_far_larger_than_its_pixels_is_refused(tmp_path, photos):
    """100 MB of 0xFF fill bytes took 94 s of CPU; legal fill is skipped in bulk, and 100 MB for 240,000 pixels
    is refused from the header, before any decoder sees it."""
    plain = jpeg_with_fill(photos["coffee"], 0)
    filled = jpeg_with_fill(photos["coffee"], 1_000_000)  # legal, and within what metadata may take
    np.testing.assert_array_equal(decode_bytes(filled), decode_bytes(plain))
    path = tmp_path / "filled.jpg"
    path.write_bytes(jpeg_with_fill(photos["coffee"], 100_000_000))
    code = ("import sys; from dgs_sdk.image import load_image\n"
            "try:\n    load_image(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert "ImageTooLarge" in done.stdout and "100,104,298 bytes for a 600x400 image" in done.stdout, done


def test_jpeg_with_too_many_segments_or_scans_is_refused(photos):
    ok, jpeg = cv2.imencode(".jpg", photos["coffee"])
    data = jpeg.tobytes()
    comment = b"\xff\xfe\x00\x03x"  # a 1-byte COM segment
    with pytest.raises(UnreadableImage, match="more than 10,000 marker segments"):
        decode_bytes(data[:2] + comment * 20_000 + data[2:], name="many.jpg")
    scan_start = data.index(b"\xff\xda")  # a progressive decoder decodes once per scan: 101 of them
    scan = data[scan_start:-2]
    with pytest.raises(ImageTooLarge, match="JPEG with 101 scans of 600x400 pixels"):
        decode_bytes(data[:scan_start] + scan * 101 + b"\xff\xd9", name="scans.jpg")


def png_bytes(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def peak_of(code: str, *args: str) -> tuple[str, float]:
    """Run ``code`` in a fresh interpreter: its output and its peak resident memory in MiB (VmHWM)."""
    code += ("\nwith open('/proc/self/status') as f:\n"
             "    print(next(l.split()[1] for l in f if l.startswith('VmHWM')))")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    *lines, peak = done.stdout.strip().splitlines()
    return "\n".join(lines), int(peak) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_png_text_chunks_are_never_decompressed(tmp_path):
    """Each zTXt chunk inflates 1000-fold when libpng reads it; the decoder only gets the chunks of pixels."""
    grey = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    plain = png_bytes(grey)
    text = png_chunk(b"zTXt", b"note\0\0" + zlib.compress(b"A" * 8_000_000, 9))  # 8 kB that inflate to 8 MB
    bomb = plain[:-12] + text * 100 + plain[-12:]  # before IEND: 800 MB of text for libpng to inflate
    path = tmp_path / "text.png"
    path.write_bytes(bomb)
    assert len(bomb) < 1_000_000
    out, peak = peak_of("import sys; from dgs_sdk.image import load_image; print(load_image(sys.argv[1]).sum())",
                        str(path))
    assert int(out) == 3 * int(grey.astype(np.int64).sum())
    assert peak < 400, f"{peak:.0f} MiB"
    np.testing.assert_array_equal(decode_bytes(bomb), decode_bytes(plain))


def test_png_with_too_many_chunks_is_refused():
    plain = png_bytes(np.zeros((8, 8), np.uint8))
    private = png_chunk(b"abCd", b"")
    with pytest.raises(UnreadableImage, match="more than 200,000 chunks"):
        decode_bytes(plain[:33] + private * 200_001 + plain[33:], name="chunks.png")


def tiff_strips(rows: int) -> bytes:
    """A 1-pixel-wide grey TIFF with one strip per row: its first directory holds two tables of ``rows`` numbers."""
    ifd_size = 2 + 12 * 9 + 4
    offsets_at = 8 + ifd_size
    counts_at = offsets_at + 4 * rows
    pixels_at = counts_at + 4 * rows

    def entry(tag, kind, count, value):
        return struct.pack("<HHII", tag, kind, count, value)

    ifd = (struct.pack("<H", 9) + entry(256, 4, 1, 1) + entry(257, 4, 1, rows) + entry(258, 3, 1, 8)
           + entry(259, 3, 1, 1) + entry(262, 3, 1, 1) + entry(273, 4, rows, offsets_at) + entry(277, 3, 1, 1)
           + entry(278, 4, 1, 1) + entry(279, 4, rows, counts_at) + struct.pack("<I", 0))
    offsets = np.arange(pixels_at, pixels_at + rows, dtype="<u4").tobytes()
    return b"II*\x00" + struct.pack("<I", 8) + ifd + offsets + np.ones(rows, "<u4").tobytes() + b"\x80" * rows


def test_tiff_with_huge_strip_tables_is_refused_before_pillow_reads_them():
    np.testing.assert_array_equal(decode_bytes(tiff_strips(1000)), np.full((1000, 1, 3), 128, np.uint8))
    with pytest.raises(ImageTooLarge, match="TIFF field 273 holds 2,000,000 numbers"):
        decode_bytes(tiff_strips(2_000_000), name="strips.tif")


def test_gif_and_webp_structures_are_counted_before_they_are_read():
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("P", (1, 1)).save(buffer, "GIF")
    gif = buffer.getvalue()
    blocks = 13 + (3 << ((gif[10] & 7) + 1) if gif[10] & 0x80 else 0)  # after the screen and its colour table
    comment = b"\x21\xfe" + b"\x01x" * 1_000_001 + b"\x00"  # one comment of a million 1-byte sub-blocks
    with pytest.raises(ImageTooLarge, match="GIF with more than 1,000,000 data blocks"):
        decode_bytes(gif[:blocks] + comment + gif[blocks:], name="comment.gif")
    real = gif[:blocks] + b"\x21\xfe\x05hello\x00" + gif[blocks:]  # a real comment before the first frame
    np.testing.assert_array_equal(decode_bytes(real), decode_bytes(gif))
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "WEBP")
    webp = buffer.getvalue()
    junk = b"JUNK\x00\x00\x00\x00" * 100_001
    body = webp[12:] + junk
    with pytest.raises(ImageTooLarge, match="WebP with more than 100,000 chunks"):
        decode_bytes(b"RIFF" + (len(body) + 4).to_bytes(4, "little") + b"WEBP" + body, name="junk.webp")


def sof(marker: int, width: int, height: int, sampling: list[int]) -> bytes:
    body = bytes([8]) + height.to_bytes(2, "big") + width.to_bytes(2, "big") + bytes([len(sampling)])
    body += b"".join(bytes([k + 1, factors, 0]) for k, factors in enumerate(sampling))
    return bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body


def jpeg_skeleton(marker: int, width: int, height: int, sampling: list[int], scans: int) -> bytes:
    """SOI, a frame header, ``scans`` empty scans, EOI: enough for the header walk, which decodes nothing."""
    scan = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\x12\x34"
    return b"\xff\xd8" + sof(marker, width, height, sampling) + scan * scans + b"\xff\xd9"


@pytest.mark.parametrize(
    ("marker", "sampling", "scans", "bytes_per_pixel"),
    [
        pytest.param(0xC0, [0x22, 0x11, 0x11], 1, 3, id="baseline 4:2:0, one scan: rows at a time"),
        pytest.param(0xC0, [0x11, 0x11, 0x11], 3, 9, id="baseline, a scan per component: every coefficient"),
        pytest.param(0xC2, [0x22, 0x11, 0x11], 10, 6, id="progressive 4:2:0"),
        pytest.param(0xC2, [0x11, 0x11, 0x11], 10, 9, id="progressive 4:4:4"),
        pytest.param(0xC2, [0x11], 6, 5, id="progressive grey"),
    ],
)
def test_jpeg_decoder_memory_is_estimated_from_the_frame(marker, sampling, scans, bytes_per_pixel):
    from dgs_sdk.headers import read_header

    header, _ = read_header(jpeg_skeleton(marker, 1000, 800, sampling, scans), "x.jpg")
    assert header.bytes_per_pixel == bytes_per_pixel
    # A progressive 4:2:0 photo of 80 megapixels fits; in 4:4:4 its coefficients would not.
    big, _ = read_header(jpeg_skeleton(0xC2, 10_000, 8_000, [0x22, 0x11, 0x11], 10), "big.jpg")
    assert big.decoded_bytes == 480_000_000
    with pytest.raises(ImageTooLarge, match="too large to decode"):
        read_header(jpeg_skeleton(0xC2, 10_000, 8_000, [0x11, 0x11, 0x11], 10), "big444.jpg")


def test_the_size_rule_looks_at_what_is_decoded_multi_page_tiff_and_apng(photos):
    from PIL import Image

    rng = np.random.default_rng(0)
    pages = [Image.fromarray(rng.integers(0, 255, (1000, 1000, 3), dtype=np.uint8)) for _ in range(12)]
    buffer = io.BytesIO()
    pages[0].save(buffer, "TIFF", save_all=True, append_images=pages[1:])
    assert len(buffer.getvalue()) > 16 * 1000 * 1000 + 16 * 1024**2  # more than the first page could need
    np.testing.assert_array_equal(decode_bytes(buffer.getvalue()), np.asarray(pages[0]))
    frames = [Image.fromarray(rng.integers(0, 255, (700, 700, 3), dtype=np.uint8)) for _ in range(20)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])
    assert len(buffer.getvalue()) > 16 * 700 * 700 + 16 * 1024**2
    np.testing.assert_array_equal(decode_bytes(buffer.getvalue()), np.asarray(frames[0]))


def test_formats_outside_the_supported_six_are_refused(tmp_path):
    ok, jp2 = cv2.imencode(".jp2", np.zeros((64, 64, 3), np.uint8))
    assert ok
    supported = r"not an image in a supported format \(JPEG, PNG, GIF, WebP, BMP, TIFF\)"
    with pytest.raises(UnreadableImage, match=supported):
        decode_bytes(jp2.tobytes(), name="a.png")


def png_header(width: int, height: int, depth: int, colour: int) -> bytes:
    """A PNG that declares an image (and holds one row of it): refused or decoded from what it declares."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width * 8 + 1))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def test_decoded_bytes_are_bounded_not_only_pixels():
    """A 13000 x 13000 16-bit RGBA PNG is under the pixel limit but decodes to 1.35 GB: refused from its header."""
    with pytest.raises(ImageTooLarge, match=r"13000x13000 at up to 8 bytes per pixel is 1,352,000,000 bytes"):
        decode_bytes(png_header(13_000, 13_000, 16, 6), name="deep.png")
    # The same size in 8-bit grey (169 MB decoded) is allowed; it fails only for its missing rows.
    with pytest.raises(UnreadableImage) as info:
        decode_bytes(png_header(13_000, 13_000, 8, 0), name="grey.png")
    assert not isinstance(info.value, ImageTooLarge)
    assert 13_000 * 13_000 * 8 > MAX_DECODED_BYTES >= 13_000 * 13_000


def test_concurrent_decodes_share_one_memory_budget(tmp_path, photos, clip_package):
    """Decodes wait for their share of the budget: never more than it is held at once, and results agree."""
    paths = [write_image(tmp_path / f"{i}.png", photos[name]) for i, name in enumerate(list(photos) * 3)]
    per_image = max(2 * p.shape[0] * p.shape[1] * 4 for p in photos.values())
    budget = 2 * per_image  # room for two decodes at a time
    detector = Detector(clip_package, workers=8, decode_memory=budget, batch_size=4)
    results = detector.predict(paths)
    assert all(r.ok for r in results)
    assert 0 < detector.budget.peak <= budget
    reference = Detector(clip_package, workers=1).predict(paths)
    assert [r.probability for r in results] == pytest.approx([r.probability for r in reference], abs=1e-6)


def test_holders_that_all_wait_to_grow_do_not_deadlock():
    """Two decodes each hold 40 of 100 bytes and both need 90: one goes ahead, finishes, then the other."""
    budget = MemoryBudget(100)
    both_hold = threading.Barrier(2)
    done = []

    def decode(name: str) -> None:
        with budget.reserve(40) as reservation:
            both_hold.wait(10)
            reservation.resize(90)  # while holding 40: never released while it waits
            done.append(name)

    threads = [threading.Thread(target=decode, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(done) == ["a", "b"] and budget.used == 0
    assert budget.peak == 130  # over the budget by one decode's growth, only while the other held its share


def test_memory_budget_makes_requests_wait_and_lets_an_oversized_one_through():
    budget = MemoryBudget(100)
    first_held, second_held, release = threading.Event(), threading.Event(), threading.Event()

    def hold(nbytes: int, held: threading.Event) -> None:
        with budget.reserve(nbytes):
            held.set()
            release.wait(10)

    first = threading.Thread(target=hold, args=(80, first_held))
    first.start()
    assert first_held.wait(10)
    second = threading.Thread(target=hold, args=(50, second_held))
    second.start()
    assert not second_held.wait(0.3)  # 80 + 50 > 100: it waits
    release.set()
    first.join(10)
    second.join(10)
    assert second_held.is_set() and budget.peak == 80 and budget.used == 0
    with budget.reserve(10**12):  # more than the whole budget: waits for all of it, then proceeds
        assert budget.used == 100


# --- error rows and output encoding -------------------------------------------------------------------------------


def test_error_rows_never_echo_the_bytes_of_the_file(tmp_path, clip_package):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "token.jpg").write_bytes(b"Bearer SECRET-TOKEN-1234 " * 10)
    (folder / "key.png").write_bytes(b"\x89PNG\r\n\x1a\nPRIVATE KEY material " * 10)
    (folder / "tail.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x04PASS" + b"WORD" * 10)
    out = tmp_path / "r.jsonl"
    assert scan(folder, "--model", clip_package, "--out", out).exit_code == 1
    text = out.read_text(encoding="utf-8")
    for secret in ("SECRET", "TOKEN", "PRIVATE", "PASS", "WORD", "Bearer"):
        assert secret not in text, text


HOSTILE_NAMES = ['=HYPERLINK("http://x").png', "+1+1.png", "-2.png", "@SUM(1).png", "\ttab.png", "\rcr.png",
                 "'quoted.png", "a,b.png", 'say "hi".png', "line\nbreak.png", "plain.png"]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def test_csv_cells_are_neutralised_for_spreadsheets_and_read_back_exactly(tmp_path, monkeypatch, photos,
                                                                          clip_package):
    folder = tmp_path / "names"
    for name in HOSTILE_NAMES:
        write_image(folder / name, photos["coffee"][:64, :64])
    (folder / "=not an image.png").write_text("text")
    monkeypatch.chdir(folder)  # relative names: each path cell starts with the file name itself
    names = [*HOSTILE_NAMES, "=not an image.png"]
    out = tmp_path / "r.csv"
    assert scan("--model", clip_package, "--out", out, "--", *names).exit_code == 1
    records = list(csv.reader(io.StringIO(out.read_bytes().decode(), newline="")))
    assert records[0] == ["path", "probability", "label", "error"]
    assert len(records) == len(names) + 1  # a CR or LF in a name never splits a row
    for path, _, _, error in records[1:]:
        for cell in (path, error):
            assert not cell.startswith(FORMULA_STARTS), cell
        assert path in names or (path.startswith("'") and path[1:] in names), path
    rows = rows_of(out)  # one leading ' removed: the names come back exactly
    assert set(rows) == set(names)
    assert rows["=not an image.png"]["error"].startswith("=not an image.png: not an image")
    assert rows["'quoted.png"]["error"] is None
    # Standard output gets the same rows.
    result = scan("--model", clip_package, "--", *names)
    assert [r[0] for r in csv.reader(io.StringIO(result.stdout, newline=""))] == [r[0] for r in records]


@pytest.mark.skipif(sys.platform != "linux", reason="file names as arbitrary bytes")
def test_jsonl_stays_valid_utf8_for_names_that_are_not_and_gives_their_bytes_back(tmp_path, photos, clip_package):
    folder = tmp_path / "latin1"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9 \xff.png"
    write_image(folder / "tmp.png", photos["rocket"])
    os.rename(folder / "tmp.png", raw)
    out = tmp_path / "r.jsonl"
    assert scan(folder, "--model", clip_package, "--out", out).exit_code == 0
    text = out.read_bytes().decode("utf-8")  # strict: valid UTF-8
    assert "\\udce9" in text and "\\udcff" in text
    (row,) = [json.loads(line) for line in text.splitlines()]
    assert os.fsencode(row["path"]) == raw and row["error"] is None


# --- the Python API ---------------------------------------------------------------------------------------------


def test_predict_iter_reads_a_bounded_way_ahead_of_an_endless_stream(clip_package, photos):
    consumed = itertools.count()

    def endless():
        for i in consumed:
            if i > 5_000:
                raise AssertionError("predict_iter read 5,000 images ahead of the first result")
            yield photos["coffee"][:64, :64]

    detector = Detector(clip_package, batch_size=10**9)
    first = list(itertools.islice(detector.predict_iter(endless()), 3))
    assert all(r.ok for r in first)
    assert detector.batch_size <= 445


# --- a folder holding all of it -------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo") or sys.platform != "linux", reason="needs Linux special files")
def test_a_folder_of_every_hostile_file_is_scanned_in_bounded_time_and_memory(tmp_path, photos, clip_package):
    folder = tmp_path / "hostile"
    write_image(folder / "good.jpg", photos["astronaut"])
    (folder / "filled.jpg").write_bytes(jpeg_with_fill(photos["coffee"], 100_000_000))
    (folder / "deep.png").write_bytes(png_header(13_000, 13_000, 16, 6))
    (folder / "bomb.png").write_bytes(bomb_png(100_000, 100_000))
    (folder / "text.png").write_text("not a picture")
    (folder / "empty.jpg").write_bytes(b"")
    os.mkfifo(folder / "pipe.jpg")
    for name, target in (("kmsg.png", "/proc/kmsg"), ("zero.png", "/dev/zero"), ("passwd.png", "/etc/passwd")):
        (folder / name).symlink_to(target)
    (folder / "=cmd.png").write_bytes(b"")
    plain = png_bytes(np.zeros((64, 64), np.uint8))
    text = png_chunk(b"zTXt", b"note\0\0" + zlib.compress(b"A" * 8_000_000, 9))
    (folder / "text bomb.png").write_bytes(plain[:-12] + text * 100 + plain[-12:])
    (folder / "strips.tif").write_bytes(tiff_strips(2_000_000))
    ok, jp2 = cv2.imencode(".jp2", np.zeros((64, 64, 3), np.uint8))
    (folder / "jpeg2000.png").write_bytes(jp2.tobytes())
    os.rename(folder / "good.jpg", os.fsencode(folder) + b"/g\xf6od.jpg")
    out = tmp_path / "r.jsonl"

    def limits():
        resource.setrlimit(resource.RLIMIT_AS, (6 * 1024**3, 6 * 1024**3))  # 6 GiB of address space at most

    peak = tmp_path / "peak"
    done = dgs_process("scan", str(folder), "--model", str(clip_package), "--out", str(out), "--workers", "8",
                       timeout=240, limits=limits, peak_file=peak)
    assert done.returncode == 1, done.stderr.decode()
    assert b"Traceback" not in done.stderr
    rows = [json.loads(line) for line in out.read_bytes().decode("utf-8").splitlines()]
    assert len(rows) == 14 and len({r["path"] for r in rows}) == 14
    scored = [r for r in rows if r["error"] is None]
    assert sorted(os.path.basename(os.fsencode(r["path"])) for r in scored) == [b"g\xf6od.jpg", b"text bomb.png"]
    peak_gib = int(peak.read_text()) / 1024**2
    assert peak_gib < 1.5, f"peak resident memory {peak_gib:.2f} GiB"


# --- patterns, races and hidden files -------------------------------------------------------------------------------


def test_patterns_never_follow_links_out_of_their_folder_nor_loop(tmp_path, photos, clip_package, monkeypatch):
    outside = tmp_path / "outside"
    write_image(outside / "secret.png", photos["coffee"])
    photos_dir = tmp_path / "g" / "photos"
    write_image(photos_dir / "sub" / "a.png", photos["rocket"])
    (photos_dir / "out").symlink_to(outside, target_is_directory=True)
    (photos_dir / "sub" / "self").symlink_to(".", target_is_directory=True)  # a loop for **
    (photos_dir / "sub" / "again").symlink_to(".", target_is_directory=True)
    monkeypatch.chdir(tmp_path / "g")
    out = tmp_path / "r.csv"
    result = dgs_process("scan", "photos/*/*.png", "--model", str(clip_package), "--out", str(out), timeout=120)
    assert result.returncode == 1, result.stderr
    rows = rows_of(out)
    assert set(rows) == {"photos/sub/a.png", "photos/out/secret.png"}
    assert rows["photos/sub/a.png"]["error"] is None
    assert "outside the scanned folder" in rows["photos/out/secret.png"]["error"]
    # ** descends into no linked folder: neither out of the tree nor round the two loops.
    result = dgs_process("scan", "photos/**/*.png", "--model", str(clip_package), "--out", str(out), "--overwrite",
                         timeout=120)
    assert result.returncode == 0, result.stderr
    assert list(rows_of(out)) == ["photos/sub/a.png"]


def test_a_link_swapped_in_after_listing_is_caught_when_opened(tmp_path, photos, clip_package):
    from dgs_sdk.scan import discover

    folder = tmp_path / "race"
    target = write_image(folder / "a.png", photos["coffee"])
    write_image(tmp_path / "private.png", photos["rocket"])
    (found,) = discover([str(folder)])
    assert found.root == os.path.realpath(folder)
    target.unlink()
    target.symlink_to(tmp_path / "private.png")  # after discovery, before reading
    (result,) = Detector(clip_package).predict([found.source])
    assert result.error and "outside the scanned folder" in result.error and result.source == str(target)


def test_hidden_files_are_skipped_unless_asked_for(tmp_path, photos, clip_package):
    folder = tmp_path / "hid"
    write_image(folder / "z.png", photos["coffee"])
    write_image(folder / ".x.png", photos["coffee"])
    write_image(folder / ".cache" / "y.png", photos["coffee"])
    out = tmp_path / "r.csv"
    assert scan(folder, "--model", clip_package, "--out", out).exit_code == 0
    assert set(rows_of(out)) == {str(folder / "z.png")}
    assert scan(folder, "--model", clip_package, "--out", out, "--overwrite", "--hidden").exit_code == 0
    assert set(rows_of(out)) == {str(folder / n) for n in ("z.png", ".x.png", ".cache/y.png")}
    assert scan(str(folder / "*.png"), "--model", clip_package, "--out", out, "--overwrite").exit_code == 0
    assert set(rows_of(out)) == {str(folder / "z.png")}
