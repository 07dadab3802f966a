"""Second source for imcap's caption metrics (tests/test_metrics.cpp).

An independent, deliberately plain Python reimplementation of the definitions that coco-caption
(tylin/coco-caption, salaniz/pycocoevalcap) uses for BLEU-1..4, ROUGE-L and CIDEr-D, written from
their description in docs/metrics.md, with string n-gram tuples instead of imcap's interned ids.

usage: caption_metrics_reference.py --annotations COCO.json --results RESULTS.json
       caption_metrics_reference.py --input CASE.json   # {"references": {id: [str]}, "candidates": {id: str}}
prints {"corpus": {Bleu_1..Bleu_4, ROUGE_L, CIDEr}, "per_image": {id: {...}}} as JSON.
"""
import argparse
import json
import math
import re
from collections import Counter

ORDERS = 4
TINY, SMALL = 1e-15, 1e-9
BETA = 1.2
SIGMA = 6.0


def tokens(caption):
    # bytes.lower() lowercases ASCII only; every other byte separates tokens.
    return [t.decode() for t in re.findall(rb"[a-z0-9]+", caption.encode("utf-8").lower())]


def ngram_counts(words):
    bag = Counter()
    for n in range(1, ORDERS + 1):
        for i in range(len(words) - n + 1):
            bag[tuple(words[i:i + n])] += 1
    return bag


def bleu(stats):
    """stats: (test_len, ref_len, guesses[4], matches[4]) summed over the images."""
    test_len, ref_len, guesses, matches = stats
    ratio = (test_len + TINY) / (ref_len + SMALL)
    scores = []
    for n in range(1, ORDERS + 1):
        prod = 1.0
        for k in range(n):
            prod *= (matches[k] + TINY) / (guesses[k] + SMALL)
        score = prod ** (1.0 / n)
        if ratio < 1:
            score *= math.exp(1 - 1 / ratio)
        scores.append(score)
    return scores


def bleu_stats(cand, refs):
    cand_bag = ngram_counts(cand)
    best = Counter()
    for r in refs:
        for g, c in ngram_counts(r).items():
            best[g] = max(best[g], c)
    ref_len = sorted((abs(len(r) - len(cand)), len(r)) for r in refs)[0][1]
    guesses = [max(0, len(cand) - n + 1) for n in range(1, ORDERS + 1)]
    matches = [0] * ORDERS
    for g, c in cand_bag.items():
        matches[len(g) - 1] += min(c, best[g])
    return len(cand), ref_len, guesses, matches


def lcs_length(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            table[i + 1][j + 1] = table[i][j] + 1 if a[i] == b[j] else max(table[i][j + 1], table[i + 1][j])
    return table[len(a)][len(b)]


def rouge_l(cand, refs):
    # coco-caption splits the tokenized text on " ": an empty caption is one empty token.
    cand = cand or [""]
    best_p = best_r = 0.0
    for r in refs:
        r = r or [""]
        common = lcs_length(cand, r)
        best_p = max(best_p, common / len(cand))
        best_r = max(best_r, common / len(r))
    if best_p == 0 or best_r == 0:
        return 0.0
    return (1 + BETA ** 2) * best_p * best_r / (best_r + BETA ** 2 * best_p)


def cider_d(images):
    """images: list of (cand_tokens, [ref_tokens]); returns per-image CIDEr-D (x10)."""
    log_n = math.log(len(images))
    df = Counter()
    for _, refs in images:
        df.update(set(g for r in refs for g in ngram_counts(r)))

    def vector(words):
        weights = {g: c * (log_n - math.log(max(1, df[g]))) for g, c in ngram_counts(words).items()}
        norms = [math.sqrt(sum(w * w for g, w in weights.items() if len(g) == n)) for n in range(1, ORDERS + 1)]
        return weights, norms, max(0, len(words) - 1)  # coco-caption's length: the bigram count

    out = []
    for cand, refs in images:
        cw, cn, cl = vector(cand)
        total = 0.0
        for r in refs:
            rw, rn, rl = vector(r)
            penalty = math.exp(-((cl - rl) ** 2) / (2 * SIGMA ** 2))
            for n in range(1, ORDERS + 1):
                dot = sum(min(w, rw.get(g, 0.0)) * rw.get(g, 0.0) for g, w in cw.items() if len(g) == n)
                if cn[n - 1] > 0 and rn[n - 1] > 0:
                    dot /= cn[n - 1] * rn[n - 1]
                total += dot * penalty
        out.append(10.0 * total / ORDERS / len(refs))
    return out


def evaluate(references, candidates):
    ids = sorted(candidates)
    images = [(tokens(candidates[i]), [tokens(r) for r in references[i]]) for i in ids]
    stats = [bleu_stats(c, rs) for c, rs in images]
    total = (sum(s[0] for s in stats), sum(s[1] for s in stats),
             [sum(s[2][k] for s in stats) for k in range(ORDERS)],
             [sum(s[3][k] for s in stats) for k in range(ORDERS)])
    rouge = [rouge_l(c, rs) for c, rs in images]
    cider = cider_d(images)
    per_image = {}
    for i, image_id in enumerate(ids):
        b = bleu(stats[i])
        per_image[str(image_id)] = {"Bleu_1": b[0], "Bleu_2": b[1], "Bleu_3": b[2], "Bleu_4": b[3],
                                    "ROUGE_L": rouge[i], "CIDEr": cider[i]}
    b = bleu(total)
    corpus = {"Bleu_1": b[0], "Bleu_2": b[1], "Bleu_3": b[2], "Bleu_4": b[3],
              "ROUGE_L": sum(rouge) / len(rouge), "CIDEr": sum(cider) / len(cider)}
    return {"corpus": corpus, "per_image": per_image}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--annotations")
    parser.add_argument("--results")
    parser.add_argument("--input")
    args = parser.parse_args()
    if args.input:
        with open(args.input) as f:
            case = json.load(f)
        references = {int(k): v for k, v in case["references"].items()}
        candidates = {int(k): v for k, v in case["candidates"].items()}
    else:
        with open(args.annotations) as f:
            annotations = json.load(f)
        with open(args.results) as f:
            results = json.load(f)
        candidates = {r["image_id"]: r["caption"] for r in results}
        references = {}
        for a in annotations["annotations"]:
            if a["image_id"] in candidates:
                references.setdefault(a["image_id"], []).append(a["caption"])
    print(json.dumps(evaluate(references, candidates)))


if __name__ == "__main__":
    main()
