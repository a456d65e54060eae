"""Provenance evidence beside the model's verdict: C2PA credentials signed here with c2pa-python and a test
certificate chain, generator metadata written into real files, hostile files, and `dgs scan --provenance`."""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner
from PIL import PngImagePlugin

from conftest import png_chunk
from dgs_sdk.cli import main
from dgs_sdk.files import ConfinedPath
from dgs_sdk.provenance import INSTALL_HINT, ProvenanceReader, c2pa_unavailable, read_provenance
from dgs_sdk.results import COLUMNS, PROVENANCE_COLUMNS, read_rows

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
WEBUI_PARAMETERS = ("a photo of an astronaut, detailed\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, "
                    "CFG scale: 7, Seed: 1234, Size: 512x512, Model: sd_xl_base_1.0")
COMFY_PROMPT = json.dumps({"3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20}}})
COMFY_WORKFLOW = json.dumps({"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}], "links": []})
XMP_GENERATED = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
    f'xmlns:xmp="http://ns.adobe.com/xap/1.0/" Iptc4xmpExt:DigitalSourceType="{IPTC}trainedAlgorithmicMedia" '
    'xmp:CreatorTool="Adobe Firefly"/></rdf:RDF></x:xmpmeta>'
)
DGS = [sys.executable, "-c", "import sys; from dgs_sdk.cli import main; sys.argv[0] = 'dgs'; main()"]


# --- files with evidence, made here ---------------------------------------------------------------------------------


def encode(image: np.ndarray, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    PIL.Image.fromarray(image).save(out, fmt, **params)
    return out.getvalue()


def after_idat(png: bytes, *chunks: bytes) -> bytes:
    """``png`` with ``chunks`` placed after its pixel data, just before IEND (where Pillow's info never looks)."""
    assert png[-12:] == png_chunk(b"IEND", b"")
    return png[:-12] + b"".join(chunks) + png[-12:]


def itxt(keyword: str, text: str) -> bytes:
    """A compressed iTXt chunk: keyword, flag 1, method 0, empty language and translated keyword, zlib text."""
    return png_chunk(b"iTXt", keyword.encode() + b"\0\x01\x00\0\0" + zlib.compress(text.encode()))


def user_comment(text: str) -> bytes:
    """An EXIF UserComment as Stable Diffusion WebUI writes it: the UNICODE code, then UTF-16 big-endian."""
    return b"UNICODE\0" + text.encode("utf-16-be")


@pytest.fixture(scope="module")
def crops(photos) -> list[np.ndarray]:
    """Eight different 96 x 96 crops of the photographs."""
    return [np.ascontiguousarray(p[top : top + 96, :96]) for top in (0, 200) for p in list(photos.values())[:4]]


@pytest.fixture(scope="module")
def metadata_files(tmp_path_factory, crops) -> dict[str, Path]:
    """One real file per kind of generator metadata, and a photo with camera EXIF only."""
    folder = tmp_path_factory.mktemp("evidence") / "évidence folder"
    folder.mkdir()
    files = {}

    def put(name: str, data: bytes) -> None:
        files[name] = folder / name
        files[name].write_bytes(data)

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", WEBUI_PARAMETERS)
    put("webui.png", encode(crops[0], "PNG", pnginfo=info))
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", COMFY_PROMPT, zip=True)
    put("comfyui.png", after_idat(encode(crops[1], "PNG", pnginfo=info), itxt("workflow", COMFY_WORKFLOW)))
    exif = PIL.Image.Exif()
    exif[0x0131] = "Midjourney v6.1"
    put("midjourney.jpg", encode(crops[2], "JPEG", exif=exif))
    exif = PIL.Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = user_comment(WEBUI_PARAMETERS)
    put("webui.jpg", encode(crops[3], "JPEG", exif=exif))
    put("firefly.webp", encode(crops[4], "WEBP", xmp=XMP_GENERATED.encode()))
    exif = PIL.Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0131] = "Canon", "Canon EOS R5", "Firmware 1.8.1"
    put("photo.jpg", encode(crops[5], "JPEG", exif=exif))
    return files


def test_each_kind_of_generator_metadata_is_found_where_it_was_written(metadata_files):
    expected = {
        "webui.png": ["Stable Diffusion WebUI (PNG text 'parameters')"],
        "comfyui.png": ["ComfyUI (PNG text 'prompt', 'workflow')"],
        "midjourney.jpg": ["Midjourney (EXIF Software)"],
        "webui.jpg": ["Stable Diffusion WebUI (EXIF UserComment)"],
        "firefly.webp": ["trainedAlgorithmicMedia (XMP DigitalSourceType)", "Adobe Firefly (XMP CreatorTool)"],
        "photo.jpg": [],
    }
    for name, path in metadata_files.items():
        found = read_provenance(path)
        assert [str(m) for m in found.metadata] == expected[name], name
        assert found.generated == bool(expected[name]), name
        assert found.notes == (), (name, found.notes)
        assert not found.c2pa.claims_generated


def test_pillow_sees_no_text_after_the_pixels_but_provenance_does(metadata_files):
    with PIL.Image.open(metadata_files["comfyui.png"]) as image:
        assert "prompt" in image.info and "workflow" not in image.info  # the chunk really lies after IDAT


# --- C2PA credentials signed here -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def c2pa():
    return pytest.importorskip("c2pa", reason=f"c2pa-python is not installed ({INSTALL_HINT})")


@pytest.fixture(scope="module")
def certificates() -> dict[str, str]:
    """An ES256 root CA and an end-entity signing certificate it issued, as C2PA's certificate profile wants
    them: v3, the end entity not self-signed, digitalSignature key usage, the emailProtection extended key usage."""
    x509 = pytest.importorskip("cryptography.x509", reason="cryptography is needed to make test certificates")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dgs test lab")])

    def usage(sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=not sign,
                             crl_sign=not sign, encipher_only=False, decipher_only=False)

    def certificate(subject, issuer, key, issuer_key, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(usage(sign=not ca), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        if not ca:
            builder = (builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                                             critical=False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                      critical=False))
        return builder.sign(issuer_key, hashes.SHA256())

    root_key, signer_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = certificate(name("dgs test root"), name("dgs test root"), root_key, root_key, ca=True)
    signer = certificate(name("dgs test signer"), root.subject, signer_key, root_key, ca=False)

    def pem(cert: x509.Certificate) -> str:
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    key = signer_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()).decode()
    return {"chain": pem(signer) + pem(root), "key": key, "root": pem(root)}


def sign(c2pa, certificates: dict[str, str], image: bytes, mime: str, source_type: str) -> bytes:
    """``image`` with C2PA credentials whose c2pa.created action has the digital source type ``source_type``."""
    manifest = {
        "claim_generator_info": [{"name": "dgs test generator", "version": "2.0"}],
        "title": "generated",
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [
            {"action": "c2pa.created", "digitalSourceType": IPTC + source_type}]}}],
    }
    info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, certificates["chain"].encode(),
                               certificates["key"].encode(), None)
    settings = {"builder": {"thumbnail": {"enabled": False}}, "verify": {"ocsp_fetch": False}}
    with c2pa.Signer.from_info(info) as signer, c2pa.Context.from_dict(settings) as context:
        out = io.BytesIO()
        c2pa.Builder(manifest, context=context).sign(signer, mime, io.BytesIO(image), out)
    return out.getvalue()


