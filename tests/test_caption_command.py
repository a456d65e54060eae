"""`dgs caption`: a tiny random CoCa captions real image files into a caption file that training reads."""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from click.testing import CliRunner  # noqa: E402

from conftest import write_image  # noqa: E402
from dgs_sdk.cli import main  # noqa: E402
from dgs_sdk.data import load_samples  # noqa: E402
from dgs_sdk.image import load_image  # noqa: E402
from dgs_sdk.preprocess import preprocess_batch  # noqa: E402
from dgs_trainer.captioning import (  # noqa: E402
    CaptionConfig,
    CocaCaptioner,
    beam_search,
    caption_images,
)
from dgs_trainer.captions import CaptionError, load_captions, read_caption_table  # noqa: E402

ARCH = "dgs-test-coca"
# open_clip's coca_ViT-B-32 shrunk to one narrow layer per tower on 32-pixel images. The vocabulary stays CLIP's,
# so that the tokenizer decodes what the decoder picks.
TINY_COCA = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8,
                   "attentional_pool": True, "attn_pooler_queries": 8, "attn_pooler_heads": 2, "output_tokens": True},
    "text_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1, "embed_cls": True,
                 "output_tokens": True},
    "multimodal_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                       "attn_pooler_heads": 2},
    "custom_text": True,
}
# Short captions from few beams keep each test to a few seconds on two cores.
FAST = dict(device="cpu", workers=0, beams=2, max_tokens=6, min_tokens=2, batch_size=4, save_every=0)
SUBPROCESS_SETUP = """
import sys, open_clip
open_clip.add_model_config(sys.argv[1])
from dgs_sdk.cli import main
main(sys.argv[2:])
"""


@pytest.fixture(scope="module")
def coca_arch(tmp_path_factory):
    """The tiny CoCa config, registered with open_clip for this module only."""
    from open_clip import factory

    folder = tmp_path_factory.mktemp("configs")
    (folder / f"{ARCH}.json").write_text(json.dumps(TINY_COCA))
    with pytest.MonkeyPatch.context() as patch:
        # add_model_config extends these registries in place; copies keep the change to this module.
        patch.setattr(factory, "_MODEL_CONFIG_PATHS", list(factory._MODEL_CONFIG_PATHS))
        patch.setattr(factory, "_MODEL_CONFIGS", dict(factory._MODEL_CONFIGS))
        open_clip.add_model_config(folder)
        yield folder
    assert ARCH not in open_clip.list_models()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tensors here are tiny: a second torch thread only waits for a core that other processes may hold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(coca_arch, tmp_path_factory) -> Path:
    """Seeded random weights of the tiny CoCa, saved as a local checkpoint in a folder with spaces and unicode."""
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH)
    projection = model.text_decoder.text_projection  # [width, vocabulary]
    with torch.no_grad():
        # open_clip leaves it uninitialised; a wide one makes captions depend on the image.
        torch.nn.init.normal_(projection, std=1.0)
        # Turned and widened, the end token competes with the likeliest words: some captions end early, others
        # run to max_tokens, so images leave a batch at different steps (test_batches_... checks that they do).
        projection[:, open_clip.get_tokenizer(ARCH).eot_token_id] *= -5
    path = tmp_path_factory.mktemp("weights") / "coca wéights.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def data(tmp_path, photos) -> Path:
    """Two generators in ForenSynths layout, two real and two fake PNG/JPEG photos each, under an awkward name."""
    root = tmp_path / "train set ñ"
    names = list(photos)
    for g, generator in enumerate(("gan one", "diffusion")):
        for i in range(4):
            label = ("0_real", "1_fake")[i % 2]
            photo = photos[names[(g * 4 + i) % len(names)]][:200, :240]
            write_image(root / generator / label / f"{i}.{('png', 'jpg')[i // 2]}", photo)
    return root


def config(data: Path, out: Path, checkpoint: Path, **overrides) -> CaptionConfig:
    fields = dict(data=str(data), out=str(out), arch=ARCH, pretrained=str(checkpoint), **FAST)
    fields.update(overrides)
    return CaptionConfig(**fields)


