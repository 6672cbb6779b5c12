"""Real models made small for end-to-end tests: a two-scene clip and a caption checkpoint
trained here, in the test session, to say one known sentence per scene.

The caption model is the real one (the bundled EfficientNet-Lite0 encoder, offline, and the
attention LSTM decoder), only tiny: it is trained on the clip's own decoded frames, plus
JPEG-compressed and rescaled copies of them so that a re-encoded stream (RTSP) still reads as
its scene. Training stops at a behavioural criterion (greedy and beam search decode every
training image to its scene's sentence) with a step cap; no loss value is asserted, since
CPU floating-point paths differ between machines.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
# Every word once, so that after the first word the sentence follows from the last word alone.
SCENES = (("dog.jpg", "a dog beside the bicycle"), ("horses.jpg", "horses grazing on grass"))
SCENE_FRAMES = 4  # frames per scene in the clip
CLIP_SIZE = (160, 120)
CLIP_FPS = 4.0
MAX_STEPS = 600


def scene_images(size: tuple[int, int] = CLIP_SIZE) -> list[np.ndarray]:
    """The two scenes as BGR images of ``size`` (from samples/, in the repository)."""
    return [cv2.resize(cv2.imread(str(REPO / "samples" / name)), size, interpolation=cv2.INTER_AREA)
            for name, _ in SCENES]


def scene_of(frame_index: int) -> int:
    """Which scene frame ``frame_index`` of the clip shows (0 or 1)."""
    return (frame_index // SCENE_FRAMES) % len(SCENES)


def caption_of(frame_index: int) -> str:
    return SCENES[scene_of(frame_index)][1]


def write_scene_clip(path: Path, fps: float = CLIP_FPS) -> Path:
    """SCENE_FRAMES frames of each scene, in order (mp4v, CLIP_SIZE)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, CLIP_SIZE)
    assert writer.isOpened()
    for image in scene_images():
        for _ in range(SCENE_FRAMES):
            writer.write(image)
    writer.release()
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    from streamcap.bench import read_frames

    return read_frames(path)


def _variants(bgr: np.ndarray) -> list[np.ndarray]:
    """The image as decoded, JPEG-compressed (what a lossy re-encode does) and rescaled."""
    h, w = bgr.shape[:2]
    out = [bgr]
    for quality in (25, 60):
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR))
    small = cv2.resize(bgr, (w * 3 // 4, h * 3 // 4), interpolation=cv2.INTER_AREA)
    out.append(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR))
    return out


def _decodes_all(decoder, feats: torch.Tensor, targets: list[list[int]]) -> bool:
    from streamcap.caption.decode import beam_search, greedy

    decoder.eval()
    try:
        got = [hyp[0] for hyp in greedy(decoder, feats)]
        beams = [hyps[0][0] for hyps in beam_search(decoder, feats, beam=3, block_repeat_ngram=3)]
    finally:
        decoder.train()
    return got == targets and beams == targets


def train_tiny_captioner(out: Path, clip: Path) -> Path:
    """A checkpoint whose greedy and beam-3 captions of every frame of ``clip`` (and of lossy
    copies) are that frame's scene sentence; fails the session if the cap is reached first."""
    import pytest

    from streamcap.caption.checkpoint import save_checkpoint
    from streamcap.caption.encoder import build_encoder, preprocess
    from streamcap.caption.model import CaptionDecoder, CaptionModelConfig, caption_loss
    from streamcap.caption.vocab import Vocab, tokenize

    threads = torch.get_num_threads()
    rng_state = torch.get_rng_state()
    torch.manual_seed(0)
    try:
        encoder = build_encoder("efficientnet_lite0")
        images, labels = [], []
        for i, frame in enumerate(decoded_frames(clip)):
            for v in _variants(frame):
                images.append(np.ascontiguousarray(v[:, :, ::-1]))  # BGR -> RGB, as Captioner does
                labels.append(scene_of(i))
        with torch.inference_mode():
            feats = torch.cat([encoder(preprocess(images[i:i + 16])) for i in range(0, len(images), 16)])
        feats = feats.clone()  # (N, 1280, 7, 7), out of inference mode
        tokens = [tokenize(text) for _, text in SCENES]
        vocab = Vocab.build(tokens, min_count=1)
        ids = [vocab.encode(t) for t in tokens]  # <start> ... <end>
        T = max(map(len, ids))
        per_scene = torch.tensor([x + [vocab.pad_id] * (T - len(x)) for x in ids])
        caps = per_scene[torch.tensor(labels)]  # (N, T)
        targets = [ids[s][1:-1] for s in labels]  # the words, without <start>/<end>
        cfg = CaptionModelConfig(vocab_size=len(vocab), feature_dim=1280, embed_dim=32, hidden_dim=64,
                                 attention_dim=32, dropout=0.0)
        decoder = CaptionDecoder(cfg)
        opt = torch.optim.Adam(decoder.parameters(), lr=1e-2)
        step = 0
        while not (step and step % 25 == 0 and _decodes_all(decoder, feats, targets)):
            if step >= MAX_STEPS:
                pytest.fail(f"the tiny caption model did not learn its {len(SCENES)} sentences in {MAX_STEPS} steps")
            logits, alphas = decoder(feats, caps)
            loss = caption_loss(logits, caps, alphas, alpha_c=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        return save_checkpoint(out, decoder.eval(), vocab, "efficientnet_lite0", train_info={"steps": step})
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng_state)
