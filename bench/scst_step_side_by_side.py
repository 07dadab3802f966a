#!/usr/bin/env python3
"""SCST's training step side by side: `imcap train --objective scst` against a faithful PyTorch
implementation of the same step, in one run on the same machine, the same data and the same
model shape.

The PyTorch step follows self-critical.pytorch (ruotianluo): the LossWrapper's sampling
(sample_n captions per image by torch.multinomial over log_softmax, to max_length, finished rows
padded), the reward from a CIDEr-D scorer written in Python after pycocoevalcap's CiderD
(n-grams 1-4, document frequencies of the training references computed once, tf-idf vectors,
clipped similarity, Gaussian length penalty with sigma 6, x10), the baseline (the mean of the
image's other samples, "new self-critical", or the greedy caption's reward, with a greedy pass in
eval mode without gradients), RewardCriterion (-(r - b) log p summed over each sample's words up
to and including its first <end>, divided by the number of those words), gradient clipping and
Adam. The model is the seed's Show and Tell decoder on cached pooled features (Linear C->E, then
an LSTM fed the image first), the shape `imcap train --features --inject pre` trains, at
self-critical.pytorch's FC sizes (E = H = 512) by default.

The captions are a real COCO captions file (default: ../shared/data/coco-sample's rebuilt
captions_val2014.json, 40,504 images; --annotations another), with the vocabulary of the words
seen at least 5 times; the features are random ([N, 2048], seeded, written by the script), since
only the decoder's step is measured. Both sides run on --threads Torch threads with OpenBLAS on one
(imcap's own rule; PyTorch with OpenBLAS's two threads on top of Torch's two ran 2-5x slower and
erratically here).

Both sides sample from a model near its random initialisation (imcap's after one cross-entropy
step; PyTorch's own, the same shapes), so that their captions run to max_length alike: the same
work per sample.

  /usr/bin/python3 bench/scst_step_side_by_side.py --imcap build/imcap [--steps 40]
      [--annotations captions.json] [--images-per-step 20] [--samples 5] [--baseline mean|greedy]
      [--threads 2] [--embed 512] [--hidden 512] [--out-dir DIR]
Prints samples/s of each side and the ratio; `--json FILE` writes them.
"""
import argparse
import collections
import json
import math
import os
import statistics
import struct
import sys
import time

from bench_common import run, same_blas_kernels

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before torch loads OpenBLAS
same_blas_kernels()  # likewise
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        dtype = {"F32": np.float32, "I64": np.int64}[t["dtype"]]
        b, e = t["data_offsets"]
        out[name] = np.frombuffer(data[b:e], dtype=dtype).reshape(t["shape"])
    return out


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        b = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": {np.dtype("float32"): "F32", np.dtype("int64"): "I64"}[arr.dtype],
                        "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def tokens(caption):
    return "".join(c if c.isalnum() else " " for c in caption.lower()).split()


# --- CIDEr-D as pycocoevalcap's cider_scorer computes it (with ruotianluo's CiderD changes:
# document frequencies from the training references, clipping, sigma 6) ---
def precook(words, n=4):
    counts = collections.defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


class CiderD:
    def __init__(self, refs_by_image, n=4, sigma=6.0):
        self.n, self.sigma = n, sigma
        self.crefs = {img: [precook(r, n) for r in refs] for img, refs in refs_by_image.items()}
        self.df = collections.defaultdict(float)
        for refs in self.crefs.values():
            for ngram in set(g for r in refs for g in r):
                self.df[ngram] += 1
        self.ref_len = math.log(float(len(self.crefs)))
        # The references' vectors do not change between steps: computed once, as CiderD caches.
        self.vrefs = {img: [self.counts2vec(r) for r in refs] for img, refs in self.crefs.items()}

    def counts2vec(self, cnts):
        vec = [collections.defaultdict(float) for _ in range(self.n)]
        length = 0
        norm = [0.0] * self.n
        for ngram, tf in cnts.items():
            k = len(ngram) - 1
            df = math.log(max(1.0, self.df[ngram]))
            vec[k][ngram] = float(tf) * (self.ref_len - df)
            norm[k] += vec[k][ngram] ** 2
            if k == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def sim(self, vh, vr):
        (vec_hyp, norm_hyp, length_hyp), (vec_ref, norm_ref, length_ref) = vh, vr
        delta = float(length_hyp - length_ref)
        val = np.zeros(self.n)
        for k in range(self.n):
            for ngram, count in vec_hyp[k].items():
                val[k] += min(vec_hyp[k][ngram], vec_ref[k].get(ngram, 0.0)) * vec_ref[k].get(ngram, 0.0)
            if norm_hyp[k] != 0 and norm_ref[k] != 0:
                val[k] /= norm_hyp[k] * norm_ref[k]
            val[k] *= math.e ** (-(delta ** 2) / (2 * self.sigma ** 2))
        return val

    def score(self, image, words):
        vh = self.counts2vec(precook(words, self.n))
        score = np.zeros(self.n)
        for vr in self.vrefs[image]:
            score += self.sim(vh, vr)
        return float(np.mean(score) / len(self.vrefs[image]) * 10.0)