def test_every_image_gets_a_caption_under_its_sample_path(data, tmp_path, checkpoint):
    out = tmp_path / "captions ü.json"
    summary = caption_images(config(data, out, checkpoint))
    samples = load_samples(data)
    table = json.loads(out.read_text(encoding="utf-8"))
    assert sorted(table) == sorted(s.path for s in samples)
    assert (summary.images, summary.captioned, summary.kept, summary.unreadable) == (8, 8, 0, 0)
    for caption in table.values():
        assert caption and caption == " ".join(caption.split())
        assert "<start_of_text>" not in caption and "<end_of_text>" not in caption
    # A random model still tells images apart.
    assert len(set(table.values())) > 1
    assert load_captions(samples, data, out) == [table[s.path] for s in samples]


def test_the_caption_depends_on_pixels_only(tmp_path, photos, checkpoint):
    root = tmp_path / "same pixels"
    write_image(root / "gen" / "0_real" / "a.png", photos["coffee"])
    write_image(root / "gen" / "1_fake" / "b.png", photos["coffee"])
    write_image(root / "gen" / "1_fake" / "c.png", photos["rocket"])
    out = tmp_path / "captions.json"
    caption_images(config(root, out, checkpoint))
    table = read_caption_table(out)
    real, fake, other = (table[str(root / "gen" / f)] for f in ("0_real/a.png", "1_fake/b.png", "1_fake/c.png"))
    assert real == fake and other != real


def test_a_csv_manifest_is_captioned_under_its_listed_paths(data, tmp_path, checkpoint):
    manifest = data / "list.csv"
    listed = "gan one/0_real/0.png,real\ndiffusion/1_fake/1.png,1\n"
    manifest.write_text("path,label\n" + listed + listed, encoding="utf-8")  # each file listed twice
    out = tmp_path / "captions.json"
    summary = caption_images(config(manifest, out, checkpoint))
    assert (summary.images, summary.captioned) == (2, 2)
    samples = load_samples(manifest)
    table = read_caption_table(out)
    assert sorted(table) == sorted([str(data / "gan one/0_real/0.png"), str(data / "diffusion/1_fake/1.png")])
    assert load_captions(samples, manifest, out) == [table[s.path] for s in samples]


@pytest.mark.parametrize("beams", [1, 3])
def test_batches_caption_like_single_images(data, tmp_path, checkpoint, beams):
    one, five = tmp_path / "one.json", tmp_path / "five.json"
    caption_images(config(data, one, checkpoint, batch_size=1, beams=beams))
    caption_images(config(data, five, checkpoint, batch_size=5, beams=beams))
    assert one.read_bytes() == five.read_bytes()
    # The first image's caption ends at once, and with one beam that image leaves the batch while others go on.
    captioner = CocaCaptioner.load(config(data, one, checkpoint))
    images = torch.from_numpy(preprocess_batch([load_image(s.path) for s in load_samples(data)[:5]], captioner.spec))
    lengths = [len(tokens) for tokens in beam_search(captioner.model, images, captioner.tokenizer.sot_token_id,
                                                     captioner.tokenizer.eot_token_id, beams=beams, max_tokens=6,
                                                     min_tokens=2)]
    assert lengths[0] == 2 and 6 in lengths, lengths


class MarkovDecoder(torch.nn.Module):
    """A stand-in with CoCa's forward interface whose next-token log-probabilities depend only on the image (the
    value of its single pixel) and the last token, so that the best caption can be found by enumeration."""

    def __init__(self, tables: torch.Tensor) -> None:
        super().__init__()
        self.tables = tables  # [images, vocabulary, vocabulary]: log p(next | image, last)

    def forward(self, image, text=None, image_latent=None, image_embs=None, output_labels=True):
        if text is None:
            return {"image_features": image, "image_embs": image[:, None]}
        next_token = self.tables[image_latent[:, 0].long(), text[:, -1]]  # [N, V]
        return {"logits": next_token[:, None].expand(-1, text.shape[1], -1)}


def best_by_enumeration(table: torch.Tensor, words: int, start: int, end: int, min_tokens: int, max_tokens: int):
    """The caption of highest summed log-probability: ended ones score their end token, cut ones do not."""
    best, best_score = None, -float("inf")
    for n in range(min_tokens, max_tokens + 1):
        for caption in itertools.product(range(words), repeat=n):
            path = (start, *caption)
            score = sum(float(table[a, b]) for a, b in itertools.pairwise(path))
            if n < max_tokens:
                score += float(table[caption[-1], end])
            if score > best_score:
                best, best_score = list(caption), score
    return best


