#!/usr/bin/env python3
"""Side by side on one GPU: tessera's qwen2_5_vl example and transformers (eager and SDPA
attention) on the same random-weight Qwen2.5-VL-7B-sized checkpoint, in one run.

    python3 bench/gpu_side_by_side.py --tessera-bin BUNDLE/bin/tessera_examples \\
        [--ld-library-path DIRS] [--work-dir /tmp/tessera-sbs] [--out FILE] [--budget-s 540]

What one run does, each phase only if the time left (--budget-s) allows it:

  checkpoint   WORK_DIR/checkpoint: a Qwen2.5-VL-7B-Instruct-shaped model (the published config:
               text 3584 hidden, 28 layers, 28 heads, 4 kv heads, 18944 intermediate, vocab
               152064, untied lm_head; vision 32 blocks of 1280, windows of 112, full attention
               in blocks 7/15/23/31, M-RoPE sections [16, 24, 24], rope_theta 1e6) made by the
               local transformers straight on the device in bf16 with random normal weights
               (std 0.02, norms 1, seed 0), written in the hub's layout: 5 shards
               model-0000K-of-00005.safetensors of at most 4 GB (--shard-gb) with the published
               tensor names (visual.*, model.*, lm_head.weight) + model.safetensors.index.json,
               config.json (transformers 5's layout, as tests/fixtures/qwen2_5_vl/tied), generation
               _config.json, the published preprocessor_config.json, and the tokenizer, its config and
               chat_template.json from tests/fixtures/qwen2_5_vl/tied (a 1052-id byte-level BPE
               with Qwen's special tokens: the model's 152064 embedding rows outnumber it; the
               token ids of config.json are that tokenizer's). A checkpoint left by an earlier
               run with the same config is reused (sbs_checkpoint.json records it).
  input        WORK_DIR/image_1280x720.png (deterministic: gradients, shapes, seeded noise) and
               the prompt "Describe this image." in Qwen2.5-VL's chat template (default system
               prompt, the image first): 1280x720 -> 1288x728, grid 1x52x92, 1196 image tokens,
               1221 prompt tokens on both sides.
  tessera      the example binary, --placement cuda (bf16 on Cuda<0>), greedy, no repetition
               penalty, --max-new-tokens 128, --print-ids, in its own process (a binary that
               does not load is retried with the bundle's lib/, PyTorch's NVIDIA wheels and the
               CUDA toolkit on LD_LIBRARY_PATH). Its stderr summary gives the numbers: time to
               first token = "processed in" (image decode + preprocessing + tokenizing) +
               "prefill" (generate() to the first token); decode tokens/s = its "decode" line,
               (generated - 1) / (end - first token); peak = the Cuda<0> ledger's measured peak
               (every tensor tessera allocated, weights included; not the CUDA context or the
               cuBLAS workspace). Alongside: nvidia-smi's memory.used sampled every 100 ms
               during the run, minus its value before the launch (whole process, context
               included). Loading the weights is not in the time to first token (it is
               reported as "load").
  transformers SDPA, then eager: the same checkpoint (the model built above, or
               from_pretrained), attn_implementation switched per mode. Each mode runs once
               with 2 new tokens (its time to first token is reported as "first call") and
               then the measured run: the processor (image file opened inside the timing)
               and generate(do_sample=False, repetition_penalty=1, max_new_tokens=128,
               min_new_tokens=128) with torch.cuda.synchronize() around it and a streamer
               that stamps each token: time to first token = processor + prefill to the
               first token, decode tokens/s = 127 / (end - first token); peak =
               torch.cuda.max_memory_allocated() (reset before the run), reserved alongside.
               How many of the greedy ids equal tessera's is reported too (same model, same
               prompt: a check that both ran the same thing; bf16 rounding parts them later).

Then a table with the ratios (tessera / each transformers mode) on stdout and the same as JSON
and Markdown: --out FILE writes FILE.json and FILE.md (default WORK_DIR/side_by_side).

Budget: --budget-s (default 540 s, for a 10-minute command) covers the whole run. Before each
phase the script estimates its time from the checkpoint's size (and from the phases already
done); a phase that would not fit is skipped with the reason, and the table still shows what
was measured. tessera runs first (it is what the table is for); its timeout leaves the
estimated time of the transformers modes when it can.

Exit codes: 0 every requested measurement made; 3 some were skipped or failed (the table says
which); 2 the run could not start (no CUDA, no binary, a binary that does not load, bad flags).

Off the GPU: --device cpu --tiny runs the same path on a CPU with a small config (2 text layers
of 128, 4 vision blocks of 64, vocab 2048) and a 320x180 image; tessera then runs with
--placement cpu (float32) and transformers in float32. --checkpoint DIR and --image FILE use an
existing checkpoint and image; --modes tessera needs neither torch nor transformers (the CTest
smoke test in tests/bench runs that on the tiny fixture).
"""
import argparse
import datetime
import gc
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER_DIR = ROOT / "tests/fixtures/qwen2_5_vl/tied"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.json", "generation_config.json")
MARKER = "sbs_checkpoint.json"
MODES = ("tessera", "sdpa", "eager")
GIB = float(1 << 30)

# Qwen2.5-VL's published preprocessor_config.json (model-specs.md A.2).
PREPROCESSOR_CONFIG = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}

# Qwen2.5-VL-7B-Instruct's config.json values (model-specs.md A.1; the class defaults of
# Qwen2_5_VLConfig are the 72B's text and a 3584-wide vision tower, so every value is given).
SIZES = {
    "7b": dict(
        text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000,
                  mrope_section=[16, 24, 24], rope_theta=1000000.0),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                    fullatt_block_indexes=[7, 15, 23, 31]),
        image=(1280, 720), label="Qwen2.5-VL-7B-Instruct config, random weights"),
    "tiny": dict(
        text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=2048, max_position_embeddings=4096,
                  mrope_section=[4, 6, 6], rope_theta=1000000.0),
        vision=dict(depth=4, hidden_size=64, intermediate_size=128, num_heads=4, fullatt_block_indexes=[1, 3]),
        image=(320, 180), label="tiny Qwen2.5-VL config (--tiny), random weights"),
}