class ShowTell(nn.Module):
    def __init__(self, feat, embed, hidden, vocab):
        super().__init__()
        self.head = nn.Linear(feat, embed)
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, vocab)

    def sample(self, feats, n, max_length, start, end, greedy=False):
        x = self.head(feats).repeat_interleave(n, 0).unsqueeze(1)
        _, state = self.lstm(x)
        it = torch.full((x.size(0),), start, dtype=torch.long)
        seq, logps = [], []
        unfinished = torch.ones(x.size(0), dtype=torch.bool)
        for _ in range(max_length):
            out, state = self.lstm(self.embed(it).unsqueeze(1), state)
            logprobs = F.log_softmax(self.fc(out.squeeze(1)), dim=1)
            if greedy:
                it = logprobs.argmax(1)
            else:
                it = torch.multinomial(logprobs.detach().exp(), 1).squeeze(1)
            lp = logprobs.gather(1, it.unsqueeze(1)).squeeze(1)
            it = it * unfinished  # finished rows carry 0 (<pad>), as the LossWrapper's
            seq.append(it)
            logps.append(lp)
            unfinished = unfinished & (it != end)
            if not unfinished.any():
                break
        return torch.stack(seq, 1), torch.stack(logps, 1)


def reward_criterion(logps, seq, reward, end):
    # Words up to and including the first <end> (self-critical.pytorch's mask, shifted by one).
    mask = (seq > 0).float()
    mask = torch.cat([torch.ones(mask.size(0), 1), mask[:, :-1]], 1)
    return -(logps * reward.unsqueeze(1) * mask).sum() / mask.sum()


