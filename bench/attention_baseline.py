#!/usr/bin/env python3
"""The PyTorch side of imcap's attention figures: sgrvinod's DecoderWithAttention
(a-PyTorch-Tutorial-to-Image-Captioning: additive attention, the f_beta gate, init_h/init_c from
the mean of the grid, LSTMCell(E + C, H), dropout, fc), as tests/python/models_reference.py
implements it for the parity tests, timed in the shapes of `imcap bench --only attention`, with
the same JSON keys:

  attention_greedy_ms.batch1 / .batchN   greedy decoding, MAX_STEPS steps without stopping
                                         (the notebook's sample() with attention), no_grad, eval
  attention_train_step_ms                 teacher forcing as sgrvinod's forward (captions sorted
                                         by length, the batch shrinking as captions end),
                                         cross-entropy over the valid steps + the doubly
                                         stochastic penalty, backward, Adam(lr=1e-3)

  /usr/bin/python3 bench/attention_baseline.py [--threads N] [--quick] [--vocab 10000]
      [--hidden 512] [--decode-batch 128] [--train-batch 128]

Run side by side with imcap by bench/attention_side_by_side.py.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch import nn

# The PyTorch decoder of imcap's parity tests: sgrvinod's names and loop.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "python"))
from models_reference import AttentionDecoderRef  # noqa: E402


def timeit(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return ts


def summ(ts):
    return {"median": round(statistics.median(ts), 3), "min": round(min(ts), 3),
            "max": round(max(ts), 3), "reps": len(ts)}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--embed", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--attention-dim", type=int, default=512)
    ap.add_argument("--encoder-dim", type=int, default=2048)
    ap.add_argument("--cells", type=int, default=49)
    ap.add_argument("--decode-batch", type=int, default=128)
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--caption-len", type=int, default=14)
    ap.add_argument("--max-steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    reps = (1, 3) if a.quick else (3, 15)
    torch.manual_seed(a.seed)
    decoder = AttentionDecoderRef(a.attention_dim, a.embed, a.hidden, a.vocab, a.encoder_dim)
    grids = torch.randn(max(a.decode_batch, a.train_batch), a.cells, a.encoder_dim)
    res = {}

    decoder.eval()
    greedy = {}
    with torch.no_grad():
        for batch in (1, a.decode_batch):
            g = grids[:batch]
            ts = timeit(lambda: decoder.greedy(g, 1, a.max_steps), *reps)
            greedy["batch%d" % batch] = summ(ts)
            greedy["batch%d" % batch]["ms_per_step"] = statistics.median(ts) / a.max_steps
            print("# attention greedy decode, batch %d: %.2f ms" % (batch, statistics.median(ts)),
                  file=sys.stderr)
    res["attention_greedy_ms"] = greedy

    decoder.train()
    opt = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    crit = nn.CrossEntropyLoss()
    B, L = a.train_batch, a.caption_len
    grid = grids[:B]
    caps = torch.randint(4, a.vocab, (B, L))
    caps[:, 0] = 1
    caps[:, -1] = 2
    lengths = torch.full((B,), L, dtype=torch.long)

    def train_step():
        logits, alphas = decoder(grid, caps, lengths)
        loss = crit(logits.reshape(-1, a.vocab), caps[:, 1:].reshape(-1)) + \
            1.0 * ((1.0 - alphas.sum(dim=1)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    ts = timeit(train_step, *reps)
    res["attention_train_step_ms"] = summ(ts)
    res["attention_train_step_ms"]["tokens_per_step"] = B * (L - 1)
    res["attention_train_step_ms"]["trainable_params"] = sum(p.numel() for p in decoder.parameters())
    print("# attention train step: %.1f ms" % statistics.median(ts), file=sys.stderr)
    res["attention_config"] = {"vocab": a.vocab, "embed": a.embed, "hidden": a.hidden,
                               "attention_dim": a.attention_dim, "encoder_dim": a.encoder_dim,
                               "cells": a.cells, "decode_batch": a.decode_batch,
                               "train_batch": B, "caption_len": L, "max_steps": a.max_steps,
                               "dropout": 0.5, "attention_reg": 1.0, "optimizer": "Adam(lr=1e-3)"}
    res["env"] = {"torch": torch.__version__, "torch_num_threads": torch.get_num_threads()}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