class StartError(Exception):
    """The run cannot start (exit code 2)."""


class NothingToMeasure(Exception):
    """A skipped phase left nothing to measure (already reported)."""


# ---- small helpers -------------------------------------------------------------------------


def log(msg):
    print(f"[sbs {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Budget:
    def __init__(self, seconds):
        self.seconds = seconds
        self.start = time.monotonic()

    def elapsed(self):
        return time.monotonic() - self.start

    def left(self):
        return self.seconds - self.elapsed()


_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def parse_bytes(text):
    """tessera's format_bytes: "16.61 GiB", "256 B" -> bytes."""
    value, unit = text.split()
    return int(round(float(value) * _UNITS[unit]))


def fmt(value, digits=3):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# ---- the checkpoint --------------------------------------------------------------------------


def special_ids(tokenizer_dir):
    """The ids of Qwen2.5-VL's special tokens in tokenizer_dir's tokenizer.json."""
    tok = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    ids = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    need = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
    missing = [n for n in need if n not in ids]
    if missing:
        raise StartError(f"{tokenizer_dir}/tokenizer.json lacks the special tokens {missing}")
    size = len(tok["model"]["vocab"]) + len(tok["added_tokens"])
    return ids, size


def config_dict(size, ids, transformers_version):
    """config.json in transformers 5's layout (the key names of tests/fixtures/qwen2_5_vl/tied)."""
    t, v = SIZES[size]["text"], SIZES[size]["vision"]
    text = {
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "dtype": "bfloat16",
        "eos_token_id": ids["<|im_end|>"],
        "hidden_act": "silu",
        "hidden_size": t["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": t["intermediate_size"],
        "layer_types": ["full_attention"] * t["num_hidden_layers"],
        "max_position_embeddings": t["max_position_embeddings"],
        "max_window_layers": t["num_hidden_layers"],
        "model_type": "qwen2_5_vl_text",
        "num_attention_heads": t["num_attention_heads"],
        "num_hidden_layers": t["num_hidden_layers"],
        "num_key_value_heads": t["num_key_value_heads"],
        "pad_token_id": None,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {"mrope_section": t["mrope_section"], "rope_theta": t["rope_theta"], "rope_type": "default"},
        "sliding_window": None,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": t["vocab_size"],
    }
    vision = {
        "depth": v["depth"],
        "dtype": "bfloat16",
        "fullatt_block_indexes": v["fullatt_block_indexes"],
        "hidden_act": "silu",
        "hidden_size": v["hidden_size"],
        "in_channels": 3,
        "initializer_range": 0.02,
        "intermediate_size": v["intermediate_size"],
        "model_type": "qwen2_5_vl_vision",
        "num_heads": v["num_heads"],
        "out_hidden_size": t["hidden_size"],
        "patch_size": 14,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "axial"},
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,
        "window_size": 112,
    }
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "dtype": "bfloat16",
        "image_token_id": ids["<|image_pad|>"],
        "model_type": "qwen2_5_vl",
        "text_config": text,
        "tie_word_embeddings": False,
        "transformers_version": transformers_version,
        "video_token_id": ids["<|video_pad|>"],
        "vision_config": vision,
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
    }


def parameter_count(size):
    """Parameters of the config (for the time estimates before anything is built)."""
    t, v = SIZES[size]["text"], SIZES[size]["vision"]
    h, i, L, V = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"], t["vocab_size"]
    kv = t["num_key_value_heads"] * (h // t["num_attention_heads"])
    layer = h * h + h + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h
    vh, vi = v["hidden_size"], v["intermediate_size"]
    block = 3 * vh * vh + 3 * vh + vh * vh + vh + 3 * (vh * vi) + 2 * vi + vh + 2 * vh
    merger = vh + (4 * vh) ** 2 + 4 * vh + 4 * vh * h + h
    return 2 * V * h + L * layer + h + v["depth"] * block + 3 * 2 * 14 * 14 * vh + merger


def hub_name(name):
    """transformers >= 4.52's module names -> the published checkpoint's tensor names."""
    if name.startswith("model.visual."):
        return "visual." + name[len("model.visual."):]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    return name


def checkpoint_ready(ckpt, config_text):
    try:
        marker = json.loads((ckpt / MARKER).read_text(encoding="utf-8"))
        if (ckpt / "config.json").read_text(encoding="utf-8") != config_text:
            return False
        return all((ckpt / f).is_file() and (ckpt / f).stat().st_size == n for f, n in marker["files"].items())
    except (OSError, ValueError, KeyError):
        return False


def write_checkpoint(ckpt, cfg, tokenizer_dir, device, shard_bytes):
    """Builds the model on `device` in bf16 with random weights and writes it in the hub's
    layout; returns the model (bf16, eval, on the device)."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    if ckpt.exists():
        shutil.rmtree(ckpt)
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    (ckpt / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n", encoding="utf-8")
    for f in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / f, ckpt / f)
    config = Qwen2_5_VLConfig.from_pretrained(ckpt)

    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        try:
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16,
                                                                    attn_implementation="sdpa")
        except TypeError:  # transformers 4.x spelling
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, torch_dtype=torch.bfloat16,
                                                                    attn_implementation="sdpa")
    model.eval()
    # One explicit initialisation whatever the version's _init_weights does: normal(0, 0.02)
    # for weights and biases, 1 for the RMSNorm weights; logits stay finite through 28 layers.
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "ln_q" in name):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    if device == "cuda":
        torch.cuda.synchronize()
    init_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    tensors = [(hub_name(n), p) for n, p in model.state_dict().items()]
    shards, current, current_bytes = [], [], 0
    for name, p in tensors:
        nbytes = p.numel() * p.element_size()
        if current and current_bytes + nbytes > shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append((name, p))
        current_bytes += nbytes
    if current:
        shards.append(current)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: p.detach().to("cpu").contiguous() for n, p in shard}, str(ckpt / fname),
                  metadata={"format": "pt"})
        for n, p in shard:
            weight_map[n] = fname
            total += p.numel() * p.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    write_s = time.perf_counter() - t0
    files = {p.name: p.stat().st_size for p in sorted(ckpt.iterdir()) if p.name != MARKER}
    (ckpt / MARKER).write_text(json.dumps({"files": files, "init_s": init_s, "write_s": write_s}, indent=2) + "\n",
                               encoding="utf-8")
    return model, init_s, write_s, len(shards), total


def make_image(path, width, height):
    """A deterministic RGB PNG: gradients, a disc, a rectangle, a diagonal and seeded noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1280720)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / (width - 1), y / (height - 1)
    img = np.stack([40 + 180 * u, 30 + 200 * v, 128 + 100 * np.sin(6 * u + 4 * v)], axis=-1)
    r = 0.22 * min(width, height)
    img[(y - 0.4 * height) ** 2 + (x - 0.3 * width) ** 2 < r * r] = [230, 40, 60]
    img[int(0.6 * height):int(0.8 * height), int(0.55 * width):int(0.8 * width)] = [20, 210, 90]
    img[np.abs(x - y * width / height) < 1.5] = [255, 255, 255]
    img += rng.normal(0.0, 8.0, size=img.shape).astype(np.float32)
    Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB").save(path, format="PNG")


