#!/usr/bin/env bash
# GPU check of the segmenter's device path (issue 10, item 9) and of `--seg-every auto` on a GPU.
# Run from the repository root on a CUDA machine (torch with CUDA, typer; no nltk/efficientnet/av
# needed). Writes JSON and logs to $OUT (default ./gpu_out). About 5 minutes on an H100/H200.
#   OUT=/tmp/gpu_out bash scripts/gpu_check.sh
set -u
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
start=$(date +%s)
step() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$OUT/steps.log"; }

step "device"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name(0))"
} > "$OUT/device.txt" 2>&1

# 1. The device paste against the host paste at full size (1080p, 100 detections), and the
#    segmenter's host path against its device path on the same card (A/B, same frames, fp16).
step "paste check and A/B of the segmenter paths"
timeout 150 python - > "$OUT/ab.json" 2> "$OUT/ab.err" <<'EOF'
import json, time
import numpy as np, torch
from streamcap.segment import build_segmenter, paste_masks, paste_masks_torch

out = {}
g = torch.Generator().manual_seed(0)
probs = torch.rand(100, 28, 28, generator=g)
boxes = torch.rand(100, 4, generator=g) * torch.tensor([1700.0, 900, 400, 300])
boxes[:, 2:] += boxes[:, :2]
hw = (1080, 1920)
host = paste_masks(probs.numpy(), boxes.numpy(), hw, 0.5)
dev = paste_masks_torch(probs.cuda(), boxes.cuda(), hw, 0.5)
torch.cuda.synchronize()
t0 = time.perf_counter()
for _ in range(10):
    dev = paste_masks_torch(probs.cuda(), boxes.cuda(), hw, 0.5)
torch.cuda.synchronize()
t_dev = (time.perf_counter() - t0) / 10
t0 = time.perf_counter()
host = paste_masks(probs.numpy(), boxes.numpy(), hw, 0.5)
t_host = time.perf_counter() - t0
out["paste_1080p_100"] = {"pixels_differing": int((dev.cpu().numpy() != host).sum()), "pixels": int(host.size),
                          "ms_device": round(1000 * t_dev, 2), "ms_host": round(1000 * t_host, 2)}

rng = np.random.default_rng(0)
for size, (w, h) in {"720p": (1280, 720), "1080p": (1920, 1080)}.items():
    frames = [cv for cv in (rng.integers(0, 255, (h, w, 3), np.uint8) for _ in range(16))]
    seg = build_segmenter(weights="random", device="cuda", precision="fp16", batch=4)
    rows = {}
    for name, device_path in (("host_path", False), ("device_path", True)):
        seg._device_paste = seg._device_preprocess = device_path
        seg.segment_images(frames[:8])  # warm-up
        seg.reset_timings()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(2):
            res = seg.segment_images(frames)
        dt = time.perf_counter() - t0
        t = seg.timings
        n = t["counts"]["frames"]
        rows[name] = {"fps": round(n / dt, 2), "detections_per_frame": round(t["counts"]["detections"] / n, 1),
                      **{f"ms_{k}": round(1000 * t[k] / n, 2) for k in ("preprocess", "model", "paste")}}
    seg._device_preprocess = False  # the same model input: the device paste alone against the host's
    seg._device_paste = True
    a = seg.segment_images(frames[:4])
    seg._device_paste = False
    b = seg.segment_images(frames[:4])
    rows["paste_only_same_boxes"] = all(np.array_equal(x.boxes, y.boxes) for x, y in zip(a, b))
    rows["paste_only_mask_pixels_differing"] = int(sum((x.masks != y.masks).sum() for x, y in zip(a, b)))
    out[size] = rows
print(json.dumps(out, indent=2))
EOF
cat "$OUT/ab.json"

# 2. Mask R-CNN throughput matrix: fp16, batch 1/4/8, 720p and 1080p (random weights).
step "bench-segmenter"
timeout 170 python -m streamcap bench-segmenter --device cuda --sizes 720p,1080p --precisions fp16 \
  --batches 1,4,8 --frames 24 --repeats 3 --json > "$OUT/bench_segmenter.json" 2> "$OUT/bench_segmenter.err"
tail -n 3 "$OUT/bench_segmenter.err"

# 3. The real `streamcap file` job against the model alone (same frames, same batch), and live:
#    --seg-every auto beside every frame (auto should now segment every frame on a GPU).
step "bench (file vs model only; live)"
timeout 150 python -m streamcap bench --no-engine --live --device cuda --seg-weights random --seg-frames 40 \
  --live-seconds 8 --max-detections 10 --repeats 2 --json > "$OUT/bench.json" 2> "$OUT/bench.err"
tail -n 3 "$OUT/bench.err"
python - "$OUT/bench.json" <<'EOF' || true
import json, sys
r = json.load(open(sys.argv[1]))
s = r.get("segment", {})
print("file/model-only", s.get("file_vs_model_only"), "model-only fps", s.get("model_only_fps"), "file fps", s.get("file_fps"))
print(json.dumps(r.get("live"), indent=1)[:3000])
EOF
step "done"