def flip(data: bytes, at: int) -> bytes:
    changed = bytearray(data)
    changed[at] ^= 0x55
    return bytes(changed)


@pytest.fixture(scope="module")
def c2pa_files(tmp_path_factory, c2pa, certificates, crops) -> dict[str, Path]:
    """A generated image with valid credentials, a copy changed after signing, one whose manifest was garbled,
    and a photo with valid credentials of a digital capture."""
    folder = tmp_path_factory.mktemp("c2pa") / "signed ñ"
    folder.mkdir()
    generated = sign(c2pa, certificates, encode(crops[6], "JPEG"), "image/jpeg", "trainedAlgorithmicMedia")
    capture = sign(c2pa, certificates, encode(crops[7], "PNG"), "image/png", "digitalCapture")
    # IPTC's algorithmicMedia: made by an algorithm without training data; reported, never a reason to override
    procedural = sign(c2pa, certificates, encode(crops[5], "PNG"), "image/png", "algorithmicMedia")
    files = {
        "procedural.png": procedural,
        "signed.jpg": generated,
        "tampered.jpg": flip(generated, len(generated) - 100),  # a byte of the pixels, after signing
        "garbled manifest.jpg": flip(generated, generated.index(b"jumb") + 40),
        "capture.png": capture,
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


def test_c2pa_credentials_are_valid_trusted_or_invalid(c2pa_files, certificates):
    signed = read_provenance(c2pa_files["signed.jpg"])
    assert signed.c2pa.state == "valid"  # c2pa-python trusts no test root unless told
    assert signed.c2pa.generator == "dgs test generator 2.0"
    assert signed.c2pa.signer == "dgs test signer (dgs test lab)"
    assert signed.c2pa.source_type == "trainedAlgorithmicMedia"
    assert signed.c2pa.claims_generated and signed.generated
    assert "signer not on a trust list" in signed.detail

    trusted = read_provenance(c2pa_files["signed.jpg"], trust_anchors=certificates["root"])
    assert trusted.c2pa.state == "trusted" and trusted.c2pa.claims_generated and trusted.detail is None

    tampered = read_provenance(c2pa_files["tampered.jpg"], trust_anchors=certificates["root"])
    assert tampered.c2pa.state == "invalid" and not tampered.c2pa.claims_generated
    assert tampered.c2pa.failures[0] == "assertion.dataHash.mismatch"
    assert tampered.c2pa.source_type == "trainedAlgorithmicMedia"  # reported, but its signature does not hold

    garbled = read_provenance(c2pa_files["garbled manifest.jpg"])
    assert garbled.c2pa.state in ("error", "invalid") and not garbled.c2pa.claims_generated
    assert garbled.detail.startswith("C2PA ")

    procedural = read_provenance(c2pa_files["procedural.png"])
    assert procedural.c2pa.state == "valid" and procedural.c2pa.source_type == "algorithmicMedia"
    assert not procedural.c2pa.claims_generated

    capture = read_provenance(c2pa_files["capture.png"])
    assert capture.c2pa.state == "valid" and capture.c2pa.source_type == "digitalCapture"
    assert not capture.c2pa.claims_generated and not capture.generated


def test_trust_anchors_that_are_not_certificates_are_refused(tmp_path, c2pa, certificates):
    from dgs_sdk.provenance import ProvenanceError

    with pytest.raises(ProvenanceError, match="no PEM certificate"):
        ProvenanceReader("not a certificate")
    with pytest.raises(ProvenanceError, match="refused by c2pa-python"):
        ProvenanceReader("-----BEGIN CERTIFICATE-----\n!not base64!\n-----END CERTIFICATE-----\n")
    (tmp_path / "binary.pem").write_bytes(b"\xff\xfe\x00" * 10)
    with pytest.raises(ProvenanceError, match="binary.pem: not a PEM file"):
        ProvenanceReader.from_trust_file(tmp_path / "binary.pem")


# --- hostile files ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory, crops) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile") / "hostile"
    folder.mkdir()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", WEBUI_PARAMETERS)
    webui = encode(crops[0], "PNG", pnginfo=info)
    plain = encode(crops[1], "PNG")
    bad_checksum = bytearray(png_chunk(b"tEXt", b"parameters\0" + WEBUI_PARAMETERS.encode()))
    bad_checksum[-1] ^= 0xFF
    exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\xff\xff" + b"".join(
        struct.pack(">HHII", 0x0100 + k, 4, 0x7FFFFFFF, 8) for k in range(4000))  # 65,535 entries promised
    jpeg = encode(crops[2], "JPEG")
    files = {
        "truncated.png": webui[: len(webui) // 2],
        "garbled chunks.png": after_idat(plain, bytes(bad_checksum), png_chunk(b"tEXt", b"no separator here")),
        "huge ztxt.png": after_idat(plain, png_chunk(b"zTXt", b"parameters\0\0" + zlib.compress(b"A" * 64 * 2**20))),
        "huge idat.png": after_idat(plain, png_chunk(b"IDAT", os.urandom(24 * 2**20)),
                                    png_chunk(b"tEXt", b"Software\0NovelAI")),
        "huge exif.png": after_idat(plain, png_chunk(b"eXIf", b"MM\0\x2a" + bytes(3 * 2**20))),
        "exif bomb.jpg": jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + jpeg[2:],
        "not an image.png": b"<!doctype html><html><body>404 not found</body></html>\n" * 20,
        "empty.jpg": b"",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


def test_hostile_files_give_notes_and_never_raise(hostile_files):
    expected = {  # C2PA state, metadata found, and a part of the metadata notes (None: no note)
        "truncated.png": ("error", ["Stable Diffusion WebUI (PNG text 'parameters')"],
                          "PNG truncated (its IDAT chunk is cut off); text chunks before the cut were read"),
        "garbled chunks.png": ("none", [], "PNG tEXt chunk with a bad checksum; ignored; PNG tEXt chunk without a "
                                           "keyword; ignored"),
        "huge ztxt.png": ("none", ["Stable Diffusion WebUI (PNG text 'parameters')"],
                          "PNG text 'parameters' longer than 1,048,576 bytes; its start was read"),
        "huge idat.png": ("none", ["NovelAI (PNG text 'Software')"], None),  # found after 24 MiB of pixel data
        "huge exif.png": ("none", [], "EXIF of 3,145,732 bytes not read (at most 1,048,576)"),
        "exif bomb.jpg": ("none", [], None),
        "not an image.png": ("none", [], None),
        "empty.jpg": ("none", [], None),
    }
    checked = c2pa_unavailable() is None
    for name, path in hostile_files.items():
        found = read_provenance(path)
        state, metadata, notes = expected[name]
        assert found.c2pa.state == (state if checked else "not checked"), name
        assert [str(m) for m in found.metadata] == metadata, name
        assert found.notes == () if notes is None else notes in "; ".join(found.notes), (name, found.notes)
    if checked:
        assert "C2PA: not a format that carries" in read_provenance(hostile_files["not an image.png"]).detail


def test_threads_reading_hostile_exif_at_once_let_no_warning_through(hostile_files, recwarn):
    # Pillow warns once per corrupt EXIF field: 4,000 times for this file, in each of 8 threads at once.
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(ProvenanceReader().read, [hostile_files["exif bomb.jpg"]] * 16))
    assert all(f.metadata == () and f.notes == () for f in found)
    assert [str(w.message) for w in recwarn][:3] == []


def test_a_link_swapped_in_after_listing_is_not_read(tmp_path, metadata_files):
    folder = tmp_path / "scanned"
    folder.mkdir()
    (folder / "a.png").symlink_to(metadata_files["webui.png"])  # leads out of the scanned folder
    found = ProvenanceReader().read(ConfinedPath(str(folder / "a.png"), os.path.realpath(folder)))
    assert found.c2pa.state == "not checked" and found.metadata == ()
    assert "outside the scanned folder" in found.detail


# --- dgs scan --provenance ------------------------------------------------------------------------------------------


def run_scan(*args):
    result = CliRunner().invoke(main, ["scan", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def rows_of(path: Path, columns=PROVENANCE_COLUMNS) -> dict[str, dict]:
    rows = read_rows(path, path.suffix[1:], columns).rows
    return {Path(row["path"]).name: row for row in rows}


@pytest.fixture(scope="module")
def scan_folder(request, tmp_path_factory, metadata_files, hostile_files) -> Path:
    """Every file above, copied into one folder (the signed ones where c2pa-python can sign)."""
    folder = tmp_path_factory.mktemp("scan") / "to scan"
    folder.mkdir()
    signed = request.getfixturevalue("c2pa_files") if c2pa_unavailable() is None else {}
    for files in (metadata_files, hostile_files, signed):
        for name, path in files.items():
            (folder / name).write_bytes(path.read_bytes())
    return folder


@pytest.fixture(scope="module")
def model_rows(tmp_path_factory, scan_folder, clip_package) -> dict[str, dict]:
    """The model's results on the folder, scanned without provenance."""
    out = tmp_path_factory.mktemp("plain") / "plain.csv"
    result = run_scan(scan_folder, "--model", clip_package, "--out", out)
    assert result.exit_code == 1, result.output
    return rows_of(out, COLUMNS)


def assert_model_results_unchanged(rows: dict[str, dict], model_rows: dict[str, dict], overridden=()) -> None:
    assert set(rows) == set(model_rows)
    for name, row in rows.items():
        expected = model_rows[name]
        assert row["error"] == expected["error"], name
        assert row["probability"] == pytest.approx(expected["probability"], abs=1e-6), name
        if name not in overridden:
            assert row["label"] == expected["label"], name
            assert row["label_source"] == (None if expected["error"] else "model"), name


def test_scan_reports_evidence_beside_the_model(tmp_path, c2pa, scan_folder, model_rows, clip_package):
    out = tmp_path / "with provenance.csv"
    result = run_scan(scan_folder, "--model", clip_package, "--out", out, "--provenance")
    assert result.exit_code == 1, result.output
    with open(out, newline="", encoding="utf-8") as f:
        assert next(csv.reader(f)) == list(PROVENANCE_COLUMNS)
    rows = rows_of(out)
    assert_model_results_unchanged(rows, model_rows)
    assert rows["webui.png"]["metadata"] == "Stable Diffusion WebUI (PNG text 'parameters')"
    assert rows["comfyui.png"]["metadata"] == "ComfyUI (PNG text 'prompt', 'workflow')"
    assert rows["midjourney.jpg"]["metadata"] == "Midjourney (EXIF Software)"
    assert rows["webui.jpg"]["metadata"] == "Stable Diffusion WebUI (EXIF UserComment)"
    assert rows["firefly.webp"]["metadata"] == ("trainedAlgorithmicMedia (XMP DigitalSourceType); "
                                                "Adobe Firefly (XMP CreatorTool)")
    photo = rows["photo.jpg"]
    assert (photo["c2pa"], photo["metadata"], photo["provenance_detail"]) == ("none", None, None)
    signed = rows["signed.jpg"]
    assert (signed["c2pa"], signed["c2pa_signer"], signed["c2pa_generator"], signed["c2pa_source_type"]) == (
        "valid", "dgs test signer (dgs test lab)", "dgs test generator 2.0", "trainedAlgorithmicMedia")
    assert rows["tampered.jpg"]["c2pa"] == "invalid"
    assert "assertion.dataHash.mismatch" in rows["tampered.jpg"]["provenance_detail"]
    assert rows["capture.png"]["c2pa_source_type"] == "digitalCapture"
    # Hostile files: the model's error row stands, the provenance columns say what happened.
    assert "PNG truncated" in rows["truncated.png"]["provenance_detail"]
    assert rows["not an image.png"]["error"] and rows["not an image.png"]["c2pa"] == "none"
    assert "bad checksum" in rows["garbled chunks.png"]["provenance_detail"]


def test_overrides_label_only_a_valid_generated_claim_and_say_so(tmp_path, c2pa, scan_folder, model_rows,
                                                                clip_package, certificates):
    (tmp_path / "root.pem").write_text(certificates["root"])
    out = tmp_path / "overrides.jsonl"
    # Threshold 1: the model labels every image real, so that the override shows wherever it applies.
    result = run_scan(scan_folder, "--model", clip_package, "--out", out, "--threshold", "1",
                      "--provenance-overrides", "--c2pa-trust-anchors", tmp_path / "root.pem")
    assert result.exit_code == 1, result.output
    rows = rows_of(out)
    assert_model_results_unchanged(rows, {name: {**row, "label": row["label"] and "real"}
                                          for name, row in model_rows.items()}, overridden={"signed.jpg"})
    assert (rows["signed.jpg"]["label"], rows["signed.jpg"]["label_source"]) == ("fake", "c2pa")
    assert rows["signed.jpg"]["c2pa"] == "trusted"
    assert [name for name, row in rows.items() if row["label"] == "fake"] == ["signed.jpg"]
    assert rows["tampered.jpg"]["label_source"] == "model" and rows["capture.png"]["label_source"] == "model"
    assert (rows["procedural.png"]["c2pa"], rows["procedural.png"]["label_source"]) == ("trusted", "model")
    assert "1 fake (1 of them by C2PA credentials)" in result.stderr


@pytest.mark.parametrize("ext", [".csv", ".jsonl"])
def test_resume_continues_with_the_same_columns_and_refuses_others(tmp_path, scan_folder, clip_package, ext):
    out = tmp_path / f"results{ext}"
    result = run_scan(scan_folder, "--model", clip_package, "--out", out, "--provenance", "--batch-size", "4")
    assert result.exit_code == 1, result.output
    complete = rows_of(out)
    data = out.read_bytes()
    out.write_bytes(data[: data.index(b"\n", len(data) // 2) + 8])  # a cut inside a row
    result = run_scan(scan_folder, "--model", clip_package, "--out", out, "--provenance", "--resume")
    assert result.exit_code == 1, result.output
    assert "of them from the interrupted scan" in result.stderr
    resumed = rows_of(out)
    assert set(resumed) == set(complete)
    for name, row in complete.items():
        assert {**resumed[name], "probability": None} == {**row, "probability": None}, name
        assert resumed[name]["probability"] == pytest.approx(row["probability"], abs=1e-6), name

    result = run_scan(scan_folder, "--model", clip_package, "--out", out, "--resume")
    assert result.exit_code == 2
    assert "written with --provenance" in result.stderr and "--overwrite" in result.stderr
    plain = tmp_path / f"plain{ext}"
    assert run_scan(scan_folder, "--model", clip_package, "--out", plain).exit_code == 1
    result = run_scan(scan_folder, "--model", clip_package, "--out", plain, "--resume", "--provenance")
    assert result.exit_code == 2 and "written without --provenance" in result.stderr


def test_without_c2pa_python_metadata_is_still_reported_and_the_gap_said_once(tmp_path, monkeypatch, metadata_files,
                                                                            clip_package):
    monkeypatch.setitem(sys.modules, "c2pa", None)  # import c2pa now fails as if it were not installed
    out = tmp_path / "no c2pa.csv"
    result = run_scan(metadata_files["webui.png"], metadata_files["midjourney.jpg"], tmp_path / "absent.png",
                      "--model", clip_package, "--out", out, "--provenance")
    assert result.exit_code == 1, result.output
    assert result.stderr.count("C2PA content credentials are not checked") == 1
    assert INSTALL_HINT in result.stderr
    rows = rows_of(out)
    absent = rows.pop("absent.png")
    assert "no such file" in absent["error"] and (absent["c2pa"], absent["provenance_detail"]) == (
        "not checked", "not read")
    for row in rows.values():
        assert row["c2pa"] == "not checked" and INSTALL_HINT in row["provenance_detail"]
    assert rows["webui.png"]["metadata"] == "Stable Diffusion WebUI (PNG text 'parameters')"
    assert rows["midjourney.jpg"]["metadata"] == "Midjourney (EXIF Software)"


def test_bad_trust_anchors_are_a_usage_error_before_the_model_loads(tmp_path, metadata_files):
    (tmp_path / "anchors.pem").write_text("these are not certificates\n")
    result = run_scan(metadata_files["webui.png"], "--model", tmp_path / "missing.dgs", "--c2pa-trust-anchors",
                      tmp_path / "anchors.pem")
    assert result.exit_code == 2
    assert "anchors.pem: C2PA trust anchors: no PEM certificate" in result.stderr
    result = run_scan(metadata_files["webui.png"], "--model", tmp_path / "missing.dgs", "--c2pa-trust-anchors",
                      tmp_path / "absent.pem")
    assert result.exit_code == 2 and "absent.pem: no such file" in result.stderr


def test_scan_with_provenance_in_a_subprocess(tmp_path, c2pa, scan_folder, clip_package):
    out = tmp_path / "sub process.jsonl"
    files = [scan_folder / name for name in ("comfyui.png", "signed.jpg", "huge ztxt.png", "not an image.png")]
    done = subprocess.run([*DGS, "scan", *map(str, files), "--model", str(clip_package), "--out", str(out),
                           "--provenance-overrides"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    rows = rows_of(out)
    assert rows["comfyui.png"]["metadata"] == "ComfyUI (PNG text 'prompt', 'workflow')"
    assert rows["signed.jpg"]["label"] == "fake" and rows["signed.jpg"]["c2pa"] == "valid"
    assert rows["not an image.png"]["error"] and rows["not an image.png"]["label_source"] is None
    assert "its start was read" in rows["huge ztxt.png"]["provenance_detail"]