def chat_text(prompt):
    """Qwen2.5-VL's chat template for one image then `prompt` (what tessera's chat_prompt makes)."""
    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|image_pad|><|vision_end|>" + prompt + "<|im_end|>\n<|im_start|>assistant\n")


# ---- tessera ---------------------------------------------------------------------------------


def tessera_env(args):
    env = dict(os.environ)
    if args.ld_library_path:
        env["LD_LIBRARY_PATH"] = args.ld_library_path + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH")
                                                         else "")
    return env


def library_dirs_guess(exe):
    """Where the bundle's, the CUDA toolkit's and PyTorch's NVIDIA wheels' shared libraries are
    (for a binary that does not load with the LD_LIBRARY_PATH it was given)."""
    import glob
    import importlib.util

    dirs = [exe.resolve().parent.parent / "lib", exe.resolve().parent / "lib"]
    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations or []) if spec else []:
        dirs += [pathlib.Path(d) for d in sorted(glob.glob(os.path.join(base, "*", "lib")))]
        dirs += [pathlib.Path(d) for d in sorted(glob.glob(os.path.join(base, "cu*", "lib")))]
    for cuda in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if cuda:
            dirs += [pathlib.Path(cuda) / "lib64", pathlib.Path(cuda) / "targets/x86_64-linux/lib"]
    seen, out = set(), []
    for d in dirs:
        if d.is_dir() and str(d) not in seen and any(d.glob("*.so*")):
            seen.add(str(d))
            out.append(str(d))
    return out


def tessera_prefix(args):
    """argv that starts the qwen2_5_vl example: the example itself, or the GPU bundle's multi-call
    binary tessera_examples (scripts/gpu-bundle) with the example's name as its first argument."""
    exe = str(args.tessera_bin)
    if pathlib.Path(exe).name == "tessera_examples":
        return [exe, "qwen2_5_vl"]
    return [exe]