@pytest.mark.parametrize("min_tokens", [1, 2])
def test_the_search_finds_the_most_likely_caption(min_tokens):
    words, start, end = 4, 4, 5
    generator = torch.Generator().manual_seed(1)
    tables = torch.rand(3, 6, 6, generator=generator) * 4
    tables[:, :, end] = -2.0  # ending is unlikely...
    tables[:, 3, end] = 3.0  # ...but after word 3
    tables = tables.log_softmax(-1)
    images = torch.tensor([[0.0], [1.0], [2.0]])
    # 4^3 beams hold every caption of 3 words: the search is exhaustive, and its stopping rule must stay exact.
    found = beam_search(MarkovDecoder(tables), images, start, end, beams=64, max_tokens=4, min_tokens=min_tokens,
                        length_penalty=0.0)
    expected = [best_by_enumeration(tables[i], words, start, end, min_tokens, 4) for i in range(3)]
    assert found == expected
    # The best captions are not all the first ones that could end.
    assert max(len(caption) for caption in expected) > min_tokens
    alone = [beam_search(MarkovDecoder(tables), images[i : i + 1], start, end, beams=64, max_tokens=4,
                         min_tokens=min_tokens, length_penalty=0.0)[0] for i in range(3)]
    assert alone == found


def test_greedy_decoding_takes_the_most_likely_token_each_step(tmp_path, photos, checkpoint):
    root = tmp_path / "one"
    path = write_image(root / "gen" / "0_real" / "a.png", photos["astronaut"])
    captioner = CocaCaptioner.load(config(root, tmp_path / "x.json", checkpoint, beams=1, max_tokens=5, min_tokens=5))
    image = torch.from_numpy(preprocess_batch([load_image(path)], captioner.spec))
    tokens = [captioner.tokenizer.sot_token_id]
    with torch.inference_mode():
        for _ in range(5):
            logits = captioner.model(image, torch.tensor([tokens]), output_labels=False)["logits"][0, -1]
            logits[[captioner.tokenizer.sot_token_id, captioner.tokenizer.eot_token_id]] = -torch.inf
            tokens.append(int(logits.argmax()))
    expected = " ".join(captioner.tokenizer.decode(tokens[1:]).split())
    assert captioner.caption(image) == [expected]


def test_a_rerun_keeps_existing_captions_and_does_not_read_their_images(data, tmp_path, checkpoint, monkeypatch):
    samples = load_samples(data)
    out = tmp_path / "captions.json"
    done = samples[:3]
    monkeypatch.chdir(data.parent)
    existing = {
        done[0].path: "kept as given",
        os.path.relpath(done[1].path, data): "kept, keyed relative to the data root",
        os.path.relpath(done[2].path): "kept, keyed relative to the working folder",
        "elsewhere/0_real/z.png": "an image of another data set, kept",
    }
    out.write_text(json.dumps(existing), encoding="utf-8")
    # Were these images decoded again, they would be counted unreadable.
    for sample in done:
        Path(sample.path).write_bytes(b"<html>not an image</html>")
    summary = caption_images(config(data, out, checkpoint))
    assert (summary.captioned, summary.kept, summary.unreadable) == (5, 3, 0)
    table = read_caption_table(out)
    assert {key: table[key] for key in existing} == existing
    assert sorted(set(table) - set(existing)) == sorted(s.path for s in samples[3:])
    captions = load_captions(samples, data, out)
    assert captions[:3] == list(existing.values())[:3]
    before = out.read_bytes()
    # All captioned: the model is not even loaded (these weights could not be) and the file stays as it was.
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(checkpoint.read_bytes()[:5000])
    again = caption_images(config(data, out, damaged))
    assert (again.captioned, again.kept) == (0, 8) and out.read_bytes() == before