def python_steps(a, feats, image_ids, refs, vocab, steps):
    torch.manual_seed(1)
    torch.set_num_threads(a.threads)
    start, end = vocab["<start>"], vocab["<end>"]
    model = ShowTell(feats.shape[1], a.embed, a.hidden, len(vocab))
    opt = torch.optim.Adam(model.parameters(), lr=5e-5)
    t_build = time.time()
    cider = CiderD({i: refs[i] for i in image_ids})
    build_s = time.time() - t_build
    inv = {v: k for k, v in vocab.items()}
    feats_t = torch.from_numpy(np.ascontiguousarray(feats))
    times, reward_s = [], 0.0
    rng = np.random.default_rng(1)
    for step in range(steps):
        t0 = time.perf_counter()
        rows = rng.choice(len(image_ids), a.images_per_step, replace=False)
        f = feats_t[torch.from_numpy(rows)]
        ids = [image_ids[r] for r in rows]
        if a.baseline == "greedy":
            model.eval()
            with torch.no_grad():
                gseq, _ = model.sample(f, 1, a.max_length, start, end, greedy=True)
            model.train()
        seq, logps = model.sample(f, a.samples, a.max_length, start, end)
        tr = time.perf_counter()

        def words(row):
            out = []
            for t in row.tolist():
                if t == end or t == 0:
                    break
                out.append(inv[t])
            return out

        scores = np.array([cider.score(ids[i // a.samples], words(seq[i])) for i in range(seq.size(0))])
        scores = scores.reshape(len(ids), a.samples)
        if a.baseline == "greedy":
            base = np.array([cider.score(ids[b], words(gseq[b])) for b in range(len(ids))])[:, None]
        else:
            base = (scores.sum(1, keepdims=True) - scores) / (a.samples - 1)
        reward_s += time.perf_counter() - tr if step >= 3 else 0.0
        adv = torch.from_numpy((scores - base).reshape(-1)).float()
        loss = reward_criterion(logps, seq, adv, end)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    steady = times[3:]
    return {"samples_per_s": a.images_per_step * a.samples / statistics.median(steady),
            "step_ms_median": 1e3 * statistics.median(steady),
            "reward_share": reward_s / sum(steady), "df_build_s": build_s}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imcap", required=True)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--images-per-step", type=int, default=20)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--baseline", default="mean", choices=["mean", "greedy"])
    ap.add_argument("--max-length", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--embed", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--annotations", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                          "shared", "data", "coco-sample",
                                                          "captions_val2014_rebuilt.json"))
    ap.add_argument("--threshold", type=int, default=5)
    ap.add_argument("--out-dir", default="scst-step-side-by-side")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    imcap = os.path.abspath(a.imcap)
    d = a.out_dir
    os.makedirs(d, exist_ok=True)
    ann = os.path.abspath(a.annotations)
    j = json.load(open(ann))
    ids = sorted(set(im["id"] for im in j["images"]))
    feats_path = os.path.join(d, "features.safetensors")
    if not os.path.exists(feats_path):
        rng = np.random.default_rng(0)
        write_safetensors(feats_path, {"features": rng.random((len(ids), 2048), dtype=np.float32),
                                       "image_ids": np.array(ids, dtype=np.int64)})
    common = ["--annotations", ann, "--features", feats_path, "--threads", str(a.threads),
              "--batch-size", str(a.images_per_step * 5), "--val-max-images", "1"]
    init = os.path.join(d, "init")
    run([imcap, "train"] + common + ["--encoder", "resnet50", "--inject", "pre", "--embed-size", str(a.embed),
                                     "--hidden-size", str(a.hidden), "--vocab-threshold", str(a.threshold),
                                     "--max-steps", "1", "--out", init], os.path.join(d, "init.log"))
    scst = os.path.join(d, "scst")
    if os.path.exists(os.path.join(scst, "log.jsonl")):
        os.remove(os.path.join(scst, "log.jsonl"))
    out = run([imcap, "train"] + common + ["--objective", "scst", "--init-from", os.path.join(init, "last.imcap"),
                                           "--samples", str(a.samples), "--baseline", a.baseline,
                                           "--max-length", str(a.max_length), "--max-steps", str(a.steps),
                                           # The PyTorch step is SCST alone (RewardCriterion):
                                           # without imcap's default cross-entropy term.
                                           "--xe-weight", "0",
                                           "--log-interval", "5", "--out", scst], os.path.join(d, "scst.log"))
    rates = [json.loads(l)["captions_per_s"] for l in open(os.path.join(scst, "log.jsonl"))
             if '"type":"step"' in l.replace(" ", "")]
    share, imcap_vocab = None, None
    for line in open(os.path.join(init, "..", "init.log")):
        if "vocabulary" in line:
            imcap_vocab = int(line.split("vocabulary")[1].split(",")[0])
    for line in out.splitlines():
        if "reward" in line and "%" in line:
            share = line.strip()
    imcap_rate = statistics.median(rates[1:]) if len(rates) > 1 else rates[0]

    # The same captions and vocabulary on the PyTorch side.
    refs = collections.defaultdict(list)
    counts = collections.Counter()
    for c in j["annotations"]:
        w = tokens(c["caption"])
        refs[c["image_id"]].append(w)
        counts.update(w)
    vocab = {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3}
    for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if n >= a.threshold:
            vocab[w] = len(vocab)
    f = read_safetensors(feats_path)
    py = python_steps(a, f["features"], [int(i) for i in f["image_ids"]], refs, vocab, a.steps)
    result = {"imcap_samples_per_s": imcap_rate, "imcap_reward_line": share,
              "pytorch": py, "ratio": imcap_rate / py["samples_per_s"],
              "config": vars(a), "torch": torch.__version__, "pytorch_vocab": len(vocab),
              "imcap_vocab": imcap_vocab}
    print("| side | samples/s | note |\n| --- | --- | --- |")
    print("| imcap train --objective scst | %.0f | %s |" % (imcap_rate, share or ""))
    print("| PyTorch (self-critical.pytorch's step, Python CIDEr-D) | %.0f | step %.1f ms, reward %.0f %% of it |"
          % (py["samples_per_s"], py["step_ms_median"], 100 * py["reward_share"]))
    print("\nimcap / PyTorch: %.2fx (%d images x %d samples per step, %s baseline, %d threads)"
          % (result["ratio"], a.images_per_step, a.samples, a.baseline, a.threads))
    if a.json:
        with open(a.json, "w") as fo:
            json.dump(result, fo, indent=1)


if __name__ == "__main__":
    main()