def check_tessera_binary(args):
    """The binary exists, loads its libraries and is the qwen2_5_vl example. A binary that
    lacks shared libraries is tried once more with library_dirs_guess() added."""
    exe = pathlib.Path(args.tessera_bin)
    if not exe.is_file():
        raise StartError(f"--tessera-bin: '{exe}' does not exist (the qwen2_5_vl example of a CUDA build or of "
                         f"the GPU bundle, e.g. BUNDLE/bin/tessera_examples; --modes sdpa,eager runs without it)")
    if not os.access(exe, os.X_OK):
        raise StartError(f"--tessera-bin: '{exe}' is not executable")
    try:
        r = subprocess.run(tessera_prefix(args) + ["--help"], capture_output=True, text=True, timeout=30, env=tessera_env(args))
    except OSError as e:
        raise StartError(f"--tessera-bin: '{exe}' cannot be run: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise StartError(f"--tessera-bin: '{exe} --help' did not finish in 30 s") from e
    if r.returncode != 0 and "error while loading shared libraries" in r.stderr and not args.ld_library_path:
        guess = library_dirs_guess(exe)
        if guess:
            args.ld_library_path = ":".join(guess)
            log(f"tessera: {r.stderr.strip().splitlines()[-1]}; trying again with LD_LIBRARY_PATH += "
                f"{args.ld_library_path}")
            r = subprocess.run(tessera_prefix(args) + ["--help"], capture_output=True, text=True, timeout=30,
                               env=tessera_env(args))
    if r.returncode != 0 or "usage: qwen2_5_vl" not in r.stdout:
        detail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        hint = ""
        if "error while loading shared libraries" in r.stderr:
            hint = (" (a shared library is missing: pass --ld-library-path with the bundle's lib/ and the CUDA "
                    "runtime / cuBLAS / NCCL directories, or set LD_LIBRARY_PATH)")
        raise StartError(f"--tessera-bin: '{exe} --help' exited with {r.returncode}{hint}: " + " | ".join(detail))


class GpuMemorySampler:
    """nvidia-smi's memory.used of one GPU every 100 ms while a command runs."""

    def __init__(self, gpu):
        self.gpu, self.values, self.proc, self.thread = gpu, [], None, None

    @staticmethod
    def read_once(gpu):
        try:
            out = subprocess.run(["nvidia-smi", "-i", gpu, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=20).stdout
            return int(out.split()[0]) << 20
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None

    def start(self):
        try:
            self.proc = subprocess.Popen(["nvidia-smi", "-i", self.gpu, "--query-gpu=memory.used",
                                          "--format=csv,noheader,nounits", "-lms", "100"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.values.append(int(line.strip()) << 20)
            except ValueError:
                pass

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.thread.join(timeout=5)
        return max(self.values) if self.values else None


TESSERA_PATTERNS = {
    "image": re.compile(r"^image 1 +.*: (\d+)x(\d+) -> (\d+)x(\d+), grid (\S+), (\d+) tokens", re.M),
    "prompt_tokens": re.compile(r"^prompt +.*: (\d+) tokens, of them (\d+) image", re.M),
    "processed_s": re.compile(r"^processed in ([\d.]+) s", re.M),
    "load_s": re.compile(r"^load +([\d.]+) s", re.M),
    "prefill_s": re.compile(r"^prefill +([\d.]+) s", re.M),
    "decode": re.compile(r"^decode +([\d.]+) tokens/s", re.M),
    "generated": re.compile(r"^generated tokens +(\d+) \(stopped at (.*)\)", re.M),
    "overall": re.compile(r"^overall +[\d.]+ tokens/s \((\d+) tokens in ([\d.]+) s", re.M),
    "generated_ids": re.compile(r"^generated ids:((?: \d+)*)$", re.M),
    "peak": re.compile(r"^ +((?:cuda|cpu)\d+): measured ([\d.]+ [KMGT]?i?B), predicted ([\d.]+ [KMGT]?i?B)", re.M),
}


def parse_tessera(stderr):
    """The numbers of the example's stderr summary (examples/cli_common.hpp print_summary,
    examples/placement_cli.hpp print_peaks_against_plan)."""
    m = {k: p.search(stderr) for k, p in TESSERA_PATTERNS.items()}
    missing = [k for k in ("prompt_tokens", "processed_s", "prefill_s", "generated", "overall") if not m[k]]
    if missing:
        raise ValueError(f"the example's summary lacks {missing}")
    r = {
        "prompt_tokens": int(m["prompt_tokens"].group(1)),
        "image_tokens": int(m["prompt_tokens"].group(2)),
        "processor_s": float(m["processed_s"].group(1)),
        "prefill_s": float(m["prefill_s"].group(1)),
        "load_s": float(m["load_s"].group(1)) if m["load_s"] else None,
        "generated_tokens": int(m["generated"].group(1)),
        "stopped_at": m["generated"].group(2),
        "total_generate_s": float(m["overall"].group(2)),
    }
    if m["generated_ids"]:
        r["generated_ids"] = [int(x) for x in m["generated_ids"].group(1).split()]
    if m["image"]:
        g = m["image"].groups()
        r["image"] = f"{g[0]}x{g[1]} -> {g[2]}x{g[3]}, grid {g[4]}"
    r["ttft_s"] = r["processor_s"] + r["prefill_s"]
    # The example's own rate (from unrounded times); else from the rounded ones.
    decode_s = r["total_generate_s"] - r["prefill_s"]
    if m["decode"]:
        r["decode_tokens_per_s"] = float(m["decode"].group(1))
    elif r["generated_tokens"] > 1 and decode_s > 0:
        r["decode_tokens_per_s"] = (r["generated_tokens"] - 1) / decode_s
    else:
        r["decode_tokens_per_s"] = None
    peaks = {d: (parse_bytes(meas), parse_bytes(pred)) for d, meas, pred in TESSERA_PATTERNS["peak"].findall(stderr)}
    r["ledger_peaks"] = {d: {"measured_bytes": a, "predicted_bytes": b} for d, (a, b) in peaks.items()}
    dev = next((d for d in peaks if d.startswith("cuda")), next(iter(peaks), None))
    r["peak_bytes"] = peaks[dev][0] if dev else None
    r["peak_what"] = f"tessera ledger peak of {dev} (tensors, weights included)" if dev else None
    return r


def run_tessera(args, ckpt, image, timeout, work):
    cmd = tessera_prefix(args) + ["--model", str(ckpt), "--image", str(image), "--prompt", args.prompt,
           "--placement", "cuda" if args.device == "cuda" else "cpu", "--greedy", "--repetition-penalty", "1",
           "--max-new-tokens", str(args.new_tokens), "--print-ids"]
    log(f"tessera: {' '.join(cmd)} (timeout {timeout:.0f} s)")
    sampler, baseline = None, None
    if args.device == "cuda" and shutil.which("nvidia-smi"):
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
        baseline = GpuMemorySampler.read_once(gpu)
        sampler = GpuMemorySampler(gpu)
        sampler.start()
    t0 = time.perf_counter()
    timed_out = False
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=tessera_env(args))
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        timed_out, rc = True, None
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    wall = time.perf_counter() - t0
    smi_peak = sampler.stop() if sampler else None
    (work / "tessera.stdout").write_text(out, encoding="utf-8")
    (work / "tessera.stderr").write_text(err, encoding="utf-8")
    result = {"command": cmd, "wall_s": wall, "exit_code": rc, "log": str(work / "tessera.stderr")}
    if timed_out:
        raise RuntimeError(f"timed out after {timeout:.0f} s (the budget left); its stderr so far is in "
                           f"{work / 'tessera.stderr'}")
    if rc != 0:
        tail = " | ".join(err.strip().splitlines()[-4:])
        raise RuntimeError(f"exited with {rc}: {tail} (full stderr: {work / 'tessera.stderr'})")
    result.update(parse_tessera(err))
    if smi_peak is not None and baseline is not None:
        result["nvidia_smi_delta_bytes"] = smi_peak - baseline
    return result


# ---- transformers ----------------------------------------------------------------------------


class TokenClock:
    """A generate() streamer that stamps every put(): the prompt first, then each new token
    (generate passes next_tokens.cpu(), so the stamp follows the device)."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def load_processor(ckpt):
    """transformers' processor for the checkpoint: AutoProcessor where it loads; without
    torchvision (transformers 5's Qwen2.5-VL processor needs it for its video processor) the
    PIL image processor and the tokenizer, with the image placeholder expanded here as the
    processor does (one <|image_pad|> per merged patch)."""
    from transformers import AutoProcessor, AutoTokenizer

    try:
        proc = AutoProcessor.from_pretrained(ckpt)
        return proc, f"AutoProcessor: {type(proc).__name__} with {type(proc.image_processor).__name__}"
    except Exception as e:  # noqa: BLE001
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
    try:
        from transformers import AutoImageProcessor

        ip = AutoImageProcessor.from_pretrained(ckpt)
    except Exception:  # noqa: BLE001
        try:  # transformers 5: the PIL backend needs no torchvision
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as IP
        except ImportError:  # transformers 4: the slow processor is the PIL one
            from transformers import Qwen2VLImageProcessor as IP
        ip = IP.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    merge = getattr(ip, "merge_size", 2)

    def processor(text, images, return_tensors):
        import torch

        pix = ip(images=images, return_tensors=return_tensors)
        grids = torch.as_tensor(pix["image_grid_thw"])
        parts = text[0].split("<|image_pad|>")
        if len(parts) != len(grids) + 1:
            raise ValueError(f"{len(parts) - 1} image placeholders for {len(grids)} images")
        expanded = parts[0]
        for g, rest in zip(grids, parts[1:]):
            expanded += "<|image_pad|>" * (int(g.prod().item()) // (merge * merge)) + rest
        enc = tok([expanded], return_tensors=return_tensors)
        out = {k: torch.as_tensor(v) for k, v in enc.items()}
        out["pixel_values"], out["image_grid_thw"] = torch.as_tensor(pix["pixel_values"]), grids
        return out

    return processor, f"{type(ip).__name__} + {type(tok).__name__}, placeholders expanded by the script " \
                      f"(AutoProcessor failed: {why})"


def set_attention(model, mode):
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(mode)
    else:  # older transformers
        model.config._attn_implementation = mode
        for sub in ("text_config", "vision_config"):
            c = getattr(model.config, sub, None)
            if c is not None:
                c._attn_implementation = mode
    inner = getattr(model, "model", model)
    parts = (("the model", model), ("the vision tower", getattr(inner, "visual", None)),
             ("the language model", getattr(inner, "language_model", None)))
    for where, cfg in ((w, getattr(m, "config", None)) for w, m in parts):
        actual = getattr(cfg, "_attn_implementation", mode) if cfg is not None else mode
        if actual != mode:
            raise RuntimeError(f"attn_implementation of {where} is {actual!r} after asking for {mode!r}")


def hf_generate(model, proc, image_path, text, new_tokens, device, check_finite=False):
    import torch
    from PIL import Image

    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    clock = TokenClock()
    t0 = time.perf_counter()
    with Image.open(image_path) as im:
        image = im.convert("RGB")
    inputs = proc(text=[text], images=[image], return_tensors="pt")
    inputs = {k: v.to(device) for k, v in inputs.items()}
    if cuda:
        torch.cuda.synchronize()
    t_proc = time.perf_counter()
    pad = model.generation_config.pad_token_id
    if isinstance(pad, list):
        pad = pad[0]
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             repetition_penalty=1.0, temperature=None, top_p=None, top_k=None, streamer=clock,
                             pad_token_id=pad, output_logits=check_finite, return_dict_in_generate=True)
    if cuda:
        torch.cuda.synchronize()
    t_end = time.perf_counter()
    prompt_tokens = int(inputs["input_ids"].shape[1])
    generated = int(out.sequences.shape[1]) - prompt_tokens
    first = clock.times[1] if len(clock.times) > 1 else t_end
    r = {
        "generated_ids": out.sequences[0, prompt_tokens:].tolist(),
        "prompt_tokens": prompt_tokens,
        "image_tokens": int((inputs["input_ids"] == model.config.image_token_id).sum().item()),
        "generated_tokens": generated,
        "processor_s": t_proc - t0,
        "prefill_s": first - t_proc,
        "ttft_s": first - t0,
        "total_generate_s": t_end - t_proc,
        "decode_tokens_per_s": (generated - 1) / (t_end - first) if generated > 1 and t_end > first else None,
    }
    if cuda:
        r["peak_bytes"] = torch.cuda.max_memory_allocated()
        r["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
        r["peak_what"] = "torch.cuda.max_memory_allocated (reset before the run, weights included)"
    if check_finite:
        r["logits_finite"] = bool(all(torch.isfinite(x).all().item() for x in out.logits))  # raw, not processed
    return r


def run_transformers_mode(model, proc, image, args, mode):
    import torch

    set_attention(model, mode)
    text = chat_text(args.prompt)
    t0 = time.perf_counter()
    first = hf_generate(model, proc, image, text, 2, args.device, check_finite=True)
    warm_s = time.perf_counter() - t0
    if not first["logits_finite"]:
        raise RuntimeError("the random model's logits are not finite (NaN or inf): the numbers would mean nothing")
    r = hf_generate(model, proc, image, text, args.new_tokens, args.device)
    r["first_call_ttft_s"] = first["ttft_s"]
    r["warmup_s"] = warm_s
    r["attn_implementation"] = mode
    r["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return r


# ---- the table -------------------------------------------------------------------------------


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def build_table(report):
    res = report["results"]
    cols = [("tessera", "tessera")] + [(f"transformers_{m}", f"transformers {m}") for m in ("sdpa", "eager")]
    rows = [
        ("time to first token (s)", "ttft_s", 3),
        ("  of it: processor (s)", "processor_s", 3),
        ("  of it: prefill (s)", "prefill_s", 3),
        ("decode tokens/s (batch 1)", "decode_tokens_per_s", 1),
        ("peak memory (GiB)", "peak_bytes", 2),
        ("prompt tokens", "prompt_tokens", 0),
        ("generated tokens", "generated_tokens", 0),
        ("first call TTFT (s)", "first_call_ttft_s", 3),
        ("greedy ids equal to tessera's", "greedy_prefix_equal_to_tessera", 0),
        ("load (s)", "load_s", 2),
        ("nvidia-smi delta (GiB)", "nvidia_smi_delta_bytes", 2),
        ("peak reserved (GiB)", "peak_reserved_bytes", 2),
    ]
    header = ["", *[c[1] for c in cols], "tessera / sdpa", "tessera / eager"]
    lines = []
    for label, key, digits in rows:
        vals = []
        for c, _ in cols:
            r = res.get(c) if isinstance(res.get(c), dict) else {}
            # tessera's time to first token is always a fresh process's first call
            v = r.get("ttft_s") if key == "first_call_ttft_s" and c == "tessera" else r.get(key)
            if v is not None and key.endswith("bytes"):
                v = v / GIB
            vals.append(v)
        if all(v is None for v in vals):
            continue
        ratios = []
        if key in ("ttft_s", "decode_tokens_per_s", "peak_bytes", "prefill_s", "processor_s", "first_call_ttft_s"):
            ratios = [ratio(vals[0], vals[1]), ratio(vals[0], vals[2])]
        cells = [label] + [("-" if v is None else (f"{v:.{digits}f}" if digits else str(int(v)))) for v in vals]
        cells += [("-" if r is None else f"{r:.2f}x") for r in ratios] or ["", ""]
        lines.append(cells)
    return header, lines


def render_markdown(report):
    header, lines = build_table(report)
    out = [f"# tessera vs transformers: {report['model']['label']}", ""]
    n = report["model"]["parameters"]
    count = f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"
    out.append(f"{report['machine']}; {count} parameters")
    out[-1] += (f", "
               f"{report['model']['dtype']}; image {report['input']['image_size']}, prompt "
               f"\"{report['input']['prompt']}\", {report['input']['new_tokens']} new tokens, greedy, batch 1; "
               f"{report['date']}")
    out.append("")
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for cells in lines:
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append("Ratios are tessera's number divided by transformers': below 1 is faster for the times and less "
               "memory; above 1 is faster for tokens/s.")
    for k, v in report["definitions"].items():
        out.append(f"- {k}: {v}")
    for s in report["skipped"]:
        out.append(f"- SKIPPED {s['phase']}: {s['why']}")
    for e in report["errors"]:
        out.append(f"- FAILED {e['phase']}: {e['error']}")
    for n in report["notes"]:
        out.append(f"- note: {n}")
    return "\n".join(out) + "\n"


def render_text(report):
    header, lines = build_table(report)
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    def fmt_row(cells):
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells))

    out = [f"== {report['model']['label']}: {report['machine']}", fmt_row(header)]
    out += [fmt_row(c) for c in lines]
    out.append("ratios: tessera / transformers (times and memory: below 1 is better for tessera; tokens/s: above 1)")
    for s in report["skipped"]:
        out.append(f"SKIPPED {s['phase']}: {s['why']}")
    for e in report["errors"]:
        out.append(f"FAILED  {e['phase']}: {e['error']}")
    for n in report["notes"]:
        out.append(f"note: {n}")
    return "\n".join(out) + "\n"


# ---- main ------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tessera-bin", default="bundle/bin/tessera_examples",
                   help="the qwen2_5_vl example, or the GPU bundle's tessera_examples (default %(default)s)")
    p.add_argument("--ld-library-path", help="prepended to LD_LIBRARY_PATH for the tessera binary")
    p.add_argument("--work-dir", default="/tmp/tessera-sbs", help="checkpoint, image and logs (default %(default)s)")
    p.add_argument("--checkpoint", help="use this checkpoint directory instead of building WORK_DIR/checkpoint")
    p.add_argument("--image", help="use this image instead of the generated one")
    p.add_argument("--out", help="write OUT.json and OUT.md (default WORK_DIR/side_by_side)")
    p.add_argument("--budget-s", type=float, default=540.0, help="wall time for the whole run (default %(default)s)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="a small config and a 320x180 image (for a CPU check)")
    p.add_argument("--modes", default=",".join(MODES), help="what to measure, in order (default %(default)s)")
    p.add_argument("--new-tokens", type=int, default=128, help="decoded tokens per run (default %(default)s)")
    p.add_argument("--prompt", default="Describe this image.")
    p.add_argument("--shard-gb", type=float, default=4.0,
                   help="largest safetensors shard, in GB of 10^9 bytes (default %(default)s: the 7B's 5 shards)")
    p.add_argument("--tokenizer-dir", default=str(DEFAULT_TOKENIZER_DIR),
                   help="where the tokenizer files come from (default %(default)s)")
    p.add_argument("--rebuild", action="store_true", help="build the checkpoint even if WORK_DIR has it")
    a = p.parse_args(argv)
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in a.modes if m not in MODES]
    if bad or not a.modes:
        p.error(f"--modes: {bad or 'nothing'} not among {', '.join(MODES)}")
    if a.new_tokens < 2:
        p.error("--new-tokens: at least 2 (decode tokens/s needs a token after the first)")
    return a


def main(argv=None):
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    size = "tiny" if args.tiny else "7b"
    work = pathlib.Path(args.work_dir).resolve()
    out_base = pathlib.Path(args.out) if args.out else work / "side_by_side"
    if out_base.suffix in (".json", ".md"):
        out_base = out_base.with_suffix("")
    hf_modes = [m for m in args.modes if m != "tessera"]
    report = {
        "tool": "bench/gpu_side_by_side.py", "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": platform.node(), "device": args.device, "budget_s": args.budget_s, "modes": args.modes,
        "model": {"label": SIZES[size]["label"], "size": size, "parameters": parameter_count(size),
                  "dtype": "bfloat16"},
        "input": {"prompt": args.prompt, "new_tokens": args.new_tokens},
        "results": {}, "skipped": [], "errors": [], "notes": [],
        "definitions": {
            "time to first token": "tessera: 'processed in' (image file decode, preprocessing, tokenizing) + "
                                   "'prefill' (to the first token); transformers: image file open + processor + "
                                   "generate() to the first token, after a 2-token first call",
            "decode tokens/s": "(generated - 1) / (end - first token), greedy, batch 1 (tessera: its 'decode' line)",
            "peak memory": "tessera: its Cuda<0> ledger's peak (all tensors, weights included); transformers: "
                               "torch.cuda.max_memory_allocated; neither counts the CUDA context or library "
                               "workspaces (tessera's whole-process figure: the nvidia-smi delta row)",
            "greedy ids equal to tessera's": "how many of the mode's first greedy tokens equal tessera's (the "
                                             "same model and prompt; bf16 rounding may make them part later)",
            "first call TTFT": "transformers: the mode's first generate() in this process (the model loaded, "
                               "nothing run yet for the first mode); tessera: its time to first token, always a "
                               "fresh process's first call",
        },
    }
    status = 0

    def skip(phase, why):
        nonlocal status
        status = 3
        report["skipped"].append({"phase": phase, "why": why})
        log(f"SKIP {phase}: {why}")

    def fail(phase, err):
        nonlocal status
        status = 3
        report["errors"].append({"phase": phase, "error": err})
        log(f"FAILED {phase}: {err}")

    model = None
    try:
        # ---- what the run needs before it spends anything
        if "tessera" in args.modes:
            check_tessera_binary(args)
            report["tessera_bin"] = str(pathlib.Path(args.tessera_bin).resolve())
            report["tessera_ld_library_path"] = args.ld_library_path
        torch = None
        need_torch = bool(hf_modes) or (args.checkpoint is None) or (args.image is None)
        if need_torch:
            try:
                import torch  # noqa: F811
                import transformers
            except ImportError as e:
                raise StartError(f"{e.name} is not importable; building the checkpoint and the transformers modes "
                                 f"need torch and transformers (--checkpoint, --image and --modes tessera do not)")
            report["torch"], report["transformers"] = torch.__version__, transformers.__version__
            if args.device == "cuda":
                if not torch.cuda.is_available():
                    raise StartError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False; "
                                     "--device cpu --tiny runs the CPU check)")
                props = torch.cuda.get_device_properties(0)
                report["machine"] = f"{props.name} ({props.total_memory / GIB:.0f} GiB), {platform.node()}"
        work.mkdir(parents=True, exist_ok=True)

        # ---- the checkpoint
        tokenizer_dir = pathlib.Path(args.tokenizer_dir)
        nbytes = 2 * report["model"]["parameters"]
        gb = nbytes / 1e9
        slow = 1.0 if args.device == "cuda" else 3.0
        if args.checkpoint:
            ckpt = pathlib.Path(args.checkpoint).resolve()
            report["model"].update(label=f"checkpoint {ckpt}", checkpoint=str(ckpt), built_this_run=False)
            try:
                cfg = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
                tc = cfg.get("text_config", cfg)
                report["model"]["dtype"] = cfg.get("dtype", cfg.get("torch_dtype", tc.get("dtype", "?")))
                idx = ckpt / "model.safetensors.index.json"
                if idx.is_file():
                    nbytes = json.loads(idx.read_text())["metadata"]["total_size"]
                else:
                    nbytes = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
                gb = nbytes / 1e9
            except (OSError, ValueError, KeyError) as e:
                raise StartError(f"--checkpoint: cannot read {ckpt}/config.json: {e}") from e
        else:
            ckpt = work / "checkpoint"
            ids, tok_size = special_ids(tokenizer_dir)
            cfg = config_dict(size, ids, transformers.__version__)
            cfg_text = json.dumps(cfg, indent=2) + "\n"
            report["model"].update(checkpoint=str(ckpt), tokenizer=str(tokenizer_dir), tokenizer_ids=tok_size,
                                   vocab_size=cfg["text_config"]["vocab_size"])
            if not args.rebuild and checkpoint_ready(ckpt, cfg_text):
                report["model"]["built_this_run"] = False
                log(f"checkpoint: reusing {ckpt}")
            else:
                est = 10 + 5 * gb * slow
                if est > budget.left():
                    skip("checkpoint", f"building and writing {gb:.1f} GB needs about {est:.0f} s, "
                                       f"{budget.left():.0f} s are left")
                    raise NothingToMeasure()
                log(f"checkpoint: building {report['model']['parameters'] / 1e6:.1f} M parameters on {args.device} "
                    f"(about {est:.0f} s)")
                try:
                    model, init_s, write_s, shards, nbytes = write_checkpoint(ckpt, cfg, tokenizer_dir, args.device,
                                                                             int(args.shard_gb * 1e9))
                except Exception as e:
                    if torch is not None and isinstance(e, torch.cuda.OutOfMemoryError):
                        raise StartError(f"out of GPU memory while building the checkpoint: {e}") from e
                    raise
                gb = nbytes / 1e9
                report["model"].update(built_this_run=True, init_s=init_s, write_s=write_s, shards=shards)
                log(f"checkpoint: {shards} shards, {nbytes / GIB:.2f} GiB, init {init_s:.1f} s, write {write_s:.1f} s")
        report["model"]["bytes"] = nbytes

        # ---- the image
        if args.image:
            image = pathlib.Path(args.image).resolve()
            if not image.is_file():
                raise StartError(f"--image: '{image}' does not exist")
        else:
            w, h = SIZES[size]["image"]
            image = work / f"image_{w}x{h}.png"
            if not image.is_file():
                make_image(image, w, h)
        report["input"]["image"] = str(image)
        try:
            from PIL import Image
            with Image.open(image) as im:
                report["input"]["image_size"] = f"{im.width}x{im.height}"
        except ImportError:
            report["input"]["image_size"] = image.name

        # ---- estimates (refined as phases finish)
        est_hf_mode = (10 + 1.0 * gb) * slow
        est_hf_load = (5 + 4 * gb) * slow
        est_tessera = (20 + 3 * gb) * slow

        for mode in args.modes:
            if mode == "tessera":
                key = "tessera"
                reserve = sum(est_hf_mode for m in hf_modes) + (est_hf_load if model is None and hf_modes else 0)
                left = budget.left() - 5
                if left < est_tessera:
                    skip(key, f"a load of {gb:.1f} GB and {args.new_tokens} tokens need about {est_tessera:.0f} s, "
                              f"{budget.left():.0f} s are left")
                    continue
                timeout = left - reserve if left - reserve >= est_tessera else left
                if torch is not None and args.device == "cuda" and model is not None:
                    free, _ = torch.cuda.mem_get_info()
                    if free < 1.5 * nbytes + (4 << 30):
                        log("tessera: freeing the transformers model first (the GPU has "
                            f"{free / GIB:.1f} GiB free)")
                        model = None
                        torch.cuda.empty_cache()
                try:
                    report["results"][key] = run_tessera(args, ckpt, image, timeout, work)
                    r = report["results"][key]
                    log(f"tessera: TTFT {fmt(r['ttft_s'])} s, decode {fmt(r['decode_tokens_per_s'], 1)} tokens/s, "
                        f"peak {fmt((r['peak_bytes'] or 0) / GIB, 2)} GiB, wall {r['wall_s']:.1f} s")
                    if not r["stopped_at"].startswith("max_new_tokens"):
                        report["notes"].append(f"tessera stopped at {r['stopped_at']} after {r['generated_tokens']} "
                                               f"tokens (it has no min_new_tokens); its decode rate is over those")
                except (RuntimeError, ValueError, OSError) as e:
                    fail(key, str(e))
                continue

            key = f"transformers_{mode}"
            if model is None:
                if est_hf_load + est_hf_mode > budget.left():
                    skip(key, f"loading {gb:.1f} GB with from_pretrained and a run need about "
                              f"{est_hf_load + est_hf_mode:.0f} s, {budget.left():.0f} s are left")
                    continue
                from transformers import Qwen2_5_VLForConditionalGeneration
                t0 = time.perf_counter()
                dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
                kw = dict(attn_implementation="sdpa", device_map=args.device) if args.device == "cuda" else \
                    dict(attn_implementation="sdpa")
                try:
                    try:
                        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, dtype=dtype, **kw)
                    except TypeError:
                        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, torch_dtype=dtype, **kw)
                except Exception as e:  # noqa: BLE001
                    fail(key, f"from_pretrained({ckpt}) failed: {type(e).__name__}: {e}")
                    break
                model.eval()
                report["model"]["transformers_load_s"] = time.perf_counter() - t0
                log(f"transformers: loaded in {report['model']['transformers_load_s']:.1f} s")
            elif args.device == "cpu" and next(model.parameters()).dtype != torch.float32:
                model = model.float()  # tessera's CPU placement is float32 too
            if est_hf_mode > budget.left():
                skip(key, f"a warm-up and a {args.new_tokens}-token run need about {est_hf_mode:.0f} s, "
                          f"{budget.left():.0f} s are left")
                continue
            t0 = time.perf_counter()
            try:
                if "processor" not in report:
                    proc, report["processor"] = load_processor(ckpt)
                    log(f"transformers: processor {report['processor']}")
                report["results"][key] = r = run_transformers_mode(model, proc, image, args, mode)
                log(f"transformers {mode}: TTFT {fmt(r['ttft_s'])} s, decode {fmt(r['decode_tokens_per_s'], 1)} "
                    f"tokens/s, peak {fmt((r.get('peak_bytes') or 0) / GIB, 2)} GiB")
                est_hf_mode = max(est_hf_mode, 1.5 * (time.perf_counter() - t0))  # eager is slower than sdpa
            except Exception as e:  # noqa: BLE001
                oom = torch is not None and isinstance(e, torch.cuda.OutOfMemoryError)
                fail(key, ("out of GPU memory: " if oom else f"{type(e).__name__}: ") +
                     (str(e).strip().splitlines() or [""])[0])
            if args.device == "cuda":  # after the except block: its traceback no longer holds tensors
                gc.collect()
                torch.cuda.empty_cache()
    except StartError as e:
        report["errors"].append({"phase": "start", "error": str(e)})
        print(f"gpu_side_by_side: error: {e}", file=sys.stderr)
        return 2
    except NothingToMeasure:
        pass
    except Exception as e:  # noqa: BLE001 (the table is still written)
        fail("run", f"{type(e).__name__}: {e}")
        traceback.print_exc()

    # ---- the comparison
    res = report["results"]
    t = res.get("tessera")
    for mode in ("sdpa", "eager"):
        h = res.get(f"transformers_{mode}")
        if t and h:
            report.setdefault("ratios", {})[f"tessera/{mode}"] = {
                "ttft": ratio(t["ttft_s"], h["ttft_s"]),
                "decode_tokens_per_s": ratio(t["decode_tokens_per_s"], h["decode_tokens_per_s"]),
                "peak_memory": ratio(t.get("peak_bytes"), h.get("peak_bytes")),
            }
            if t.get("generated_ids") and h.get("generated_ids"):
                same = 0
                for a, b in zip(t["generated_ids"], h["generated_ids"]):
                    if a != b:
                        break
                    same += 1
                h["greedy_prefix_equal_to_tessera"] = same
            if t["prompt_tokens"] != h["prompt_tokens"]:
                report["notes"].append(f"prompt tokens differ: tessera {t['prompt_tokens']}, transformers {mode} "
                                       f"{h['prompt_tokens']}")
    if args.device == "cpu":
        report["notes"].append("--device cpu: tessera float32 on Cpu<0>, transformers float32; no GPU numbers")
    for m in args.modes:
        key = "tessera" if m == "tessera" else f"transformers_{m}"
        if key not in res and not any(s["phase"] == key for s in report["skipped"]) and \
                not any(e["phase"] == key for e in report["errors"]):
            skip(key, "not reached (an earlier phase failed)")
    report["elapsed_s"] = budget.elapsed()
    out_base.parent.mkdir(parents=True, exist_ok=True)
    out_base.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    out_base.with_suffix(".md").write_text(render_markdown(report), encoding="utf-8")
    sys.stdout.write(render_text(report))
    print(f"wrote {out_base.with_suffix('.json')} and {out_base.with_suffix('.md')} ({budget.elapsed():.0f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