def test_an_interrupted_run_keeps_finished_batches_and_continues(data, tmp_path, checkpoint, monkeypatch):
    whole = tmp_path / "whole.json"
    caption_images(config(data, whole, checkpoint))
    out = tmp_path / "interrupted.json"
    real_caption, calls = CocaCaptioner.caption, []

    def interrupted_on_second_batch(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_caption(self, images)

    monkeypatch.setattr(CocaCaptioner, "caption", interrupted_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        # Saving only every hour: what is on disk was written because captioning stopped.
        caption_images(config(data, out, checkpoint, save_every=3600))
    assert len(read_caption_table(out)) == 4
    monkeypatch.setattr(CocaCaptioner, "caption", real_caption)
    summary = caption_images(config(data, out, checkpoint))
    assert (summary.captioned, summary.kept) == (4, 4)
    assert out.read_bytes() == whole.read_bytes()


def test_captions_reach_the_disk_while_captioning_goes_on(data, tmp_path, checkpoint, monkeypatch):
    out = tmp_path / "captions.json"
    real_caption, on_disk = CocaCaptioner.caption, []

    def noting_what_is_on_disk(self, images):
        on_disk.append(len(read_caption_table(out)) if out.exists() else 0)
        return real_caption(self, images)

    monkeypatch.setattr(CocaCaptioner, "caption", noting_what_is_on_disk)
    caption_images(config(data, out, checkpoint, batch_size=3, save_every=0))
    assert on_disk == [0, 3, 6] and len(read_caption_table(out)) == 8


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "it is not JSON"),
        (b"{'a': 'single quotes'}", "it is not JSON"),
        (b'["a list"]', "found a JSON list"),
        (b'{"a.png": 3}', "the caption of 'a.png' is not a string"),
        (b'{"a.png": "\xff\xfe"}', "it is not UTF-8"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_a_damaged_caption_file_is_refused_and_left_alone(data, tmp_path, checkpoint, content, expected):
    out = tmp_path / "captions.json"
    out.write_bytes(content)
    with pytest.raises(CaptionError, match=expected) as caught:
        caption_images(config(data, out, checkpoint))
    assert str(out) in str(caught.value)
    assert out.read_bytes() == content


def test_an_output_that_is_no_file_is_refused(data, tmp_path, checkpoint):
    folder = tmp_path / "a folder.json"
    folder.mkdir()
    with pytest.raises(CaptionError, match="is a directory"):
        caption_images(config(data, folder, checkpoint))
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    with pytest.raises(CaptionError, match="not a regular file"):  # never opened, so never waited on
        caption_images(config(data, fifo, checkpoint))
    with pytest.raises(CaptionError, match="folder does not exist"):
        caption_images(config(data, tmp_path / "missing" / "captions.json", checkpoint))


def test_unreadable_images_are_skipped_and_counted(data, tmp_path, photos, checkpoint, caplog):
    truncated = data / "gan one" / "1_fake" / "truncated.png"
    truncated.write_bytes((data / "gan one" / "0_real" / "0.png").read_bytes()[:300])
    (data / "diffusion" / "0_real" / "page.jpg").write_bytes(b"<!DOCTYPE html><html></html>")
    os.mkfifo(data / "diffusion" / "1_fake" / "pipe.png")
    # A file name that is not UTF-8 is captioned and read back by its exact name.
    odd = write_image(data / "diffusion" / "1_fake" / os.fsdecode(b"odd \xff name.png"), photos["chelsea"])
    out = tmp_path / "captions.json"
    with caplog.at_level(logging.WARNING):
        summary = caption_images(config(data, out, checkpoint))
    assert (summary.images, summary.captioned, summary.unreadable) == (12, 9, 3)
    assert "3 of 12 images could not be read" in caplog.text
    assert any(name in summary.example for name in ("truncated.png", "page.jpg", "pipe.png"))
    table = read_caption_table(out)
    assert len(table) == 9 and str(truncated) not in table and str(odd) in table
    samples = [s for s in load_samples(data) if s.path in table]
    assert load_captions(samples, data, out) == [table[s.path] for s in samples]
    nothing_readable = tmp_path / "nothing readable"
    (nothing_readable / "real").mkdir(parents=True)
    (nothing_readable / "real" / "empty.png").write_bytes(b"")
    summary = caption_images(config(nothing_readable, tmp_path / "empty.json", checkpoint))
    assert (summary.captioned, summary.unreadable) == (0, 1) and "empty.png" in summary.example
    assert read_caption_table(tmp_path / "empty.json") == {}


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (dict(arch="no-such-model"), "architecture 'no-such-model' is unknown.*coca_ViT-L-14"),
        (dict(arch="dgs-tiny-vit"), "'dgs-tiny-vit' is not a CoCa captioner"),
        (dict(arch="coca_ViT-L-14", pretrained="laion400m"), "neither a local checkpoint nor a tag of coca_ViT-L-14.*"
                                                              "mscoco_finetuned_laion2b_s13b_b90k"),
        (dict(pretrained="none"), "needs trained weights"),
        (dict(max_tokens=80, min_tokens=2), "max_tokens 80 is more than dgs-test-coca can read \\(76 tokens\\)"),
        (dict(device="tpu"), "device 'tpu' is not understood"),
    ],
)
def test_model_problems_are_named(data, tmp_path, checkpoint, overrides, expected):
    with pytest.raises(CaptionError, match=expected):
        caption_images(config(data, tmp_path / "captions.json", checkpoint, **overrides))
    assert not (tmp_path / "captions.json").exists()


def test_a_damaged_checkpoint_is_named(data, tmp_path, checkpoint):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(checkpoint.read_bytes()[:5000])
    with pytest.raises(CaptionError, match=f"{damaged}: cannot be loaded as {ARCH} weights"):
        caption_images(config(data, tmp_path / "captions.json", damaged))


@pytest.mark.parametrize(
    "field, value", [("batch_size", 0), ("beams", 0), ("workers", -1), ("min_tokens", 7), ("save_every", -1.0)]
)
def test_settings_out_of_range_are_refused(tmp_path, field, value):
    with pytest.raises(CaptionError, match=field):
        CaptionConfig(data=str(tmp_path), out=str(tmp_path / "c.json"), **{field: value, "max_tokens": 6})


def test_cli_captions_and_reports_errors_with_exit_code_2(data, tmp_path, checkpoint):
    runner = CliRunner()
    out = tmp_path / "captions.json"
    args = ["caption", str(data), "--out", str(out), "--arch", ARCH, "--pretrained", str(checkpoint), "--device", "cpu",
            "--workers", "0", "--beams", "2", "--max-tokens", "6", "--min-tokens", "2", "--no-progress"]
    done = runner.invoke(main, args)
    assert done.exit_code == 0, done.output
    assert "8 images captioned into" in done.output
    assert len(read_caption_table(out)) == 8
    again = runner.invoke(main, args)
    assert again.exit_code == 0 and "0 images captioned" in again.output and "8 already had a caption" in again.output
    # Refused before anything is read, even with nothing left to caption.
    bad_arch = runner.invoke(main, [*args, "--arch", "ViT-B-32"])
    assert bad_arch.exit_code == 2 and "Error: architecture 'ViT-B-32' is not a CoCa captioner" in bad_arch.output
    (tmp_path / "broken.json").write_text("[]")
    broken = runner.invoke(main, [*args, "--out", str(tmp_path / "broken.json")])
    assert broken.exit_code == 2 and f"Error: {tmp_path / 'broken.json'}: expected a JSON object" in broken.output
    no_images = runner.invoke(main, [*args[:1], str(tmp_path / "nothing"), *args[2:]])
    assert no_images.exit_code == 2 and "data root not found" in no_images.output
    zero_batch = runner.invoke(main, [*args, "--batch-size", "0"])
    assert zero_batch.exit_code == 2 and "batch_size must be a whole number" in zero_batch.output
    no_out = runner.invoke(main, ["caption", str(data)])
    assert no_out.exit_code == 2 and "Missing option '--out'" in no_out.output
    outputs = done.output + bad_arch.output + broken.output + no_images.output + zero_batch.output
    assert "Traceback" not in outputs


@pytest.mark.slow  # a second Python process that imports torch: several seconds on two busy cores
def test_ctrl_c_in_a_real_process_keeps_captions_and_says_how_to_continue(data, tmp_path, checkpoint, coca_arch):
    out = tmp_path / "captions.json"
    args = ["caption", str(data), "--out", str(out), "--arch", ARCH, "--pretrained", str(checkpoint), "--device",
            "cpu", "--workers", "0", "--batch-size", "1", "--beams", "3", "--max-tokens", "40", "--save-every", "0",
            "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-c", SUBPROCESS_SETUP, str(coca_arch), *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not out.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted: captions finished so far are in" in stderr and "Traceback" not in stderr
    captioned = read_caption_table(out)
    assert 1 <= len(captioned) < 8
    # The rest, with captions short enough to be quick here.
    result = CliRunner().invoke(main, [*args, "--beams", "2", "--max-tokens", "6", "--min-tokens", "2"])
    assert result.exit_code == 0, result.output
    table = read_caption_table(out)
    assert len(table) == 8 and {key: table[key] for key in captioned} == captioned
